"""The encoder model of every Python-backend runner; its config's ``runner`` parameter picks which.

An embedding encoder whose config takes ``row_options`` finishes each request's vectors itself
(``vectors.finish_request``: windows pooled, ``dimensions``, ``embedding_type``) and answers the
ensemble's ``embedding``/``embedding_packed``: there is no postprocess step after it."""

from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import (
    ATTENTION_MASK,
    CANCELLED,
    EMBEDDING,
    EMBEDDING_PACKED,
    EMBEDDING_TYPE_DEFAULT,
    EMBEDDING_TYPES,
    ENCODE_NS,
    ENCODER_OUTPUTS,
    INPUT_IDS,
    M3_TENSORS,
    OUTPUT_DENSE,
    OUTPUT_KINDS,
    PARAM_RUNNER,
    ROW_OPTIONS,
    ROW_OUTPUTS,
    ROW_WEIGHT_COLUMN,
    SPARSE_COUNT,
)
from ..errors import RequestError
from ..guard import run_isolated, token_check
from ..m3 import finish_request as finish_m3
from ..m3 import graph_names, read_row_outputs
from ..profile import ModelProfile
from ..runners import load_runner
from ..vectors import finish_request, from_rows
from ._util import Executing, error_response, input_arrays, internal, parameters, tensor_names, version_dir

# Token positions (rows x length) from which a request is checked for cancellation before it runs:
# 1,024 take ~20 ms of CPU with a small model, the check 0.14 ms (is_cancelled asks the server).
CANCEL_CHECK_TOKENS = 1024


class TritonPythonModel:
    def initialize(self, args):
        self._executing = Executing(args)
        params = parameters(args)
        folder = version_dir(args)
        # Triton pins each KIND_GPU instance to one device and says which.
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        self.profile = ModelProfile.load(folder)
        self.output = ENCODER_OUTPUTS[self.profile.task]
        self.finishes = ROW_OPTIONS in tensor_names(args, "input")
        self.runner = load_runner(params[PARAM_RUNNER], folder, self.profile, params, device)
        # bge-m3: the encoder answers the outputs each request asks for (m3.py), from one forward pass.
        self.m3 = self.finishes and self.profile.multi_output and ROW_OUTPUTS in tensor_names(args, "input")
        self.timed = ENCODE_NS in tensor_names(args, "output")  # the batch's run time, per response

    def _finishing(self, given: dict, rows: int) -> tuple:
        """(row_text, row_weight, dimensions, type index) of a request's inputs; without the row tensors
        (a direct call) its rows as they are: one text each, full size, float."""
        options = given.get(ROW_OPTIONS)
        weights = given.get(ROW_WEIGHT_COLUMN)
        if options is None and weights is None:
            kind = EMBEDDING_TYPES.index(EMBEDDING_TYPE_DEFAULT)
            return np.arange(rows, dtype=np.int32), np.ones(rows, np.float32), self.profile.dimension, kind
        if options is None or weights is None:
            raise RequestError(
                f"{ROW_OPTIONS} and {ROW_WEIGHT_COLUMN} are sent together or not at all", param=ROW_OPTIONS
            )
        return from_rows(options, weights, rows)

    def _response(self, out, finishing: tuple | None, m3: tuple | None = None, ran_ns: int = 0):
        response = self._answer(out, finishing, m3)
        if self.timed and not response.has_error():
            tensors = [*response.output_tensors(), pb_utils.Tensor(ENCODE_NS, np.array([[ran_ns]], np.int64))]
            return pb_utils.InferenceResponse(tensors)
        return response

    def _answer(self, out, finishing: tuple | None, m3: tuple | None):
        if finishing is None and m3 is None:
            return pb_utils.InferenceResponse([pb_utils.Tensor(self.output, np.asarray(out))])
        if finishing is None:  # a direct call to bge-m3's encoder: its rows as they are
            return pb_utils.InferenceResponse([pb_utils.Tensor(self.output, np.asarray(out[EMBEDDING]))])
        tensors = []
        try:
            if m3 is not None:
                ids, mask, bits = m3
                dense = np.asarray(out[EMBEDDING])
                extra = finish_m3(ids, mask, out, finishing[0], bits, self.profile)
                tensors = [pb_utils.Tensor(k, extra[k]) for k in M3_TENSORS]
                if not bits & 1 << OUTPUT_KINDS.index(OUTPUT_DENSE):  # not asked for: no columns
                    n = extra[SPARSE_COUNT].shape[0]
                    empty = np.zeros((n, 0), np.float32), np.zeros((n, 0), np.uint8)
                    tensors += [pb_utils.Tensor(EMBEDDING, empty[0]), pb_utils.Tensor(EMBEDDING_PACKED, empty[1])]
                    return pb_utils.InferenceResponse(tensors)
                out = dense
            vectors, packed = finish_request(np.asarray(out), *finishing, self.profile)
        except RequestError as exc:  # this request's error, not the batch's
            return error_response(exc)
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(EMBEDDING, vectors), pb_utils.Tensor(EMBEDDING_PACKED, packed), *tensors]
        )

    def execute(self, requests):
        with self._executing(len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        responses: list = [None] * len(requests)
        ids, masks, where, finishing, m3 = [], [], [], [], []
        for i, r in enumerate(requests):
            given = input_arrays(r)
            a, m = given[INPUT_IDS], given[ATTENTION_MASK]
            # Skip the work of a caller that has gone (deadline passed, connection closed). Asking is a
            # round trip to the server (~0.14 ms), so only where the work is worth saving.
            if a.size >= CANCEL_CHECK_TOKENS and getattr(r, "is_cancelled", bool)():
                responses[i] = error_response(RequestError("request cancelled", CANCELLED))
                continue
            try:
                token_check(a, m, self.profile)
                done = self._finishing(given, a.shape[0]) if self.finishes else None
                wanted = (a, m, read_row_outputs(given.get(ROW_OUTPUTS), a.shape[0])) if self.m3 else None
            except RequestError as exc:
                responses[i] = error_response(exc)
                continue
            ids.append(a)
            masks.append(m)
            where.append(i)
            finishing.append(done)
            m3.append(wanted)
        if ids:
            runner = self.runner
            if self.m3:  # the graph outputs some request of the batch asks for, computed once for all
                names = graph_names(int(np.bitwise_or.reduce([w[2] for w in m3])))

                def runner(i, m):
                    return self.runner(i, m, names)

            start = time.perf_counter_ns()
            outs = run_isolated(runner, ids, masks)
            ran = time.perf_counter_ns() - start
            for i, out, done, wanted in zip(where, outs, finishing, m3):
                if isinstance(out, str):
                    responses[i] = internal(out)
                else:
                    responses[i] = self._response(out, done, wanted, ran)
        return responses
