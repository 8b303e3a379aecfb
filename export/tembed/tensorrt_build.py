"""ONNX -> TensorRT engine for the pooled encoder, validated against ONNX Runtime on fresh shapes.

One stage of export -> engine -> serve (docs/GPU.md). The engine gets one optimization profile per
sequence-length range, a precision chosen from the model's architecture, a timing cache reused
across builds, and a sidecar ``model.plan.json`` recording the TensorRT version and GPU class it
was built on: a plan only deserializes on the TensorRT version that built it, and its kernels are
chosen for one compute capability.

Nothing here imports TensorRT, torch or ONNX Runtime at module level, so the pure parts (profile
arithmetic, precision rules, sidecar checks) are importable and tested on machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tembed_serving.contract import (
    ATTENTION_MASK,
    ENCODER_INPUTS,
    ENCODER_OUTPUT,
    ENCODER_OUTPUTS,
    INPUT_IDS,
    TASK_EMBED,
    Layout,
)
from tembed_serving.profile import ModelProfile

from .repository import ServingOptions, encoder_config, parse, refresh_lanes, render
from .trt_profiles import (
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_SEQ_BUCKETS,
    ShapeProfile,
    optimization_profiles,
    select_profile,
)

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_TIMING_CACHE = Path(".cache/tensorrt/timing.cache")
SIDECAR_SUFFIX = ".json"

# RMSNorm / LayerNorm / the final L2 normalisation exported from PyTorch: Pow -> ReduceMean -> Add ->
# Sqrt -> Div (or Reciprocal). Squares of Qwen3's large residual activations overflow fp16 (max 65504)
# inside ReduceMean, which is where the NaN reports on the 8B come from.
FP32_LAYER_TYPES = frozenset({"REDUCE", "UNARY", "NORMALIZATION"})
FP32_ELEMENTWISE_OPS = frozenset({"POW", "DIV"})


class EngineBuildError(RuntimeError):
    """TensorRT is missing, the ONNX graph does not parse, or the builder gave up."""


class EngineMismatchError(RuntimeError):
    """The engine was built by another TensorRT version or for another GPU class, or disagrees with ONNX."""


@dataclass(frozen=True)
class Tolerance:
    atol: float
    min_cosine: float


# On unit-length embeddings. fp32 builds may use TF32 matmuls (10-bit mantissa, on by default in
# TensorRT on Ampere+). fp16 keeps 10 mantissa bits, bf16 only 7, and rounding compounds over 28-36
# layers; cosine is the metric retrieval uses, and NaN, overflow or wrong pooling push it far below
# these bounds, so they catch real breakage without failing on reordered float sums.
TOLERANCES = {
    "fp32": Tolerance(atol=1e-3, min_cosine=0.99999),
    "fp16": Tolerance(atol=2e-2, min_cosine=0.998),
    "bf16": Tolerance(atol=5e-2, min_cosine=0.995),
}


def default_precision(profile: ModelProfile) -> str:
    """bf16 for decoder (last-token) models: fp32's exponent range, so Qwen3's large residual
    activations cannot overflow; fp16 for BERT-style encoders, whose activations stay small."""
    return "bf16" if profile.pooling == "last" else "fp16"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def keeps_fp32(layer_type: str, elementwise_op: str | None = None) -> bool:
    """Whether a layer (TensorRT LayerType name, ElementWiseOperation name) is pinned to fp32."""
    return layer_type in FP32_LAYER_TYPES or (layer_type == "ELEMENTWISE" and elementwise_op in FP32_ELEMENTWISE_OPS)


def parse_shape(text: str) -> tuple[int, int]:
    """``"2x17"`` -> ``(2, 17)`` (batch x sequence length)."""
    try:
        batch, seq = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 2x17 (batch x tokens), got {text!r}") from None
    if batch < 1 or seq < 1:
        raise argparse.ArgumentTypeError(f"shape must be positive, got {text!r}")
    return batch, seq


def default_validation_shapes(profiles: list[ShapeProfile]) -> list[tuple[int, int]]:
    """Odd shapes the builder never saw: the ONNX validation shapes that fit, then one short shape at
    the bottom of every longer profile (the bottom keeps the ONNX Runtime reference cheap on CPU)."""
    small = [(1, 8), (3, 17), (5, 33), (2, 64)]  # onnx_export.VALIDATION_SHAPES
    shapes = [s for s in small if any(p.admits(*s) for p in profiles)]
    for p in profiles[1:]:
        shapes.append((min(2, p.max[0]), min(p.min[1] + 7, p.max[1])))
    return shapes


# --- sidecar: where an engine may run ---------------------------------------------------------


def sidecar_path(plan: Path) -> Path:
    return Path(str(plan) + SIDECAR_SUFFIX)


def engine_metadata(
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    profiles: list[ShapeProfile],
    io: dict[str, dict],
    onnx: str,
) -> dict:
    return {
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        "profiles": [asdict(p) for p in profiles],
        "io": io,
        "onnx": onnx,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def profiles_from_metadata(meta: dict) -> list[ShapeProfile]:
    return [ShapeProfile(**{k: tuple(v) for k, v in p.items()}) for p in meta["profiles"]]


def check_metadata(meta: dict, *, tensorrt_version: str, compute_capability: str) -> None:
    """Raise when this machine cannot run the engine: plans are tied to the exact TensorRT version,
    and (without hardware-compatibility mode) to the compute capability they were tuned on. H100 and
    H200 share 9.0; A100 (8.0) and A10 (8.6) do not."""
    if meta.get("tensorrt_version") != tensorrt_version:
        raise EngineMismatchError(
            f"engine built with TensorRT {meta.get('tensorrt_version')}, this machine has {tensorrt_version}: "
            "rebuild it with the TensorRT of the serving image (docker/build_engine.sh)"
        )
    if meta.get("compute_capability") != compute_capability:
        raise EngineMismatchError(
            f"engine built on {meta.get('gpu_name')} (compute capability {meta.get('compute_capability')}), "
            f"this GPU is {compute_capability}: rebuild it on the GPU class that serves it"
        )


def gpu_info() -> tuple[str, str]:
    """(name, "major.minor") of GPU 0, from torch when present, else nvidia-smi."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "--id=0"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineBuildError(f"no CUDA GPU visible (torch.cuda and nvidia-smi both failed: {exc})") from None
    name, cap = (x.strip() for x in out.strip().splitlines()[0].split(","))
    return name, cap


