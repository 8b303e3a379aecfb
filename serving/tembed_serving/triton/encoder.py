"""The encoder model of every Python-backend runner; its config's ``runner`` parameter picks which."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from ..contract import ATTENTION_MASK, ENCODER_OUTPUTS, INPUT_IDS, PARAM_RUNNER
from ..guard import run_isolated, token_error
from ..profile import ModelProfile
from ..runners import load_runner
from ._util import invalid, parameters, version_dir


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        folder = version_dir(args)
        # Triton pins each KIND_GPU instance to one device and says which.
        device = f"cuda:{args['model_instance_device_id']}" if args["model_instance_kind"] == "GPU" else "cpu"
        self.profile = ModelProfile.load(folder)
        self.output = ENCODER_OUTPUTS[self.profile.task]
        self.runner = load_runner(params[PARAM_RUNNER], folder, self.profile, params, device)

    def execute(self, requests):
        responses: list = [None] * len(requests)
        ids, masks, where = [], [], []
        for i, r in enumerate(requests):
            if getattr(r, "is_cancelled", bool)():  # the caller has gone (deadline passed, connection closed)
                # CANCELLED where the stub knows it (bound at run time: pb_utils is filled in after import).
                code = getattr(pb_utils.TritonError, "CANCELLED", pb_utils.TritonError.UNAVAILABLE)
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError("request cancelled", code))
                continue
            a = pb_utils.get_input_tensor_by_name(r, INPUT_IDS).as_numpy()
            m = pb_utils.get_input_tensor_by_name(r, ATTENTION_MASK).as_numpy()
            error = token_error(a, m, self.profile)
            if error:
                responses[i] = invalid(error)
                continue
            ids.append(a)
            masks.append(m)
            where.append(i)
        if ids:
            for i, out in zip(where, run_isolated(self.runner, ids, masks)):
                if isinstance(out, str):
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(out, pb_utils.TritonError.INTERNAL)
                    )
                else:
                    responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(self.output, np.asarray(out))])
        return responses
