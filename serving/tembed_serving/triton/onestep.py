"""The one-step model (``contract.LAYOUT_ONE_STEP``): tokenizer and encoder in one batched Python model, so
a query pays one stub hop instead of the ensemble's two. Its runner is the config's (ONNX Runtime on CPU, or
the PyTorch runner on the GPU instance Triton gives it).

Each batch row is one request (``TEXT`` [1, n], each option [1, 1]; ragged, so requests of any length merge):
every request is parsed and tokenized on its own (its bucket, truncation and errors its own, as the
tokenizer model does), the batch's token tensors run through the runner together (``runners``: padded and
regrouped by length), and each request's vectors are finished and answered as its own row
(``vectors.finish_request``). A bad request gets its own error; its batch neighbours are answered."""

from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import (
    CANCELLED,
    EMBEDDING,
    EMBEDDING_PACKED,
    ENCODE_NS,
    PARAM_RUNNER,
    TEXT,
    TOKEN_COUNT,
    TOKEN_COUNT_ORIGINAL,
    TOKENIZE_NS,
    TOKENIZER_FILE,
)
from ..errors import RequestError
from ..guard import run_isolated
from ..profile import ModelProfile
from ..runners import load_runner
from ..textproc import TextEncoder
from ..vectors import finish_request
from ._util import Executing, error_response, input_arrays, internal, parameters, version_dir
from .encoder import CANCEL_CHECK_TOKENS
from .tokenizer import parse_request


def request_row(given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A request's inputs without their batch row: ``[1, ...]`` -> ``[...]``. A request of several rows
    (a direct call that batched texts itself) is refused: its texts belong in its one row."""
    rows = {name: arr.shape[0] if arr.ndim else 0 for name, arr in given.items()}
    if any(n != 1 for n in rows.values()):
        got = ", ".join(f"{name} {list(given[name].shape)}" for name in rows)
        raise RequestError(f"a request is one batch row: {TEXT} [1, n], each option [1, 1]; got {got}", param=TEXT)
    return {name: arr[0] for name, arr in given.items()}


class TritonPythonModel:
    def initialize(self, args):
        self._executing = Executing(args)
        params = parameters(args)
        folder = version_dir(args)
        self.profile = ModelProfile.load(folder)
        self.encoder = TextEncoder(self.profile, folder / TOKENIZER_FILE)
        # The pytorch runner on a KIND_GPU instance: Triton pins the instance to one device and says which.
        device = f"cuda:{args['model_instance_device_id']}" if args.get("model_instance_kind") == "GPU" else "cpu"
        self.runner = load_runner(params[PARAM_RUNNER], folder, self.profile, params, device)

    def execute(self, requests):
        with self._executing(len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        responses: list = [None] * len(requests)
        ids, masks, jobs = [], [], []
        for i, request in enumerate(requests):
            start = time.perf_counter_ns()
            try:
                texts, dims, kind, _ = parse_request(request_row(input_arrays(request)), self.profile, self.encoder)
                # One tokenizer call per request keeps each request's bucket independent of its neighbours
                # (and a text refused under truncate NONE refuses its request only).
                batch = self.encoder.encode(texts)
            except RequestError as exc:
                responses[i] = error_response(exc)
                continue
            # Skip the work of a caller that has gone; asking is a round trip to the server (~0.14 ms).
            if batch.input_ids.size >= CANCEL_CHECK_TOKENS and getattr(request, "is_cancelled", bool)():
                responses[i] = error_response(RequestError("request cancelled", CANCELLED))
                continue
            ids.append(batch.input_ids)
            masks.append(batch.attention_mask)
            jobs.append((i, batch, dims, kind, time.perf_counter_ns() - start))
        if not ids:
            return responses
        start = time.perf_counter_ns()
        outs = run_isolated(self.runner, ids, masks)
        ran = time.perf_counter_ns() - start
        for (i, batch, dims, kind, tokenized), out in zip(jobs, outs):
            if isinstance(out, str):
                responses[i] = internal(out)
                continue
            try:
                vectors, packed = finish_request(
                    np.asarray(out), batch.row_text, batch.row_weight, dims, kind, self.profile
                )
            except RequestError as exc:  # this request's error, not the batch's
                responses[i] = error_response(exc)
                continue
            tensors = {
                EMBEDDING: vectors,
                EMBEDDING_PACKED: packed,
                TOKEN_COUNT: batch.token_count,
                TOKEN_COUNT_ORIGINAL: batch.token_count_original,
                TOKENIZE_NS: np.array([tokenized], np.int64),
                ENCODE_NS: np.array([[ran]], np.int64),  # the ensemble's [1, 1]
            }
            # Each output as the request's one batch row.
            responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(k, v[np.newaxis]) for k, v in tensors.items()])
        return responses