# --- TensorRT ----------------------------------------------------------------------------------


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineBuildError(
            "TensorRT's Python package is not installed. Build engines inside the serving image "
            "(docker/build_engine.sh), or `pip install tensorrt-cu12==X.Y.Z` with exactly the TensorRT "
            "version of the tritonserver image that will load the engine"
        ) from None
    return trt


def _dtype_name(trt, dtype) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.int32: "int32", trt.int64: "int64"}
    if hasattr(trt, "bfloat16"):
        names[trt.bfloat16] = "bfloat16"
    return names.get(dtype, str(dtype))


def _log_network(trt, network, output: str = ENCODER_OUTPUT) -> dict[str, dict]:
    """Log every input and output; the graph must be the encoder contract (``output``: the task's)."""
    io = {}
    for kind, count, get in (
        ("input", network.num_inputs, network.get_input),
        ("output", network.num_outputs, network.get_output),
    ):
        for i in range(count):
            t = get(i)
            io[t.name] = {"kind": kind, "shape": list(t.shape), "dtype": _dtype_name(trt, t.dtype)}
            log.info("network %s %-15s shape=%s dtype=%s", kind, t.name, list(t.shape), _dtype_name(trt, t.dtype))
    names_in = [n for n, v in io.items() if v["kind"] == "input"]
    names_out = [n for n, v in io.items() if v["kind"] == "output"]
    if names_in != list(ENCODER_INPUTS) or names_out != [output]:
        raise EngineBuildError(
            f"expected inputs {list(ENCODER_INPUTS)} and output [{output!r}], got {names_in} -> {names_out}"
        )
    return io


