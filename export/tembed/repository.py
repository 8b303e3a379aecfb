"""Lay out a Triton model repository for one embedding model, every config rendered from its profile.

For a profile named ``N`` the repository gets four models:

``N-tokenizer``   Python backend: texts and options in, bucketed ``input_ids``/``attention_mask`` out.
``N-encoder``     the pooled encoder: a Python-backend ONNX Runtime runner on CPU, the
                  ``onnxruntime_onnx`` / ``tensorrt_plan`` backends in the GPU containers, or a
                  Python-backend PyTorch runner on GPU (the path that needs no engine build).
``N-postprocess`` Python backend: Matryoshka truncation and re-normalisation.
``N``             the ensemble clients call: text in, ``[n, dim]`` float32 out.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .profile import ModelProfile
from .tensorrt_build import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_SEQ_BUCKETS, optimization_profiles

ENCODER_BACKENDS = ("python-onnx", "onnxruntime", "tensorrt", "pytorch")
TORCH_DTYPES = ("bfloat16", "float16", "float32")
# The pytorch backend's copy of the Hugging Face folder in the version folder (= torch_runner.HF_DIR,
# not imported: rendering configs must not need torch).
HF_DIR = "hf"
_DTYPES = {"int64": mc.TYPE_INT64, "int32": mc.TYPE_INT32}
_MODEL_PY = (
    '"""Triton Python model; the logic lives in {module}."""\n\nfrom {module} import TritonPythonModel  # noqa: F401\n'
)


@dataclass(frozen=True)
class ServingOptions:
    """How the encoder runs; what the model *is* lives in the profile."""

    backend: str = "python-onnx"
    encoder_instances: int = 1
    tokenizer_instances: int = 2
    intra_op_threads: int = 0  # 0: ONNX Runtime picks (all cores)
    # 0: a request never waits for company; batches still form while the encoder is busy (docs/BENCHMARKS.md).
    max_queue_delay_us: int = 0
    tensorrt_accelerator: bool = False  # onnxruntime backend: let its TensorRT EP build engines
    gpu_instances: int = 1
    # tensorrt backend: must equal what `tembed engine` built with (it rewrites this config to match).
    seq_buckets: tuple[int, ...] = DEFAULT_SEQ_BUCKETS
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS
    torch_dtype: str = "bfloat16"  # pytorch backend
    torch_device: str = "cuda"  # pytorch backend: "cpu" runs the same runner on KIND_CPU (tests, dry runs)

    def __post_init__(self) -> None:
        if self.backend not in ENCODER_BACKENDS:
            raise ValueError(f"backend must be one of {ENCODER_BACKENDS}, got {self.backend!r}")
        if self.torch_dtype not in TORCH_DTYPES:
            raise ValueError(f"torch_dtype must be one of {TORCH_DTYPES}, got {self.torch_dtype!r}")
        if self.torch_device not in ("cuda", "cpu"):
            raise ValueError(f"torch_device must be 'cuda' or 'cpu', got {self.torch_device!r}")


def model_names(name: str) -> dict[str, str]:
    return {
        "ensemble": name,
        "tokenizer": f"{name}-tokenizer",
        "encoder": f"{name}-encoder",
        "postprocess": f"{name}-postprocess",
    }


def _io(msg, name: str, dtype: int, dims: list[int], optional: bool = False):
    t = msg.add(name=name, data_type=dtype, dims=dims)
    if optional:
        t.optional = True
    return t


def _text_inputs(cfg: mc.ModelConfig) -> None:
    _io(cfg.input, "text", mc.TYPE_STRING, [-1])
    _io(cfg.input, "instruction", mc.TYPE_STRING, [1], optional=True)
    _io(cfg.input, "input_type", mc.TYPE_STRING, [1], optional=True)
    _io(cfg.input, "dimensions", mc.TYPE_INT32, [1], optional=True)


def tokenizer_config(p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
    ids = _DTYPES[p.ids_dtype]
    cfg = mc.ModelConfig(name=model_names(p.name)["tokenizer"], backend="python", max_batch_size=0)
    _text_inputs(cfg)
    _io(cfg.output, "input_ids", ids, [-1, -1])
    _io(cfg.output, "attention_mask", ids, [-1, -1])
    _io(cfg.output, "token_count", mc.TYPE_INT32, [-1])
    _io(cfg.output, "dimensions_checked", mc.TYPE_INT32, [1])
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=opts.tokenizer_instances)
    return cfg


def encoder_config(p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
    ids = _DTYPES[p.ids_dtype]
    cfg = mc.ModelConfig(name=model_names(p.name)["encoder"], max_batch_size=p.max_texts)
    _io(cfg.input, "input_ids", ids, [-1])
    _io(cfg.input, "attention_mask", ids, [-1])
    _io(cfg.output, "embedding", mc.TYPE_FP32, [p.dimension])
    # Requests are padded to length buckets by the tokenizer, so same-bucket requests merge here.
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    if opts.backend == "python-onnx":
        cfg.backend = "python"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=opts.encoder_instances)
        cfg.parameters["intra_op_threads"].string_value = str(opts.intra_op_threads)
        cfg.parameters["pad_token_id"].string_value = str(p.pad_token_id)
        cfg.parameters["padding_side"].string_value = p.padding_side
    elif opts.backend == "onnxruntime":
        # Without an accelerator the backend runs the CUDA execution provider on KIND_GPU instances.
        cfg.platform = "onnxruntime_onnx"
        cfg.default_model_filename = "model.onnx"
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=opts.gpu_instances)
        if opts.tensorrt_accelerator:
            acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            # FP16 is ORT-TensorRT's only reduced precision; Qwen3-style decoders overflow in it
            # (docs/GPU.md), so the accelerator is for encoder models or a `tembed engine` bf16 build.
            acc.parameters["precision_mode"] = "FP16"
            acc.parameters["max_workspace_size_bytes"] = str(4 << 30)
            # Engines are built on first use per shape; caching them keeps restarts from rebuilding.
            acc.parameters["trt_engine_cache_enable"] = "1"
            acc.parameters["trt_engine_cache_path"] = "/tmp/tembed-ort-trt-cache"
    elif opts.backend == "tensorrt":
        cfg.platform = "tensorrt_plan"
        cfg.default_model_filename = "model.plan"
        profiles = optimization_profiles(p.max_length, p.max_texts, opts.seq_buckets, opts.max_batch_tokens)
        # The backend computes the same bound (max over the listed profiles) and rejects a larger one.
        cfg.max_batch_size = max(pr.max[0] for pr in profiles)
        group = cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=opts.gpu_instances)
        # Unlisted, Triton uses profile 0 only; listed, it runs each batch on the admissible
        # profile nearest to opt, i.e. the one tuned for that sequence-length range.
        group.profile.extend(str(i) for i in range(len(profiles)))
    else:
        # Pooling and padding come from the profile.json written next to the weights.
        cfg.backend = "python"
        kind = mc.ModelInstanceGroup.KIND_GPU if opts.torch_device == "cuda" else mc.ModelInstanceGroup.KIND_CPU
        cfg.instance_group.add(kind=kind, count=opts.gpu_instances)
        cfg.parameters["dtype"].string_value = opts.torch_dtype
    return cfg


def postprocess_config(p: ModelProfile) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=model_names(p.name)["postprocess"], backend="python", max_batch_size=0)
    _io(cfg.input, "embedding", mc.TYPE_FP32, [-1, p.dimension])
    _io(cfg.input, "dimensions", mc.TYPE_INT32, [1])
    _io(cfg.output, "embedding", mc.TYPE_FP32, [-1, -1])
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
    return cfg


def ensemble_config(p: ModelProfile) -> mc.ModelConfig:
    names = model_names(p.name)
    cfg = mc.ModelConfig(name=names["ensemble"], platform="ensemble", max_batch_size=0)
    _text_inputs(cfg)
    _io(cfg.output, "embedding", mc.TYPE_FP32, [-1, -1])
    _io(cfg.output, "token_count", mc.TYPE_INT32, [-1])
    # What clients need to know without reading the profile: request limits and vector sizes.
    for key, value in {
        "max_texts": p.max_texts,
        "dimension": p.dimension,
        "min_dimension": p.min_dimension,
        "max_length": p.max_length,
        "model_type": p.model_type,
        "pooling": p.pooling,
        "instruction": "yes" if p.instruction_template else "no",
    }.items():
        cfg.parameters[key].string_value = str(value)
    steps = cfg.ensemble_scheduling.step
    tok = steps.add(model_name=names["tokenizer"], model_version=-1)
    for key in ("text", "instruction", "input_type", "dimensions"):
        tok.input_map[key] = key
    for key, value in {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "token_count": "token_count",
        "dimensions_checked": "dimensions_checked",
    }.items():
        tok.output_map[key] = value
    enc = steps.add(model_name=names["encoder"], model_version=-1)
    enc.input_map["input_ids"] = "input_ids"
    enc.input_map["attention_mask"] = "attention_mask"
    enc.output_map["embedding"] = "full_embedding"
    post = steps.add(model_name=names["postprocess"], model_version=-1)
    post.input_map["embedding"] = "full_embedding"
    post.input_map["dimensions"] = "dimensions_checked"
    post.output_map["embedding"] = "embedding"
    return cfg


def render(cfg: mc.ModelConfig) -> str:
    return "# Generated by tembed from profile.json; edit the profile or the export flags, not this file.\n" + (
        text_format.MessageToString(cfg)
    )


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def _write_model(root: Path, cfg: mc.ModelConfig, files: dict[str, Path | str]) -> Path:
    model_dir = root / cfg.name
    version = model_dir / "1"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(render(cfg), encoding="utf-8")
    for dest, src in files.items():
        target = version / dest
        if isinstance(src, Path) and src.is_dir():
            shutil.copytree(src, target, ignore=_HF_IGNORE)
        elif isinstance(src, Path):
            if src.resolve() != target.resolve():
                shutil.copy2(src, target)
        else:
            target.write_text(src, encoding="utf-8")
    return model_dir


# What the PyTorch runner never reads: other export formats and VCS metadata of a hub snapshot.
_HF_IGNORE = shutil.ignore_patterns(".git", ".cache", "onnx", "openvino", "*.onnx", "*.onnx_data", "*.plan")


def model_py(module: str) -> str:
    return _MODEL_PY.format(module=module)


def write_repository(
    p: ModelProfile, repo: Path, *, tokenizer_file: Path, encoder_file: Path | None, opts: ServingOptions
) -> dict[str, Path]:
    """Write (or replace) the four models of profile ``p`` under ``repo``."""
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    written = {}
    tok_dir = _write_model(
        repo,
        tokenizer_config(p, opts),
        {"model.py": model_py("tembed.triton.tokenizer"), "tokenizer.json": Path(tokenizer_file)},
    )
    p.save(tok_dir / "1")
    written["tokenizer"] = tok_dir
    enc_files: dict[str, Path | str] = {}
    if opts.backend == "python-onnx":
        enc_files["model.py"] = model_py("tembed.triton.onnx_encoder")
    if opts.backend == "pytorch":
        # encoder_file is the Hugging Face folder; its copy makes the repository self-contained.
        enc_files["model.py"] = model_py("tembed.triton.torch_encoder")
        if encoder_file is not None:
            enc_files[HF_DIR] = Path(encoder_file)
    elif encoder_file is not None:
        enc_files["model.plan" if opts.backend == "tensorrt" else "model.onnx"] = Path(encoder_file)
    written["encoder"] = _write_model(repo, encoder_config(p, opts), enc_files)
    if opts.backend == "pytorch":
        p.save(written["encoder"] / "1")  # pooling and padding side for the runner
    written["postprocess"] = _write_model(
        repo, postprocess_config(p), {"model.py": model_py("tembed.triton.postprocess")}
    )
    written["ensemble"] = _write_model(repo, ensemble_config(p), {})
    return written
