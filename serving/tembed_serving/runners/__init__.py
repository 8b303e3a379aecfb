"""Encoder runners: what runs the encoder inside a Python-backend model, behind one protocol.

A runner takes several requests' token tensors (each ``[n_i, s_i]``, padded on the profile's side)
and returns one ``[n_i, dimension]`` float32 array per request. The encoder model's config names
its runner (``parameters { key: "runner" }``); adding a backend is one module here plus one entry
in ``RUNNERS`` (and its export-side entry in ``tembed.repository.BACKENDS``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from ..contract import HF_DIR, ONNX_FILE, PARAM_CUDA_GRAPH_TOKENS, PARAM_DTYPE, TORCH_DTYPES
from ..profile import ModelProfile


class Runner(Protocol):
    def __call__(self, ids: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]: ...


# (version folder, profile, the model config's parameters, device) -> runner
RunnerFactory = Callable[[Path, ModelProfile, Mapping[str, str], str], Runner]


def _graph(module_name: str, cls_name: str) -> RunnerFactory:
    """A runner of the exported ONNX graph (``ort.OrtEncoder``, ``openvino.OpenVinoEncoder``), its options from
    the model config's parameters; the module is imported when a model loads it."""

    def make(folder: Path, profile: ModelProfile, params: Mapping[str, str], device: str) -> Runner:
        import importlib

        from .ort import OrtOptions

        return getattr(importlib.import_module(f".{module_name}", __name__), cls_name)(
            folder / ONNX_FILE,
            pad_token_id=profile.pad_token_id,
            padding_side=profile.padding_side,
            options=OrtOptions.from_parameters(params),
        )

    return make


_onnxruntime, _openvino = _graph("ort", "OrtEncoder"), _graph("openvino", "OpenVinoEncoder")


def _torch(folder: Path, profile: ModelProfile, params: Mapping[str, str], device: str) -> Runner:
    from .torch import TorchEncoder

    return TorchEncoder.load(
        folder / HF_DIR,
        profile,
        dtype=params.get(PARAM_DTYPE, TORCH_DTYPES[0]),
        device=device,
        cuda_graph_tokens=int(params.get(PARAM_CUDA_GRAPH_TOKENS, "0") or 0),
    )


RUNNERS: dict[str, RunnerFactory] = {"onnxruntime": _onnxruntime, "openvino": _openvino, "torch": _torch}


def load_runner(
    name: str, folder: Path, profile: ModelProfile, params: Mapping[str, str], device: str = "cpu"
) -> Runner:
    if name not in RUNNERS:
        raise ValueError(f"unknown runner {name!r}; known: {', '.join(RUNNERS)}")
    if profile.precision == "int8" and device == "cpu":
        from ..cpu import int8_slow_reason, log

        if reason := int8_slow_reason():
            log.warning("%s: int8 encoder (%s): %s", profile.name, profile.quantization, reason)
    return RUNNERS[name](Path(folder), profile, params, device)