def _pin_fp32(trt, network) -> int:
    """Run normalisation layers in fp32 inside a reduced-precision engine; returns how many."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        op = None
        if layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer  # the Python API returns the base class
            op = layer.op.name
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        # Integer and shape arithmetic (position ids, masks) has no float precision to pin.
        if not keeps_fp32(layer.type.name, op) or any(t.dtype != trt.float32 for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


@dataclass
class BuildSpec:
    onnx: Path
    out: Path
    profile: ModelProfile
    precision: str
    seq_buckets: tuple[int, ...] = DEFAULT_SEQ_BUCKETS
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS
    fp32_norm: bool = True
    timing_cache: Path | None = DEFAULT_TIMING_CACHE
    workspace_gb: float = 8.0

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.workspace_gb <= 0:
            raise ValueError(f"workspace_gb must be > 0, got {self.workspace_gb}")

    def profiles(self) -> list[ShapeProfile]:
        return optimization_profiles(
            self.profile.max_length, self.profile.encoder_rows, self.seq_buckets, self.max_batch_tokens
        )


def build_engine(spec: BuildSpec) -> Path:
    """Build ``spec.out`` (+ sidecar) from ``spec.onnx``; returns the plan path."""
    trt = import_tensorrt()
    if not Path(spec.onnx).is_file():
        raise EngineBuildError(f"{spec.onnx}: no such ONNX file (run `tembed export` first)")
    gpu_name, capability = gpu_info()
    log.info(
        "TensorRT %s on %s (compute capability %s), precision %s", trt.__version__, gpu_name, capability, spec.precision
    )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implied (and deprecated) in TensorRT 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): weights of >2 GB models live in external data files next to it.
    if not parser.parse_from_file(str(spec.onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for err in errors:
            log.error("ONNX parser: %s", err)
        raise EngineBuildError(f"TensorRT could not parse {spec.onnx}: {len(errors)} error(s), first: {errors[:1]}")
    io = _log_network(trt, network, ENCODER_OUTPUTS[spec.profile.task])
    ids_dtype = io[INPUT_IDS]["dtype"]
    if ids_dtype != spec.profile.ids_dtype:
        raise EngineBuildError(
            f"{spec.onnx} takes {ids_dtype} ids but the profile serves {spec.profile.ids_dtype}: "
            "rewrite the graph with tembed.tensorrt_build.retype_ids() first"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_gb * 2**30))
    if spec.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif spec.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if spec.fp32_norm and spec.precision != "fp32":
        pinned = _pin_fp32(trt, network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("pinned %d normalisation layers (Pow/Reduce/Sqrt/Div) to fp32", pinned)

    profiles = spec.profiles()
    for i, p in enumerate(profiles):
        opt_profile = builder.create_optimization_profile()
        for name in ENCODER_INPUTS:
            opt_profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(opt_profile)
        log.info("profile %d: min %s opt %s max %s (batch, tokens)", i, p.min, p.opt, p.max)

    cache_blob = spec.timing_cache.read_bytes() if spec.timing_cache and spec.timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_blob)
    # ignore_mismatch=False: a cache written on another GPU or TensorRT version is refused, not trusted.
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not match this GPU/TensorRT; starting an empty one", spec.timing_cache)
        config.set_timing_cache(config.create_timing_cache(b""), False)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError("TensorRT failed to build the engine; the builder's errors are logged above")
    log.info("built %s in %.0fs (%.0f MB)", spec.out, time.perf_counter() - t0, plan.nbytes / 2**20)
    spec.out.parent.mkdir(parents=True, exist_ok=True)
    spec.out.write_bytes(memoryview(plan))
    if spec.timing_cache:
        spec.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        spec.timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    meta = engine_metadata(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        precision=spec.precision,
        profiles=profiles,
        io=io,
        onnx=str(spec.onnx),
    )
    sidecar_path(spec.out).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return spec.out


# --- ONNX helpers (CPU) --------------------------------------------------------------------------


def retype_ids(src: Path, dst: Path, dtype: str = "int32") -> Path:
    """Copy of the ONNX graph whose ``input_ids``/``attention_mask`` are ``dtype``, cast back right after.

    Weights are not loaded or rewritten: ``dst`` must sit in ``src``'s folder so the external data
    files of large models resolve from both.
    """
    import onnx

    src, dst = Path(src), Path(dst)
    if src.resolve().parent != dst.resolve().parent:
        raise ValueError("write the retyped graph next to the original so external weights resolve")
    elem = {"int32": onnx.TensorProto.INT32, "int64": onnx.TensorProto.INT64}[dtype]
    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    casts = []
    for inp in graph.input:
        if inp.name not in ENCODER_INPUTS or inp.type.tensor_type.elem_type == elem:
            continue
        original = inp.type.tensor_type.elem_type
        inner = f"{inp.name}_{onnx.TensorProto.DataType.Name(original).lower()}"
        for node in graph.node:
            node.input[:] = [inner if x == inp.name else x for x in node.input]
        casts.append(onnx.helper.make_node("Cast", [inp.name], [inner], to=original, name=f"cast_{inp.name}"))
        inp.type.tensor_type.elem_type = elem
    nodes = [*casts, *graph.node]  # casts ahead of every consumer: nodes stay topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(dst))
    return dst


def onnx_vocab_size(onnx_path: Path, default: int = 1000) -> int:
    """Rows of the embedding table the ids index (so sampled ids stay valid), without loading weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    feeds = set(ENCODER_INPUTS[:1]) | {
        n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] == ENCODER_INPUTS[0]
    }
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1] in feeds and node.input[0] in inits:
            return int(inits[node.input[0]].dims[0])
    return default


