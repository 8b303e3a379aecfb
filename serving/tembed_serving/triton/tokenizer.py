from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import (
    ATTENTION_MASK,
    DIMENSIONS,
    DIMENSIONS_CHECKED,
    EMBEDDING_TYPE,
    EMBEDDING_TYPE_CHECKED,
    EMBEDDING_TYPE_DEFAULT,
    EMBEDDING_TYPES,
    INPUT_IDS,
    LONG_TEXT,
    OUTPUTS,
    ROW_OPTIONS,
    ROW_OUTPUTS,
    ROW_TEXT,
    ROW_WEIGHT,
    ROW_WEIGHT_COLUMN,
    TASK_EMBED,
    TEXT,
    TOKEN_COUNT,
    TOKEN_COUNT_ORIGINAL,
    TOKENIZE_NS,
    TOKENIZER_FILE,
)
from ..errors import RequestError
from ..m3 import check_outputs, row_outputs
from ..matryoshka import check_dimensions
from ..profile import ModelProfile
from ..textproc import Prompted, TextEncoder, check_bytes, decode_texts, read_options
from ..vectors import check_calibrated, per_row
from ._util import Executing, error_response, input_arrays, tensor_names, version_dir


def parse_request(given: dict, profile: ModelProfile, encoder: TextEncoder) -> tuple[Prompted, int, int, int]:
    """An embedding request's inputs, checked: its prompted texts, the output size, the embedding type's
    index in ``EMBEDDING_TYPES`` and bge-m3's output bits (a bad one is this request's RequestError)."""
    raw = given[TEXT]
    check_bytes(raw, profile)
    texts = decode_texts(raw)
    options = read_options(given, TASK_EMBED)
    kind = str(options.pop(EMBEDDING_TYPE, EMBEDDING_TYPE_DEFAULT))
    dims = check_dimensions(profile, options.pop(DIMENSIONS, None))
    check_calibrated(profile, kind, dims)
    bits = check_outputs(options.pop(OUTPUTS, None), profile, options.get(LONG_TEXT))
    return encoder.prepare(texts, **options), dims, EMBEDDING_TYPES.index(kind), bits


class TritonPythonModel:
    def initialize(self, args):
        self._executing = Executing(args)
        folder = version_dir(args)
        self.profile = ModelProfile.load(folder)
        self.encoder = TextEncoder(self.profile, folder / TOKENIZER_FILE)
        # What the step after the encoder needs differs by ensemble (a postprocess step, or an encoder
        # that finishes the vectors itself): emit exactly the outputs this config lists.
        self.outputs = tensor_names(args, "output")
        self.per_row = ROW_OPTIONS in self.outputs

    def _parse(self, request) -> tuple[Prompted, int, int, int]:
        return parse_request(input_arrays(request), self.profile, self.encoder)

    def execute(self, requests):
        with self._executing(len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        responses: list = [None] * len(requests)
        parsed, spent = [], [0] * len(requests)  # spent: ns of this step's work per request (TOKENIZE_NS)
        for i, request in enumerate(requests):
            start = time.perf_counter_ns()
            try:
                parsed.append((i, *self._parse(request)))
            except RequestError as exc:
                responses[i] = error_response(exc)
            spent[i] = time.perf_counter_ns() - start
        for i, texts, dims, kind, bits in parsed:
            # One tokenizer call per request keeps each request's bucket independent of its neighbours
            # (and a text refused under truncate NONE refuses its request only).
            start = time.perf_counter_ns()
            try:
                batch = self.encoder.encode(texts)
            except RequestError as exc:
                responses[i] = error_response(exc)
                continue
            tensors = {
                INPUT_IDS: batch.input_ids,
                ATTENTION_MASK: batch.attention_mask,
                TOKEN_COUNT: batch.token_count,
                TOKEN_COUNT_ORIGINAL: batch.token_count_original,
            }
            if self.per_row:
                tensors[ROW_OPTIONS], tensors[ROW_WEIGHT_COLUMN] = per_row(batch.row_text, batch.row_weight, dims, kind)
                tensors[ROW_OUTPUTS] = row_outputs(batch.input_ids.shape[0], bits)  # bge-m3's encoder only
            else:
                tensors[DIMENSIONS_CHECKED] = np.array([dims], dtype=np.int32)
                tensors[EMBEDDING_TYPE_CHECKED] = np.array([kind], dtype=np.int32)
                tensors[ROW_TEXT] = batch.row_text
                tensors[ROW_WEIGHT] = batch.row_weight
            tensors[TOKENIZE_NS] = np.array([spent[i] + time.perf_counter_ns() - start], np.int64)
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(k, v) for k, v in tensors.items() if k in self.outputs]
            )
        return responses
