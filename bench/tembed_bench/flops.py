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


def _matmul_graph(kind: str, size: int, qdq: bool = False):
    """A ``size``^3 MatMul graph and its feed: activations ``a`` fed, weights ``b`` a constant (as an
    encoder's are, so a runtime may prepack them). ``int8``: ``MatMulInteger`` u8 x s8, or with ``qdq``
    the QuantizeLinear/DequantizeLinear form NNCF writes (OpenVINO fuses it into an int8 MatMul)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a_info = helper.make_tensor_value_info(
        "a", TensorProto.FLOAT if kind == "fp32" or qdq else TensorProto.UINT8, [size, size]
    )
    inits, nodes = [], []
    if kind == "fp32":
        inits.append(numpy_helper.from_array(rng.random((size, size), dtype=np.float32), "b"))
        nodes.append(helper.make_node("MatMul", ["a", "b"], ["y"]))
        y_type, feeds = TensorProto.FLOAT, {"a": rng.random((size, size), dtype=np.float32)}
    elif kind == "int8" and not qdq:
        inits.append(numpy_helper.from_array(rng.integers(-127, 127, (size, size)).astype(np.int8), "b"))
        nodes.append(helper.make_node("MatMulInteger", ["a", "b"], ["y"]))
        y_type, feeds = TensorProto.INT32, {"a": rng.integers(0, 255, (size, size)).astype(np.uint8)}
    elif kind == "int8":
        inits += [
            numpy_helper.from_array(rng.integers(-127, 127, (size, size)).astype(np.int8), "b"),
            numpy_helper.from_array(np.array(0.01, np.float32), "sa"),
            numpy_helper.from_array(np.array(128, np.uint8), "za"),
            numpy_helper.from_array(np.full(size, 0.01, np.float32), "sb"),
            numpy_helper.from_array(np.zeros(size, np.int8), "zb"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["qa"]),
            helper.make_node("DequantizeLinear", ["qa", "sa", "za"], ["da"]),
            helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["db"], axis=1),
            helper.make_node("MatMul", ["da", "db"], ["y"]),
        ]
        y_type, feeds = TensorProto.FLOAT, {"a": rng.random((size, size), dtype=np.float32)}
    else:
        raise ValueError(f"kind must be fp32 or int8, got {kind!r}")
    out = helper.make_tensor_value_info("y", y_type, [size, size])
    graph = helper.make_graph(nodes, "matmul", [a_info], [out], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), feeds


def _timed(call, feeds, rounds: int) -> float:
    call(feeds)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call(feeds)
        times.append(time.perf_counter() - t0)
    return min(times)  # a peak: the best call (on a shared machine the median reads other sessions' load)


def matmul_peak(
    kind: str, threads: int = 0, size: int = PEAK_SIZE, rounds: int = 10, runtime: str = "onnxruntime"
) -> float:
    """GFLOP/s of one ``size``^3 MatMul on CPU in ``runtime`` (``onnxruntime``: fp32 MatMul, int8
    MatMulInteger u8 x s8; ``openvino``: fp32 MatMul at f32 precision, int8 the QDQ form), the best of
    ``rounds`` calls after a warm-up, ``threads`` threads (0: all), no spinning or pinning."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        model, feeds = _matmul_graph(kind, size)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        seconds = _timed(lambda f: sess.run(None, f), feeds, rounds)
    elif runtime == "openvino":
        import openvino as ov

        model, feeds = _matmul_graph(kind, size, qdq=kind == "int8")
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", config)
        req = compiled.create_infer_request()
        seconds = _timed(req.infer, feeds, rounds)
    else:
        raise ValueError(f"runtime must be onnxruntime or openvino, got {runtime!r}")
    return gflops(2 * size**3, seconds)


def peaks(threads: int = 0, runtime: str = "onnxruntime") -> dict[str, float]:
    """{"fp32": GFLOP/s, "int8": GFLOP/s} in ``runtime``."""
    return {k: round(matmul_peak(k, threads, runtime=runtime), 1) for k in ("fp32", "int8")}
