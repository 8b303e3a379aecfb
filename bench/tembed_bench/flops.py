"""How far from the hardware an encoder runs: the FLOPs of a workload counted from the model's shape,
and the CPU's peak measured as one large MatMul in the same runtime (fp32 and int8).

``encoder_flops(shape, lengths)`` counts what a BERT-class encoder must do for texts of the given token
lengths, each at its own length: padding, tokenization and pooling are not work, so GFLOP/s over a
served path's wall time is the *useful* rate (what a perfect runtime on the same cores would need)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PEAK_SIZE = 1024  # n of the n x n x n MatMul the peak is measured on


@dataclass(frozen=True)
class EncoderShape:
    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def from_config(cls, config: Path | dict) -> EncoderShape:
        """From a Hugging Face ``config.json`` (a path, a model folder, or the dict)."""
        if not isinstance(config, dict):
            p = Path(config)
            config = json.loads((p / "config.json" if p.is_dir() else p).read_text(encoding="utf-8"))
        return cls(int(config["num_hidden_layers"]), int(config["hidden_size"]), int(config["intermediate_size"]))


def encoder_flops(shape: EncoderShape, lengths: Iterable[int]) -> float:
    """2 x multiply-adds of encoding one text of each length ``n`` in ``lengths``: per layer the Q, K, V
    and output projections (4 x n x h^2), the two FFN matrices (2 x n x h x i), and attention's scores
    and context (2 x n^2 x h). Embedding lookups, LayerNorm, softmax, GELU and pooling are left out
    (a few per cent of the MatMuls' count at these sizes)."""
    h, i = shape.hidden, shape.intermediate
    n = np.asarray(list(lengths), dtype=np.float64)
    per_layer = 2 * (4 * n * h * h + 2 * n * h * i) + 2 * (2 * n * n * h)
    return float(shape.layers * per_layer.sum())


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9 if seconds > 0 else 0.0


def _matmul_graph(kind: str, size: int):
    from onnx import TensorProto, helper

    if kind == "fp32":
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        ins = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [size, size]) for x in "ab"]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])
        rng = np.random.default_rng(0)
        feeds = {x: rng.random((size, size), dtype=np.float32) for x in "ab"}
    elif kind == "int8":  # u8 activations x s8 weights: the VNNI kernels the int8 encoders use
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        ins = [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [size, size]),
        ]
        out = helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])
        rng = np.random.default_rng(0)
        feeds = {
            "a": rng.integers(0, 255, (size, size)).astype(np.uint8),
            "b": rng.integers(-127, 127, (size, size)).astype(np.int8),
        }
    else:
        raise ValueError(f"kind must be fp32 or int8, got {kind!r}")
    graph = helper.make_graph([node], "matmul", ins, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), feeds


def matmul_peak(kind: str, threads: int = 0, size: int = PEAK_SIZE, rounds: int = 10) -> float:
    """GFLOP/s of one ``size``^3 MatMul in ONNX Runtime on CPU (``fp32``: MatMul; ``int8``: MatMulInteger
    u8 x s8), median of ``rounds`` calls after a warm-up, ``threads`` intra-op threads (0: all), no spinning."""
    import onnxruntime as ort

    model, feeds = _matmul_graph(kind, size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return gflops(2 * size**3, float(np.median(times)))


def peaks(threads: int = 0) -> dict[str, float]:
    """{"fp32": GFLOP/s, "int8": GFLOP/s} in ONNX Runtime."""
    return {k: round(matmul_peak(k, threads), 1) for k in ("fp32", "int8")}
