"""int8 encoders for CPU, gated on retrieval quality.

``tembed export --quantize int8`` tries the methods of :data:`DEFAULT_METHODS` (per runner) in order on the exported
fp32 graph and keeps the first whose retrieval on small fixed slices of the shipped evaluation sets
(``tembed_eval.int8_gate.GATE_SLICES``, scored with tembed_eval's loaders and metrics, exact
search; found by the ``tembed.int8_gate`` entry point) is within
:data:`MAX_DROP` of the fp32 graph's on every metric; if none is, the export is refused, saying by
how much each method fell short and on which metric.

The methods (measured in docs/BENCHMARKS.md, "int8 encoder"):

- ``static``: QDQ static quantization calibrated on ``calibration_texts.txt`` (both prompts):
  per-channel symmetric int8 weights, asymmetric uint8 activations; only the weight MatMuls are
  quantised (attention's activation x activation MatMuls, the embeddings, the pooling and the
  normalisation stay fp32), and the last :attr:`Method.fp32_last_layers` layers stay fp32.
- ``static-ffn-fp32``: the same, but the FFN down projections (``output.dense``, where models of the
  MiniLM class carry activation outliers a static range cannot hold) stay fp32 too.
- ``dynamic``: ``quantize_dynamic`` (int8 weights per tensor, activation ranges per call), what the
  export did before.
- ``nncf``: NNCF's post-training quantization of the ONNX graph (``nncf.quantize`` with
  ``model_type=TRANSFORMER``: SmoothQuant moves activation outliers into the weights, and NNCF's
  transformer scope keeps softmax, LayerNorm and the other sensitive ops unquantised), calibrated on the
  same texts; QDQ, run by ONNX Runtime or by OpenVINO (``--runner openvino``).
- ``nncf-ffn-fp32``: ``nncf`` with the FFN down projections (``output.dense``) left fp32, where e5-small's
  activation outliers sit: on an AVX-512 VNNI CPU, Tatoeba zh->en acc@1 -0.7 points with every linear layer
  int8, -0.2 with these twelve fp32, at 1.5-1.6x ONNX Runtime fp32 instead of 2.0-2.1x.
- ``nncf-7bit``: the same as ``nncf`` with NNCF's OverflowFix on every layer: 7-bit weights, which a CPU without VNNI
  (AVX2) multiplies without saturating.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tembed_serving.contract import ATTENTION_MASK, INPUT_IDS
from tembed_serving.profile import ModelProfile

log = logging.getLogger("tembed")

# Largest drop of any gate metric below fp32, in metric units (0.005 = 0.5 points).
MAX_DROP = 0.005


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "static" | "dynamic" | "nncf"
    fp32_last_layers: int = 1
    fp32_ffn_out: bool = False
    per_channel: bool = True
    # int8 activations (symmetric) vs uint8 (asymmetric): ORT's x86 kernels run S8S8 QDQ MatMuls
    # 2.7-10x slower than U8S8 here (e5-small b=1x16: 52.9 vs 6.8 ms, loaded machine), so uint8.
    symmetric_activations: bool = False
    calibration: str = "MinMax"  # onnxruntime CalibrationMethod member
    # nncf: NNCF's OverflowFix member (None: NNCF's default, 7-bit weights in the first layer only). "ENABLE":
    # every linear layer's int8 weights within 7 bits (|w| <= 64), so a u8 x s8 pair sum cannot saturate int16
    # on CPUs without VNNI (AVX2's vpmaddubsw), at one bit of weight resolution.
    overflow_fix: str | None = None
    # dynamic: int8 weights in 7 bits (``quantize_dynamic(reduce_range=True)``), ONNX Runtime's advice for CPUs
    # without VNNI, where AVX2's u8 x s8 pair sums saturate int16.
    reduce_range: bool = False


METHODS: tuple[Method, ...] = (
    Method("static", "static"),
    Method("static-ffn-fp32", "static", fp32_ffn_out=True),  # MiniLM-class outliers
    Method("dynamic", "dynamic", fp32_last_layers=0, per_channel=False),
    Method("nncf", "nncf", fp32_last_layers=0),
    # e5-small scored in OpenVINO on an AVX2-only CPU (2026-12-03, same calibration, NNCF deterministic): nncf
    # worst -1.2 points (Tatoeba zh->en acc@1; en->zh -1.1), nncf-7bit -0.8 (en->zh -0.2, MS MARCO +0.1).
    Method("nncf-7bit", "nncf", fp32_last_layers=0, overflow_fix="ENABLE"),
    # e5-small scored in OpenVINO on an AVX-512 VNNI CPU (2026-12-04): nncf worst -0.7 (zh->en acc@1), the same
    # with OverflowFix DISABLE or preset MIXED, nncf-7bit -0.7; this one -0.2 (docs/BENCHMARKS.md, "int8 encoder").
    Method("nncf-ffn-fp32", "nncf", fp32_last_layers=0, fp32_ffn_out=True),
)
METHODS_BY_NAME = {m.name: m for m in METHODS}
# The methods tried by default, in order, for the runner that serves the graph (measured in
# docs/BENCHMARKS.md, "CPU runtimes x precisions"). OpenVINO runs NNCF's QDQ graph on its int8 kernels;
# ONNX Runtime 1.32 runs that graph slower than fp32 on single queries (signed int8 activations), so it
# tries its own methods, and ``--int8-method nncf`` is there when asked.
DEFAULT_METHODS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("static", "static-ffn-fp32", "dynamic"),
    "openvino": ("nncf", "nncf-ffn-fp32", "nncf-7bit"),
}


def methods_for(runner: str, names: Sequence[str] | None = None) -> tuple[Method, ...]:
    """The int8 methods to try, in order: ``names`` when given, else the runner's defaults."""
    if names is None:
        names = DEFAULT_METHODS.get(runner)
        if names is None:
            raise ValueError(f"--quantize int8 has no methods for the {runner} runner ({', '.join(DEFAULT_METHODS)})")
    unknown = [n for n in names if n not in METHODS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown int8 method(s) {', '.join(unknown)}; known: {', '.join(METHODS_BY_NAME)}")
    return tuple(METHODS_BY_NAME[n] for n in names)


_LAYER = re.compile(r"/layers?\.(\d+)/")


class Int8Refused(ValueError):
    """No int8 method kept retrieval within the gate; the message says by how much each fell short."""


# --- quantisation -------------------------------------------------------------------------------


def _weight_matmuls(model) -> list:
    """MatMul nodes with an initializer operand (the linear layers)."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]


def nodes_kept_fp32(onnx_path: Path, method: Method) -> tuple[list[str], list[str]]:
    """(MatMuls quantised, every other MatMul name kept fp32) for ``method``."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = _weight_matmuls(model)
    layers = [int(m.group(1)) for n in weights if (m := _LAYER.search(n.name))]
    last = max(layers) if layers else -1
    quantised = []
    for n in weights:
        m = _LAYER.search(n.name)
        if m is None or int(m.group(1)) > last - method.fp32_last_layers:
            continue
        if method.fp32_ffn_out and re.search(r"/layers?\.\d+/output/dense/|/down_proj/|/mlp/fc2/", n.name):
            continue
        quantised.append(n.name)
    keep = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in set(quantised)]
    return quantised, keep