# --- validation (GPU) ---------------------------------------------------------------------------


@dataclass
class EngineReport:
    shape: tuple[int, int]
    profile: int
    max_abs_err: float
    min_cosine: float


def validate_engine(
    plan: Path, onnx_path: Path, profile: ModelProfile, *, shapes: list[tuple[int, int]] | None = None
) -> list[EngineReport]:
    """Run the engine and ONNX Runtime on the same fresh inputs; raise beyond the precision's tolerance."""
    trt = import_tensorrt()
    import onnxruntime as ort
    import torch

    from .onnx_export import sample_inputs

    meta = json.loads(sidecar_path(plan).read_text(encoding="utf-8"))
    _, capability = gpu_info()
    check_metadata(meta, tensorrt_version=trt.__version__, compute_capability=capability)
    tol = TOLERANCES[meta["precision"]]
    profiles = profiles_from_metadata(meta)
    output = ENCODER_OUTPUTS[profile.task]
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(Path(plan).read_bytes())
    if engine is None:
        raise EngineMismatchError(f"{plan}: TensorRT could not deserialize the engine (see its log above)")
    torch_ids = {"int32": torch.int32, "int64": torch.int64}[_dtype_name(trt, engine.get_tensor_dtype(INPUT_IDS))]
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    sess = ort.InferenceSession(str(onnx_path), providers=providers)
    np_ids = np.int32 if "int32" in sess.get_inputs()[0].type else np.int64
    vocab = onnx_vocab_size(onnx_path)
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    reports = []
    for i, (batch, seq) in enumerate(shapes or default_validation_shapes(profiles)):
        index = select_profile(profiles, batch, seq)
        ids, mask = sample_inputs(profile, batch, seq, vocab=vocab, seed=1000 + i)
        ref = sess.run([output], {INPUT_IDS: ids.astype(np_ids), ATTENTION_MASK: mask.astype(np_ids)})[0]
        feeds = {
            INPUT_IDS: torch.from_numpy(ids).to("cuda", torch_ids),
            ATTENTION_MASK: torch.from_numpy(mask).to("cuda", torch_ids),
        }
        torch.cuda.synchronize()
        context.set_optimization_profile_async(index, stream.cuda_stream)
        for name, tensor in feeds.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        out = torch.empty(tuple(context.get_tensor_shape(output)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(output, out.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineMismatchError(f"engine failed to run batch={batch}, seq={seq} on profile {index}")
        stream.synchronize()
        got = out.cpu().numpy()
        err = float(np.abs(got - ref).max())
        cos = float((got * ref).sum(-1).min())
        reports.append(EngineReport((batch, seq), index, err, cos))
        log.info("validate %s on profile %d: max|trt-onnx| = %.2e, min cosine = %.6f", (batch, seq), index, err, cos)
        if not np.isfinite(got).all() or err > tol.atol or cos < tol.min_cosine:
            raise EngineMismatchError(
                f"{meta['precision']} engine differs from ONNX Runtime at batch={batch}, seq={seq}: "
                f"max abs error {err:.3e} (limit {tol.atol:.0e}), min cosine {cos:.6f} (limit {tol.min_cosine})"
            )
    return reports


# --- `tembed engine` -----------------------------------------------------------------------------


def cmd_engine(args: argparse.Namespace) -> int:
    layout = Layout(args.repo, args.name)
    encoder_dir = layout.model_dir("encoder")
    if not layout.profile_file.exists():
        raise SystemExit(f"error: {layout.profile_file} not found: run `tembed export --backend tensorrt` first")
    profile = ModelProfile.load(layout.profile_file)
    if profile.task == TASK_EMBED and not layout.model_dir("postprocess").is_dir():
        # A Python-backend export finishes the vectors in its encoder (no postprocess step): a TensorRT
        # encoder in its place would break the ensemble.
        raise SystemExit(
            f"error: {args.repo} holds {args.name!r} for a Python-backend encoder (no postprocess model):"
            " export it with `tembed export --backend tensorrt` first"
        )
    onnx_path = args.onnx or layout.onnx_file
    out = args.out or layout.plan_file
    max_tokens = args.max_batch_tokens or None
    spec = BuildSpec(
        onnx=onnx_path,
        out=out,
        profile=profile,
        precision=check_precision(args.precision or default_precision(profile)),
        seq_buckets=tuple(args.seq_buckets),
        max_batch_tokens=max_tokens,
        fp32_norm=not args.no_fp32_norm,
        timing_cache=args.timing_cache,
        workspace_gb=args.workspace_gb,
    )
    profiles = spec.profiles()
    for i, p in enumerate(profiles):
        print(f"profile {i}: min {p.min} opt {p.opt} max {p.max}")
    if args.dry_run:
        return 0
    if profile.ids_dtype != "int64":
        spec.onnx = retype_ids(onnx_path, onnx_path.with_name(f"model.{profile.ids_dtype}.onnx"), profile.ids_dtype)
    build_engine(spec)
    if args.skip_validation:
        log.warning("engine validation skipped")
    else:
        reports = validate_engine(out, spec.onnx, profile, shapes=args.validation_shapes or None)
        log.info("validated on %d fresh shapes: min cosine %.6f", len(reports), min(r.min_cosine for r in reports))
    # The config lists the same profiles the engine was built with (Triton uses only profile 0 otherwise);
    # instance count and queue delay chosen at export are kept.
    config_path = encoder_dir / "config.pbtxt"
    old = parse(config_path.read_text(encoding="utf-8")) if config_path.exists() else None
    opts = ServingOptions(
        backend="tensorrt",
        seq_buckets=spec.seq_buckets,
        max_batch_tokens=max_tokens,
        gpu_instances=old.instance_group[0].count if old and old.instance_group else 1,
        max_queue_delay_us=old.dynamic_batching.max_queue_delay_microseconds if old else 2000,
    )
    config_path.write_text(render(encoder_config(profile, opts)), encoding="utf-8")
    if (encoder_dir.parent / profile.name / "config.pbtxt").exists():
        refresh_lanes(encoder_dir.parent, profile.name)  # the bulk lane's encoder: the same config
    print(f"engine {out} ({spec.precision}, {len(profiles)} profiles); config {encoder_dir / 'config.pbtxt'}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``tembed engine`` to the CLI's subparsers."""
    ap = subparsers.add_parser("engine", help="build a TensorRT engine from an exported encoder (GPU + TensorRT)")
    ap.add_argument("--repo", type=Path, default=Path("model_repository"), help="model repository written by export")
    ap.add_argument("--name", required=True, help="served model name (the profile is read from NAME-tokenizer)")
    ap.add_argument("--onnx", type=Path, help="default: REPO/NAME-encoder/1/model.onnx")
    ap.add_argument("--out", type=Path, help="default: REPO/NAME-encoder/1/model.plan")
    ap.add_argument("--precision", choices=PRECISIONS, help="default: bf16 for last-token models, else fp16")
    ap.add_argument("--seq-buckets", type=int, nargs="+", default=list(DEFAULT_SEQ_BUCKETS), metavar="N")
    ap.add_argument(
        "--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS, help="batch x tokens cap (0: none)"
    )
    ap.add_argument("--no-fp32-norm", action="store_true", help="let normalisation layers run in fp16/bf16")
    ap.add_argument("--timing-cache", type=Path, default=DEFAULT_TIMING_CACHE)
    ap.add_argument("--workspace-gb", type=float, default=8.0)
    ap.add_argument("--validation-shapes", type=parse_shape, nargs="*", metavar="BxS")
    ap.add_argument("--skip-validation", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the optimization profiles and stop")
    ap.set_defaults(func=cmd_engine)
    return ap
