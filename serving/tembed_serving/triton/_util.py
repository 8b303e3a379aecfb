from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils


def version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def parameters(args: dict) -> dict[str, str]:
    cfg = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}


def invalid(message: str) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def input_arrays(request) -> dict[str, object]:
    """Every input the request carries, by name, as numpy: one pass over ``request.inputs()`` (each
    ``pb_utils.get_input_tensor_by_name`` builds that list again)."""
    return {t.name(): t.as_numpy() for t in request.inputs()}


def optional_input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def tensor_names(args: dict, kind: str) -> set[str]:
    """The names of the config's ``kind`` ("input" or "output") tensors."""
    return {t["name"] for t in json.loads(args["model_config"]).get(kind, [])}