class _Calibration:
    """onnxruntime CalibrationDataReader over the calibration texts, tokenized as served."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self):
        b = next(self._it, None)
        return None if b is None else {INPUT_IDS: b[0].astype(np.int64), ATTENTION_MASK: b[1].astype(np.int64)}


def calibration_batches(
    profile: ModelProfile, tokenizer_file: Path, texts: Sequence[str] | None = None, step: int = 16
):
    from tembed_serving.contract import INPUT_TYPES
    from tembed_serving.textproc import TextEncoder

    from .calibration import calibration_texts

    texts = calibration_texts() if texts is None else list(texts)
    enc = TextEncoder(profile, tokenizer_file)
    out = []
    for input_type in INPUT_TYPES:
        for s in range(0, len(texts), step):
            b = enc(list(texts[s : s + step]), input_type=input_type)
            out.append((b.input_ids, b.attention_mask))
    return out


def quantize(
    fp32: Path,
    out: Path,
    method: Method,
    profile: ModelProfile,
    tokenizer_file: Path,
    texts: Sequence[str] | None = None,
) -> Path:
    """Write ``fp32`` quantised by ``method`` to ``out``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method.kind == "dynamic":
        extra = {}
        if method.fp32_last_layers or method.fp32_ffn_out:  # only the weight MatMuls chosen, the rest fp32
            extra = {"op_types_to_quantize": ["MatMul"], "nodes_to_exclude": nodes_kept_fp32(fp32, method)[1]}
        quantize_dynamic(
            str(fp32),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=method.per_channel,
            reduce_range=method.reduce_range,
            **extra,
        )
        return out
    if method.kind == "nncf":
        return quantize_nncf(fp32, out, method, profile, tokenizer_file, texts)
    quantised, _ = nodes_kept_fp32(fp32, method)
    act = QuantType.QInt8 if method.symmetric_activations else QuantType.QUInt8
    quantize_static(
        str(fp32),
        str(out),
        _Calibration(calibration_batches(profile, tokenizer_file, texts)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=quantised,
        per_channel=method.per_channel,
        activation_type=act,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method.calibration),
        extra_options={
            "ActivationSymmetric": method.symmetric_activations,
            "WeightSymmetric": True,
            # keep the calibration's augmented graph off the (shared) /tmp of small machines
        },
    )
    return out


