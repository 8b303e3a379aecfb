from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..contract import DIMENSIONS, EMBEDDING
from ..matryoshka import truncate


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            emb = pb_utils.get_input_tensor_by_name(request, EMBEDDING).as_numpy()
            d = int(pb_utils.get_input_tensor_by_name(request, DIMENSIONS).as_numpy().reshape(-1)[0])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(EMBEDDING, truncate(emb, d))]))
        return responses
