"""The postprocess model: after a Triton-native encoder (onnxruntime, tensorrt), one request's rows to
its vectors (``vectors.finish_request``); a Python-backend encoder does the same itself."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..contract import (
    DIMENSIONS_CHECKED,
    EMBEDDING,
    EMBEDDING_PACKED,
    EMBEDDING_TYPE_CHECKED,
    FULL_EMBEDDING,
    ROW_TEXT,
    ROW_WEIGHT,
)
from ..errors import RequestError
from ..profile import ModelProfile
from ..vectors import finish_request
from ._util import Executing, error_response, version_dir


def _reader(request):
    return lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        self._executing = Executing(args)
        self.profile = ModelProfile.load(version_dir(args))

    def execute(self, requests):
        with self._executing(len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        responses = []
        for request in requests:
            get = _reader(request)
            try:
                vectors, packed = finish_request(
                    get(FULL_EMBEDDING),
                    get(ROW_TEXT),
                    get(ROW_WEIGHT),
                    int(get(DIMENSIONS_CHECKED).reshape(-1)[0]),
                    int(get(EMBEDDING_TYPE_CHECKED).reshape(-1)[0]),
                    self.profile,
                )
            except RequestError as exc:
                responses.append(error_response(exc))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(EMBEDDING, vectors), pb_utils.Tensor(EMBEDDING_PACKED, packed)]
                )
            )
        return responses