def quantize_nncf(
    fp32: Path,
    out: Path,
    method: Method,
    profile: ModelProfile,
    tokenizer_file: Path,
    texts: Sequence[str] | None = None,
) -> Path:
    """NNCF post-training quantization (its ONNX backend) of ``fp32``, calibrated on the calibration
    texts (both prompts, tokenized as served); the linear layers of the last
    :attr:`Method.fp32_last_layers` layers (and with :attr:`Method.fp32_ffn_out` the FFN down
    projections) are left out of it (an ignored scope)."""
    import nncf
    import onnx

    model = onnx.load(str(fp32))
    itype = np.int32 if model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32 else np.int64
    batches = calibration_batches(profile, tokenizer_file, texts, step=1)  # one text a sample: no padding
    data = nncf.Dataset(batches, lambda b: {INPUT_IDS: b[0].astype(itype), ATTENTION_MASK: b[1].astype(itype)})
    ignored = None
    if method.fp32_last_layers or method.fp32_ffn_out:  # those linear layers left out of NNCF's scope
        quantised, _ = nodes_kept_fp32(fp32, method)
        names = [n.name for n in _weight_matmuls(model) if n.name not in set(quantised)]
        ignored = nncf.IgnoredScope(names=names, validate=False)
    advanced = None
    if method.overflow_fix:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix[method.overflow_fix])
    q = nncf.quantize(
        model,
        data,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(batches),
        ignored_scope=ignored,
        advanced_parameters=advanced,
    )
    onnx.save(q, str(out))
    return out


# --- the retrieval gate -------------------------------------------------------------------------


@dataclass
class GateReport:
    method: str
    fp32: dict[str, dict[str, float]]
    int8: dict[str, dict[str, float]]
    seconds: float = 0.0
    max_drop: float = MAX_DROP
    deltas: dict[str, float] = field(default_factory=dict)  # "task metric" -> int8 - fp32

    def __post_init__(self) -> None:
        self.deltas = {f"{t} {m}": round(self.int8[t][m] - v, 4) for t, ms in self.fp32.items() for m, v in ms.items()}

    @property
    def worst(self) -> tuple[str, float]:
        k = min(self.deltas, key=self.deltas.get)
        return k, self.deltas[k]

    @property
    def passed(self) -> bool:
        return self.worst[1] >= -self.max_drop

    def summary(self) -> str:
        k, d = self.worst
        return (
            f"{self.method}: worst {k} {d * 100:+.1f} points ({self.fp32_value(k):.3f} -> {self.fp32_value(k) + d:.3f})"
        )

    def fp32_value(self, key: str) -> float:
        task, metric = key.rsplit(" ", 1)
        return self.fp32[task][metric]


