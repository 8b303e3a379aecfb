from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..ort_runner import OrtEncoder, OrtOptions
from ._util import parameters, version_dir


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.runner = OrtEncoder(
            version_dir(args) / "model.onnx",
            pad_token_id=int(params["pad_token_id"]),
            padding_side=params["padding_side"],
            options=OrtOptions.from_parameters(params),
        )

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy() for r in requests]
        outs = self.runner(ids, masks)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("embedding", out)]) for out in outs]
