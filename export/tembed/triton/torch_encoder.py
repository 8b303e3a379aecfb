from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..profile import ModelProfile
from ..torch_runner import HF_DIR, TorchEncoder
from ._util import parameters, version_dir


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        folder = version_dir(args)
        # Triton pins each KIND_GPU instance to one device and says which.
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        self.runner = TorchEncoder.load(
            folder / HF_DIR, ModelProfile.load(folder), dtype=params.get("dtype", "bfloat16"), device=device
        )

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy() for r in requests]
        outs = self.runner(ids, masks)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("embedding", out)]) for out in outs]