SCORER_GROUP = "tembed.int8_gate"  # entry point: (profile, tokenizer_file, data, slices) -> scorer


def load_scorer(
    profile: ModelProfile,
    tokenizer_file: Path,
    data: Path | None,
    slices: dict[str, int] | None,
    runtime: str = "onnxruntime",
):
    """The gate's scorer, ``graph path -> {task: {metric: value}}``, from the ``tembed.int8_gate``
    entry point (tembed_eval.int8_gate: its loaders and metrics; tembed does not import tembed_eval),
    running the graphs in ``runtime`` (the runner that will serve them: onnxruntime or openvino)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=SCORER_GROUP):
        try:
            factory = ep.load()
        except ImportError as exc:  # the eval extra is not installed
            raise Int8Refused(f"int8 is gated on retrieval, which needs the eval extra: {exc}") from None
        return factory(profile, tokenizer_file, data, slices, runtime=runtime)
    raise Int8Refused(f"int8 is gated on retrieval: no {SCORER_GROUP} entry point (install tembed with the eval extra)")


def gate(fp32: Path, candidates: dict[str, Path], scorer, max_drop: float = MAX_DROP) -> list[GateReport]:
    """Retrieval of every candidate graph against ``fp32`` by ``scorer``."""
    base = scorer(fp32)
    return [GateReport(name, base, scorer(path), max_drop=max_drop) for name, path in candidates.items()]


def quantize_gated(
    onnx_path: Path,
    profile: ModelProfile,
    tokenizer_file: Path,
    methods: Sequence[Method] = METHODS,
    data: Path | None = None,
    slices: dict[str, int] | None = None,
    max_drop: float = MAX_DROP,
    runtime: str = "onnxruntime",
) -> GateReport:
    """Replace ``onnx_path`` by the first of ``methods`` that passes the retrieval gate, scored in
    ``runtime`` (the runner that serves it); the report of the one kept. Raises :class:`Int8Refused`
    (the graph left fp32) when none passes."""
    from tembed_serving.cpu import cpu_model_and_flags

    onnx_path = Path(onnx_path)
    # The int8 kernels, and so the scores, can differ between CPUs (e5-small's NNCF graph in OpenVINO: Tatoeba
    # zh->en acc@1 -0.7 points on an AVX-512 VNNI machine, -1.2 on an AVX2-only one): the log says where.
    cpu, isa = cpu_model_and_flags()
    where = f"{runtime} on {cpu or 'this CPU'} ({', '.join(isa) or 'ISA unknown'})"
    log.info("int8 gate: scoring in %s", where)
    scorer = load_scorer(profile, tokenizer_file, data, slices, runtime)
    base = scorer(onnx_path)
    tried = []
    for method in methods:
        t0 = time.perf_counter()
        cand = onnx_path.with_name(f"model.{method.name}.onnx")
        try:
            quantize(onnx_path, cand, method, profile, tokenizer_file)
            report = GateReport(method.name, base, scorer(cand), max_drop=max_drop)
            report.seconds = round(time.perf_counter() - t0, 1)
            log.info("int8 gate %s in %.0fs: %s", method.name, report.seconds, report.summary())
            if report.passed:
                cand.replace(onnx_path)
                return report
            tried.append(report)
        finally:
            cand.unlink(missing_ok=True)
    sizes = getattr(scorer, "sizes", "")
    raise Int8Refused(
        f"{profile.name}: no int8 method keeps retrieval within {max_drop * 100:.1f} points of fp32 on the gate"
        f" slices ({sizes}; scored in {where}): " + "; ".join(r.summary() for r in tried) + ". The encoder stays fp32."
    )
