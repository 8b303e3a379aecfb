"""The encoder model of every Python-backend runner; its config's ``runner`` parameter picks which."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from ..contract import ATTENTION_MASK, ENCODER_OUTPUTS, INPUT_IDS, PARAM_RUNNER
from ..profile import ModelProfile
from ..runners import load_runner
from ._util import parameters, version_dir


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        folder = version_dir(args)
        # Triton pins each KIND_GPU instance to one device and says which.
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        profile = ModelProfile.load(folder)
        self.output = ENCODER_OUTPUTS[profile.task]
        self.runner = load_runner(params[PARAM_RUNNER], folder, profile, params, device)

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, INPUT_IDS).as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, ATTENTION_MASK).as_numpy() for r in requests]
        outs = self.runner(ids, masks)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(self.output, out)]) for out in outs]
