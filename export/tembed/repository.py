"""Lay out a Triton model repository for one served model, every config rendered from its profile.

The seams:

- **Backends**: one :class:`EncoderBackend` object per encoder backend in :data:`BACKENDS` says how
  its encoder config looks and which files its version folder holds. The Python-backend ones name
  a runner of :mod:`tembed_serving.runners`.
- **Tasks**: one :class:`Task` per task in :data:`TASKS` builds the models around the encoder
  (embeddings: tokenizer, postprocess after a Triton-native encoder, and the ensemble; rerank: pair tokenizer and the ensemble).

For a profile named ``N`` the embedding task writes these models (names in
:func:`tembed_serving.contract.model_names`):

``N-tokenizer``   Python backend: texts and options in, bucketed ``input_ids``/``attention_mask`` out.
``N-encoder``     the pooled encoder, as the chosen backend runs it.
``N-postprocess`` Python backend: windows pooled per text, Matryoshka ``dimensions``, compact types;
                  only after a Triton-native encoder: a Python-backend encoder does this itself
                  (:func:`finishes_vectors`), one stub hop fewer.
``N``             the ensemble clients call: text in, ``[n, dim]`` float32 out.

Under the one-step layout (``profile.layout``, ``tembed export --layout one-step``; ``python-onnx`` on CPU
or ``pytorch``, :data:`ONE_STEP_BACKENDS`) ``N`` is instead one batched Python model that tokenizes and runs
the encoder's runner itself (:func:`one_step_config`, ``tembed_serving.triton.onestep``), one request per batch
row; ``N-tokenizer`` stays beside it for ``tokenize``, and there is no ``N-encoder``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tembed_serving import contract as c
from tembed_serving.contract import Layout, model_names
from tembed_serving.profile import ModelProfile

from .trt_profiles import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_SEQ_BUCKETS, optimization_profiles

_DTYPES = {"int64": mc.TYPE_INT64, "int32": mc.TYPE_INT32}
_MODEL_PY = (
    '"""Triton Python model; the logic lives in {module}."""\n\nfrom {module} import TritonPythonModel  # noqa: F401\n'
)
# What the PyTorch runner never reads: other export formats and VCS metadata of a hub snapshot.
_HF_IGNORE = shutil.ignore_patterns(".git", ".cache", "onnx", "openvino", "*.onnx", "*.onnx_data", "*.plan")


@dataclass(frozen=True)
class ServingOptions:
    """How the encoder runs; what the model *is* lives in the profile."""

    backend: str = "python-onnx"
    encoder_instances: int = 1
    tokenizer_instances: int = 2
    intra_op_threads: int = 0  # 0: ONNX Runtime picks (all cores)
    # A lone request waits at most this for company; batches still form while the encoder is busy. Not 0:
    # with 0 (and no queue policy) tritonserver 2.51's batcher thread spins while the encoder works,
    # 10.7 s of CPU in a 27.7 s load on 2 cores (16.9-19.0 s with 100-2000 us: docs/BENCHMARKS.md).
    max_queue_delay_us: int = 100
    # False: every batch size is a preferred one, so a request that reaches an idle model runs at once
    # instead of waiting max_queue_delay_us for company (and for the batcher thread's wake-up on a loaded
    # machine); while the model is busy requests still gather into the next batch. The delay stays non-zero
    # (no spinning batcher). None: the layout's default (wait_when_idle_default). bench/experiments/one_step.py
    # measures both.
    wait_when_idle: bool | None = None
    tensorrt_accelerator: bool = False  # onnxruntime backend: let its TensorRT EP build engines
    gpu_instances: int = 1
    # tensorrt backend: must equal what `tembed engine` built with (it rewrites this config to match).
    seq_buckets: tuple[int, ...] = DEFAULT_SEQ_BUCKETS
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS
    torch_dtype: str = c.TORCH_DTYPES[0]  # pytorch backend
    torch_device: str = "cuda"  # pytorch backend: "cpu" runs the same runner on KIND_CPU (tests, dry runs)
    # pytorch backend on a GPU: a lone text of up to this many tokens (a query at c=1) replays a CUDA graph of
    # its length, captured at first use, instead of launching each kernel (runners.torch.CudaGraphs); 0: off.
    torch_cuda_graph_tokens: int = 0
    # The encoder's queue policy, off by default (0): in tritonserver 2.51 any ``default_queue_policy``
    # (a timeout, a size, or both) makes the dynamic batcher sit idle ~0.5 s now and then while requests
    # wait: 8 concurrent short queries had P99 0.6-1.1 s with it, 0.10 s without (docs/RELIABILITY.md).
    # Without it a request queued at the encoder is computed even after its caller's deadline passed
    # (tritonserver 2.51; tests/test_reliability.py pins the gap): max_in_flight bounds the backlog.
    # queue_timeout_s: longest wait before a request is refused (UNAVAILABLE); queue_tokens sizes a
    # bounded queue (queue_size; RESOURCE_EXHAUSTED past it).
    queue_timeout_s: float = 0.0
    queue_tokens: int = 0
    # Priority lanes (contract.PRIORITY) as models of their own (write_lanes): bulk requests (low) go to an
    # ensemble and an encoder of their own, over the same weights (a symlinked version folder), so a query
    # (high, the default) never queues behind them; the two encoders share the cores. Not Triton's
    # priority_levels: tritonserver 2.51's batcher stalls with them as with a queue policy (2026-12-02,
    # bench/experiments/batcher_stall.py: 33-51 of 400 short queries over 300 ms against 2-4). Costs a
    # second encoder process (its memory; on GPU its own copy of the weights).
    priority_lanes: bool = True
    # One-step layout: requests (batch rows) the dynamic batcher merges into one execution at most. A
    # request is up to max_texts texts (max_rows windows); the runner cuts the merged rows into ONNX
    # Runtime calls of max_batch_tokens, so this bounds how many callers wait on one execution, not memory.
    max_batch_requests: int = 16

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {self.backend!r}")
        if self.torch_dtype not in c.TORCH_DTYPES:
            raise ValueError(f"torch_dtype must be one of {c.TORCH_DTYPES}, got {self.torch_dtype!r}")
        if self.torch_cuda_graph_tokens < 0:
            raise ValueError(f"torch_cuda_graph_tokens must be >= 0, got {self.torch_cuda_graph_tokens}")
        if self.torch_device not in ("cuda", "cpu"):
            raise ValueError(f"torch_device must be 'cuda' or 'cpu', got {self.torch_device!r}")


# --- encoder backends ----------------------------------------------------------------------------


class EncoderBackend:
    """How one backend's encoder model is configured and what its version folder holds."""

    name: str
    #: the exported graph this backend's encoder is built from ("onnx"), or None (the HF folder)
    graph: str | None = "onnx"
    #: quantize int8 applies to the ONNX graph it serves
    quantizable: bool = False
    #: a Python-backend model of tembed_serving (it reads profile.json)
    runs_in_python: bool = False

    def configure(self, cfg: mc.ModelConfig, p: ModelProfile, opts: ServingOptions) -> None:
        raise NotImplementedError

    def files(self, source: Path | None) -> dict[str, Path | str]:
        """Files of the version folder: name -> source path (file or folder) or text."""
        return {}


class PythonRunnerBackend(EncoderBackend):
    """The encoder model of :mod:`tembed_serving.triton.encoder`, running one of its runners."""

    runner: str
    runs_in_python = True

    def configure(self, cfg: mc.ModelConfig, p: ModelProfile, opts: ServingOptions) -> None:
        cfg.backend = "python"
        cfg.parameters[c.PARAM_RUNNER].string_value = self.runner

    def files(self, source: Path | None) -> dict[str, Path | str]:
        return {"model.py": model_py("tembed_serving.triton.encoder")}


class PythonOnnxBackend(PythonRunnerBackend):
    name, runner, quantizable = "python-onnx", "onnxruntime", True

    def configure(self, cfg: mc.ModelConfig, p: ModelProfile, opts: ServingOptions) -> None:
        super().configure(cfg, p, opts)
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=opts.encoder_instances)
        cfg.parameters["intra_op_threads"].string_value = str(opts.intra_op_threads)

    def files(self, source: Path | None) -> dict[str, Path | str]:
        return {**super().files(source), **({c.ONNX_FILE: source} if source is not None else {})}


class PythonOpenvinoBackend(PythonOnnxBackend):
    """The same ONNX graph run by OpenVINO in the Python backend (``serving[openvino]``)."""

    name, runner = "python-openvino", "openvino"


class PytorchBackend(PythonRunnerBackend):
    name, runner, graph = "pytorch", "torch", None

    def configure(self, cfg: mc.ModelConfig, p: ModelProfile, opts: ServingOptions) -> None:
        super().configure(cfg, p, opts)
        kind = mc.ModelInstanceGroup.KIND_GPU if opts.torch_device == "cuda" else mc.ModelInstanceGroup.KIND_CPU
        cfg.instance_group.add(kind=kind, count=opts.gpu_instances)
        cfg.parameters[c.PARAM_DTYPE].string_value = opts.torch_dtype
        if opts.torch_cuda_graph_tokens > 0:
            cfg.parameters[c.PARAM_CUDA_GRAPH_TOKENS].string_value = str(opts.torch_cuda_graph_tokens)

    def files(self, source: Path | None) -> dict[str, Path | str]:
        # source is the Hugging Face folder; its copy makes the repository self-contained.
        return {**super().files(source), **({c.HF_DIR: source} if source is not None else {})}


class OnnxruntimeBackend(EncoderBackend):
    name, quantizable = "onnxruntime", True

    def configure(self, cfg: mc.ModelConfig, p: ModelProfile, opts: ServingOptions) -> None:
        # Without an accelerator the backend runs the CUDA execution provider on KIND_GPU instances.
        cfg.platform = "onnxruntime_onnx"
        cfg.default_model_filename = c.ONNX_FILE
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

    def files(self, source: Path | None) -> dict[str, Path | str]:
        return {c.ONNX_FILE: source} if source is not None else {}


class TensorrtBackend(EncoderBackend):
    name = "tensorrt"

    def configure(self, cfg: mc.ModelConfig, p: ModelProfile, opts: ServingOptions) -> None:
        cfg.platform = "tensorrt_plan"
        cfg.default_model_filename = c.PLAN_FILE
        profiles = optimization_profiles(p.max_length, p.encoder_rows, opts.seq_buckets, opts.max_batch_tokens)
        # The backend computes the same bound (max over the listed profiles) and rejects a larger one.
        cfg.max_batch_size = max(pr.max[0] for pr in profiles)
        group = cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=opts.gpu_instances)
        # Unlisted, Triton uses profile 0 only; listed, it runs each batch on the admissible
        # profile nearest to opt, i.e. the one tuned for that sequence-length range.
        group.profile.extend(str(i) for i in range(len(profiles)))

    def files(self, source: Path | None) -> dict[str, Path | str]:
        # The ONNX graph waits next to the engine slot until `tembed engine` builds model.plan.
        return {c.ONNX_FILE: source} if source is not None else {}


BACKENDS: dict[str, EncoderBackend] = {
    b.name: b
    for b in (PythonOnnxBackend(), PythonOpenvinoBackend(), OnnxruntimeBackend(), TensorrtBackend(), PytorchBackend())
}
ENCODER_BACKENDS = tuple(BACKENDS)


# --- configs ---------------------------------------------------------------------------------------


def _io(msg, name: str, dtype: int, dims: list[int], optional: bool = False):
    t = msg.add(name=name, data_type=dtype, dims=dims)
    if optional:
        t.optional = True
    return t


# An option's Triton datatype (contract.Option.datatype) as model_config's enum.
_OPTION_TYPES = {"BYTES": mc.TYPE_STRING, "INT32": mc.TYPE_INT32}


def _option_inputs(cfg: mc.ModelConfig, task: str) -> None:
    """The task's request options (``contract.options_for``): one optional input of one value each."""
    for option in c.input_options(task):
        _io(cfg.input, option.name, _OPTION_TYPES[option.datatype], [1], optional=True)


def queue_size(p: ModelProfile, opts: ServingOptions) -> int:
    """Requests the encoder may hold waiting: ``queue_tokens`` worth of full-length texts, at least 16
    (e5-small, 512 tokens: 128 requests; a 32k-token model: 16)."""
    return max(16, opts.queue_tokens // p.max_length)


def finishes_vectors(p: ModelProfile, opts: ServingOptions) -> bool:
    """Whether the encoder finishes the vectors itself (``vectors.finish_request``) and the embedding
    ensemble has no postprocess step: true where the encoder runs in the Python backend anyway."""
    return p.task == c.TASK_EMBED and BACKENDS[opts.backend].runs_in_python


def serves_m3(p: ModelProfile, opts: ServingOptions) -> bool:
    """bge-m3's sparse and multi-vector outputs beside the dense one: the ONNX Runtime runner finishes
    them (``tembed_serving.m3``); other backends serve the dense vector (the export says so)."""
    return p.multi_output and finishes_vectors(p, opts) and opts.backend == PythonOnnxBackend.name


def _m3_outputs(msg, p: ModelProfile, batched: bool) -> None:
    """bge-m3's tensors (``contract.M3_TENSORS``): pairs and vectors of all texts, and each text's count."""
    lead = [] if batched else [-1]
    for name, dtype, width in (
        (c.SPARSE_IDS, mc.TYPE_INT32, 1),
        (c.SPARSE_WEIGHTS, mc.TYPE_FP32, 1),
        (c.SPARSE_COUNT, mc.TYPE_INT32, 1),
        (c.MULTI_VECTORS, mc.TYPE_FP32, p.dimension),
        (c.MULTI_VECTOR_COUNT, mc.TYPE_INT32, 1),
    ):
        _io(msg, name, dtype, [*lead, width])


def encoder_config(p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
    ids = _DTYPES[p.ids_dtype]
    # A request's rows are its texts, or under long_text chunk every window of them (profile.max_rows):
    # Triton refuses a request over max_batch_size, and the dynamic batcher merges requests only up to it.
    cfg = mc.ModelConfig(name=model_names(p.name)["encoder"], max_batch_size=p.encoder_rows)
    for name in c.ENCODER_INPUTS:
        tensor = _io(cfg.input, name, ids, [-1])
        # A Python encoder takes requests of any widths together (the runner pads and regroups them by
        # length, batching.plan), so a request of another length bucket need not close the batch being
        # formed: tritonserver 2.51's batcher thread spins while the encoder works when it does (1.50 s of
        # CPU against 0.09 s under the same mixed load, 2026-12-02; docs/RELIABILITY.md).
        tensor.allow_ragged_batch = BACKENDS[opts.backend].runs_in_python
    if finishes_vectors(p, opts):
        # The request's options, one copy per row (every input of a batched model starts with its
        # rows); optional: called directly with ids alone, the encoder answers its rows as they are.
        _io(cfg.input, c.ROW_OPTIONS, mc.TYPE_INT32, [c.ROW_OPTION_COLUMNS], optional=True)
        _io(cfg.input, c.ROW_WEIGHT_COLUMN, mc.TYPE_FP32, [1], optional=True)
        # One vector per text (not per row) and as many columns as the request asked for.
        _io(cfg.output, c.EMBEDDING, mc.TYPE_FP32, [-1])
        _io(cfg.output, c.EMBEDDING_PACKED, mc.TYPE_UINT8, [-1])
        _io(cfg.output, c.ENCODE_NS, mc.TYPE_INT64, [1])  # [1, 1]: the batch's run, in every response
        if serves_m3(p, opts):
            _io(cfg.input, c.ROW_OUTPUTS, mc.TYPE_INT32, [1], optional=True)
            _m3_outputs(cfg.output, p, batched=True)
    else:
        out = _io(cfg.output, c.ENCODER_OUTPUTS[p.task], mc.TYPE_FP32, [p.dimension])
        if p.task == c.TASK_RERANK:
            out.reshape.shape[:] = []  # one score per pair: [batch, 1] in the graph, [batch] to the ensemble
    # Requests are padded to length buckets by the tokenizer, so same-bucket requests merge here.
    _batcher(cfg, p, opts)
    BACKENDS[opts.backend].configure(cfg, p, opts)
    return cfg


def wait_when_idle_default(p: ModelProfile) -> bool:
    """Whether a request reaching an idle model waits for company unless told (``ServingOptions.wait_when_idle``):
    the two-step encoder waits, as measured when its delay was chosen; the one-step model does not (its c=1 added
    P50 2.65 / 2.08 ms against 3.40 / 3.25 ms waiting, two interleaved runs on 2 loaded cores; c=8 P99 within
    noise: docs/BENCHMARKS.md "One Python step per query")."""
    return p.layout != c.LAYOUT_ONE_STEP


def _batcher(cfg: mc.ModelConfig, p: ModelProfile, opts: ServingOptions) -> None:
    """The dynamic batcher of the model that runs the encoder (the encoder, or the one-step model)."""
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    wait = wait_when_idle_default(p) if opts.wait_when_idle is None else opts.wait_when_idle
    if not wait:
        cfg.dynamic_batching.preferred_batch_size[:] = range(1, cfg.max_batch_size + 1)
    if opts.queue_timeout_s > 0 or opts.queue_tokens > 0:  # opt-in: see ServingOptions.queue_timeout_s
        # A bounded queue, and a wait after which a request is refused instead of being computed for a
        # caller that has likely gone (UNAVAILABLE; the client retries with backoff).
        policy = cfg.dynamic_batching.default_queue_policy
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = int(opts.queue_timeout_s * 1e6)
        policy.allow_timeout_override = True
        policy.max_queue_size = queue_size(p, opts) if opts.queue_tokens > 0 else 0


def tokenizer_model(p: ModelProfile, opts: ServingOptions, inputs) -> mc.ModelConfig:
    """A task's tokenizer model: its ``inputs(cfg)``, then the encoder's token tensors and counts."""
    ids = _DTYPES[p.ids_dtype]
    cfg = mc.ModelConfig(name=model_names(p.name)["tokenizer"], backend="python", max_batch_size=0)
    inputs(cfg)
    for name in c.ENCODER_INPUTS:
        _io(cfg.output, name, ids, [-1, -1])
    _io(cfg.output, c.TOKEN_COUNT, mc.TYPE_INT32, [-1])
    cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=opts.tokenizer_instances)
    return cfg


@dataclass
class ModelSpec:
    """One model to write: its role, config, version-folder files, and whether profile.json goes there."""

    role: str
    config: mc.ModelConfig
    files: dict[str, Path | str]
    profile: bool = False


class Task:
    """The models a task puts around the encoder, and the ensemble that chains them."""

    name: str

    def models(self, p: ModelProfile, opts: ServingOptions, tokenizer_file: Path) -> list[ModelSpec]:
        """Every model of the task but the encoder (which the backend writes)."""
        raise NotImplementedError


class EmbedTask(Task):
    name = c.TASK_EMBED

    @staticmethod
    def _text_inputs(cfg: mc.ModelConfig) -> None:
        _io(cfg.input, c.TEXT, mc.TYPE_STRING, [-1])
        _option_inputs(cfg, c.TASK_EMBED)

    # The tokenizer's outputs the postprocess step reads, besides the encoder's rows.
    _POST_INPUTS = (c.DIMENSIONS_CHECKED, c.EMBEDDING_TYPE_CHECKED, c.ROW_TEXT, c.ROW_WEIGHT)
    # The same facts per row, for an encoder that finishes the vectors itself.
    _ROW_INPUTS = (c.ROW_OPTIONS, c.ROW_WEIGHT_COLUMN)

    def _finish_inputs(self, p: ModelProfile, opts: ServingOptions) -> tuple[str, ...]:
        return self._ROW_INPUTS if finishes_vectors(p, opts) else self._POST_INPUTS

    def tokenizer_config(self, p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
        cfg = tokenizer_model(p, opts, self._text_inputs)
        _io(cfg.output, c.TOKEN_COUNT_ORIGINAL, mc.TYPE_INT32, [-1])
        _io(cfg.output, c.TOKENIZE_NS, mc.TYPE_INT64, [1])
        if finishes_vectors(p, opts):
            _io(cfg.output, c.ROW_OPTIONS, mc.TYPE_INT32, [-1, c.ROW_OPTION_COLUMNS])
            _io(cfg.output, c.ROW_WEIGHT_COLUMN, mc.TYPE_FP32, [-1, 1])
            if serves_m3(p, opts):
                _io(cfg.output, c.ROW_OUTPUTS, mc.TYPE_INT32, [-1, 1])
        else:
            self._post_tensors(cfg.output)
        return cfg

    @staticmethod
    def _post_tensors(msg) -> None:
        _io(msg, c.DIMENSIONS_CHECKED, mc.TYPE_INT32, [1])
        _io(msg, c.EMBEDDING_TYPE_CHECKED, mc.TYPE_INT32, [1])
        _io(msg, c.ROW_TEXT, mc.TYPE_INT32, [-1])
        _io(msg, c.ROW_WEIGHT, mc.TYPE_FP32, [-1])

    @staticmethod
    def _vector_outputs(msg) -> None:
        _io(msg, c.EMBEDDING, mc.TYPE_FP32, [-1, -1])
        _io(msg, c.EMBEDDING_PACKED, mc.TYPE_UINT8, [-1, -1])

    def postprocess_config(self, p: ModelProfile) -> mc.ModelConfig:
        cfg = mc.ModelConfig(name=model_names(p.name)["postprocess"], backend="python", max_batch_size=0)
        _io(cfg.input, c.FULL_EMBEDDING, mc.TYPE_FP32, [-1, p.dimension])
        self._post_tensors(cfg.input)
        self._vector_outputs(cfg.output)
        cfg.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)
        return cfg

    def ensemble_config(self, p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
        names = model_names(p.name)
        cfg = mc.ModelConfig(name=names["ensemble"], platform="ensemble", max_batch_size=0)
        self._text_inputs(cfg)
        self._vector_outputs(cfg.output)
        _io(cfg.output, c.TOKEN_COUNT, mc.TYPE_INT32, [-1])
        _io(cfg.output, c.TOKEN_COUNT_ORIGINAL, mc.TYPE_INT32, [-1])
        _io(cfg.output, c.TOKENIZE_NS, mc.TYPE_INT64, [1])
        if finishes_vectors(p, opts):
            _io(cfg.output, c.ENCODE_NS, mc.TYPE_INT64, [-1, 1])
        m3 = serves_m3(p, opts)
        if m3:
            _m3_outputs(cfg.output, p, batched=False)
        self._client_parameters(cfg, p, m3)
        steps = cfg.ensemble_scheduling.step
        tok = steps.add(model_name=names["tokenizer"], model_version=-1)
        for t in cfg.input:
            tok.input_map[t.name] = t.name
        finish_inputs = self._finish_inputs(p, opts) + ((c.ROW_OUTPUTS,) if m3 else ())
        for key in (*c.ENCODER_INPUTS, c.TOKEN_COUNT, c.TOKEN_COUNT_ORIGINAL, c.TOKENIZE_NS, *finish_inputs):
            tok.output_map[key] = key
        enc = steps.add(model_name=names["encoder"], model_version=-1)
        for key in c.ENCODER_INPUTS:
            enc.input_map[key] = key
        if finishes_vectors(p, opts):  # tokenizer -> encoder: the encoder's outputs are the ensemble's
            for key in finish_inputs:
                enc.input_map[key] = key
            for key in (c.EMBEDDING, c.EMBEDDING_PACKED, c.ENCODE_NS, *(c.M3_TENSORS if m3 else ())):
                enc.output_map[key] = key
            return cfg
        enc.output_map[c.ENCODER_OUTPUT] = c.FULL_EMBEDDING
        post = steps.add(model_name=names["postprocess"], model_version=-1)
        for key in (c.FULL_EMBEDDING, *self._POST_INPUTS):
            post.input_map[key] = key
        for key in (c.EMBEDDING, c.EMBEDDING_PACKED):
            post.output_map[key] = key
        return cfg

    @staticmethod
    def _client_parameters(cfg: mc.ModelConfig, p: ModelProfile, m3: bool) -> None:
        """What clients need to know without reading the profile: request limits and vector sizes."""
        names = model_names(p.name)
        for key, value in {
            c.PARAM_TASK: p.task,
            c.PARAM_MAX_TEXTS: p.max_texts,
            c.PARAM_DIMENSION: p.dimension,
            c.PARAM_MIN_DIMENSION: p.min_dimension,
            c.PARAM_MAX_LENGTH: p.max_length,
            c.PARAM_MODEL_TYPE: p.model_type,
            c.PARAM_POOLING: p.pooling,
            c.PARAM_INSTRUCTION: "yes" if p.instruction_template else "no",
            c.PARAM_MAX_TEXT_BYTES: p.max_text_bytes,
            c.PARAM_MAX_REQUEST_BYTES: p.max_request_bytes,
            c.PARAM_MAX_WINDOWS: p.max_windows,
            c.PARAM_MAX_ROWS: p.max_rows,
            # tokenize: the tokenizer model, called directly, answers with the ids the encoder gets.
            c.PARAM_TOKENIZER: names["tokenizer"],
            c.PARAM_TOKENIZER_OUTPUTS: ",".join(c.ENCODER_INPUTS),
            c.PARAM_OUTPUTS: ",".join(p.outputs if m3 else p.outputs[:1]),
            c.PARAM_LAYOUT: p.layout,
        }.items():
            cfg.parameters[key].string_value = str(value)

    def one_step_config(self, p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
        """The one-step model (``tembed_serving.triton.onestep``): the ensemble's name, inputs, outputs and
        parameters, as one batched Python model whose batch row is one request (``TEXT`` [1, n], each
        option [1, 1], ``EMBEDDING`` [1, n, d]); its runner and instances are the encoder backend's."""
        cfg = mc.ModelConfig(name=model_names(p.name)["ensemble"], max_batch_size=opts.max_batch_requests)
        self._text_inputs(cfg)
        # Requests of any number of texts merge (an option is one value: its shape never differs).
        cfg.input[0].allow_ragged_batch = True
        self._vector_outputs(cfg.output)
        _io(cfg.output, c.TOKEN_COUNT, mc.TYPE_INT32, [-1])
        _io(cfg.output, c.TOKEN_COUNT_ORIGINAL, mc.TYPE_INT32, [-1])
        _io(cfg.output, c.TOKENIZE_NS, mc.TYPE_INT64, [1])  # the server's own timings, as the ensemble's
        _io(cfg.output, c.ENCODE_NS, mc.TYPE_INT64, [-1, 1])
        self._client_parameters(cfg, p, m3=False)
        _batcher(cfg, p, opts)
        BACKENDS[opts.backend].configure(cfg, p, opts)
        return cfg

    def one_step_models(
        self, p: ModelProfile, opts: ServingOptions, tokenizer_file: Path, encoder_file: Path | None
    ) -> list[ModelSpec]:
        """The one-step layout's models: the tokenizer (for ``tokenize``: clients call it directly) and the
        one-step model, whose version folder holds the tokenizer, the graph and the profile."""
        tok_files = {"model.py": model_py("tembed_serving.triton.tokenizer"), c.TOKENIZER_FILE: Path(tokenizer_file)}
        files = {
            **BACKENDS[opts.backend].files(encoder_file),
            "model.py": model_py("tembed_serving.triton.onestep"),
            c.TOKENIZER_FILE: Path(tokenizer_file),
        }
        return [
            ModelSpec("tokenizer", self.tokenizer_config(p, opts), tok_files, profile=True),
            ModelSpec("ensemble", self.one_step_config(p, opts), files, profile=True),
        ]

    def models(self, p: ModelProfile, opts: ServingOptions, tokenizer_file: Path) -> list[ModelSpec]:
        tok_files = {"model.py": model_py("tembed_serving.triton.tokenizer"), c.TOKENIZER_FILE: Path(tokenizer_file)}
        post = ModelSpec(
            "postprocess",
            self.postprocess_config(p),
            {"model.py": model_py("tembed_serving.triton.postprocess")},
            profile=True,
        )
        return [
            ModelSpec("tokenizer", self.tokenizer_config(p, opts), tok_files, profile=True),
            *([] if finishes_vectors(p, opts) else [post]),
            ModelSpec("ensemble", self.ensemble_config(p, opts), {}),
        ]


class RerankTask(Task):
    """query + documents -> one score per document: pair tokenizer, encoder (score head), ensemble."""

    name = c.TASK_RERANK

    @staticmethod
    def _pair_inputs(cfg: mc.ModelConfig) -> None:
        _io(cfg.input, c.QUERY, mc.TYPE_STRING, [1])
        _io(cfg.input, c.DOCUMENTS, mc.TYPE_STRING, [-1])
        _option_inputs(cfg, c.TASK_RERANK)

    def tokenizer_config(self, p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
        cfg = tokenizer_model(p, opts, self._pair_inputs)
        _io(cfg.output, c.DOCUMENT_INDEX, mc.TYPE_INT32, [-1])  # long_text chunk: each row's document
        return cfg

    def ensemble_config(self, p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
        names = model_names(p.name)
        cfg = mc.ModelConfig(name=names["ensemble"], platform="ensemble", max_batch_size=0)
        self._pair_inputs(cfg)
        _io(cfg.output, c.SCORE, mc.TYPE_FP32, [-1])
        _io(cfg.output, c.TOKEN_COUNT, mc.TYPE_INT32, [-1])
        _io(cfg.output, c.DOCUMENT_INDEX, mc.TYPE_INT32, [-1])
        for key, value in {
            c.PARAM_TASK: p.task,
            c.PARAM_MAX_TEXTS: p.max_texts,
            c.PARAM_DIMENSION: p.dimension,
            c.PARAM_MAX_LENGTH: p.max_length,
            c.PARAM_MODEL_TYPE: p.model_type,
            c.PARAM_INSTRUCTION: "yes" if p.takes_instruction else "no",
            c.PARAM_MAX_TEXT_BYTES: p.max_text_bytes,
            c.PARAM_MAX_REQUEST_BYTES: p.max_request_bytes,
            c.PARAM_MAX_WINDOWS: p.max_windows,  # long_text chunk: windows per document, per request
            c.PARAM_MAX_ROWS: p.max_rows,
        }.items():
            cfg.parameters[key].string_value = str(value)
        steps = cfg.ensemble_scheduling.step
        tok = steps.add(model_name=names["tokenizer"], model_version=-1)
        for t in cfg.input:
            tok.input_map[t.name] = t.name
        for key in (*c.ENCODER_INPUTS, c.TOKEN_COUNT, c.DOCUMENT_INDEX):
            tok.output_map[key] = key
        enc = steps.add(model_name=names["encoder"], model_version=-1)
        for key in c.ENCODER_INPUTS:
            enc.input_map[key] = key
        enc.output_map[c.SCORE] = c.SCORE
        return cfg

    def models(self, p: ModelProfile, opts: ServingOptions, tokenizer_file: Path) -> list[ModelSpec]:
        tok_files = {
            "model.py": model_py("tembed_serving.triton.pair_tokenizer"),
            c.TOKENIZER_FILE: Path(tokenizer_file),
        }
        return [
            ModelSpec("tokenizer", self.tokenizer_config(p, opts), tok_files, profile=True),
            ModelSpec("ensemble", self.ensemble_config(p, opts), {}),
        ]


TASKS: dict[str, Task] = {t.name: t for t in (EmbedTask(), RerankTask())}


# Kept as functions: tests and `tembed engine` render single configs.
def tokenizer_config(p: ModelProfile, opts: ServingOptions) -> mc.ModelConfig:
    return EmbedTask().tokenizer_config(p, opts)


def postprocess_config(p: ModelProfile) -> mc.ModelConfig:
    return EmbedTask().postprocess_config(p)


def ensemble_config(p: ModelProfile, opts: ServingOptions | None = None) -> mc.ModelConfig:
    return EmbedTask().ensemble_config(p, opts or ServingOptions())


def render(cfg: mc.ModelConfig) -> str:
    return "# Generated by tembed from profile.json; edit the profile or the export flags, not this file.\n" + (
        text_format.MessageToString(cfg)
    )


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def model_py(module: str) -> str:
    return _MODEL_PY.format(module=module)


def _write_model(root: Path, cfg: mc.ModelConfig, files: dict[str, Path | str]) -> Path:
    model_dir = root / cfg.name
    version = model_dir / c.VERSION
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


def write_repository(
    p: ModelProfile, repo: Path, *, tokenizer_file: Path, encoder_file: Path | None, opts: ServingOptions
) -> dict[str, Path]:
    """Write (or replace) the models of profile ``p`` under ``repo``; role -> model folder.

    ``encoder_file`` is what the backend serves (an ONNX graph, or the Hugging Face folder for
    ``pytorch``); None leaves the slot empty for the exporter to fill.
    """
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    backend = BACKENDS[opts.backend]
    if p.layout == c.LAYOUT_ONE_STEP:
        check_one_step(p, opts)
        specs = EmbedTask().one_step_models(p, opts, tokenizer_file, encoder_file)
    else:
        # The runner reads pooling, padding side and pad id from the profile next to it.
        encoder = ModelSpec("encoder", encoder_config(p, opts), backend.files(encoder_file), backend.runs_in_python)
        specs = [encoder, *TASKS[p.task].models(p, opts, tokenizer_file)]
    written = {}
    for spec in specs:
        written[spec.role] = _write_model(repo, spec.config, spec.files)
        if spec.profile:
            p.save(written[spec.role] / c.VERSION)
    for role in set(c.ROLES) - set(written):  # e.g. the postprocess model of an earlier export
        stale = repo / model_names(p.name)[role]  # the folder, whatever the layout maps the role to
        if stale.is_dir():
            shutil.rmtree(stale)
    if p.layout == c.LAYOUT_ONE_STEP:  # the model that runs the encoder (Layout.model_dir("encoder"))
        written["encoder"] = written["ensemble"]
    write_lanes(repo, p.name, c.PRIORITY_VALUES[1:] if opts.priority_lanes else ())
    return dict(sorted(written.items(), key=lambda kv: c.ROLES.index(kv[0])))


# The encoders the one-step model can run itself: runners of its own Python process, read from its version folder.
ONE_STEP_BACKENDS = (PythonOnnxBackend.name, PytorchBackend.name)


def check_one_step(p: ModelProfile, opts: ServingOptions) -> None:
    """The one-step layout serves an embedding model whose encoder runs in the Python backend: ONNX Runtime
    on CPU, or the PyTorch runner (on a GPU instance, or on CPU with ``torch_device="cpu"``)."""
    if p.task != c.TASK_EMBED or opts.backend not in ONE_STEP_BACKENDS:
        raise ValueError(
            f"the {c.LAYOUT_ONE_STEP} layout serves embedding models on the {' or '.join(ONE_STEP_BACKENDS)}"
            f" backend; {p.name} is a {p.task} model on {opts.backend}: export it with --layout {c.LAYOUT_TWO_STEP}"
        )


def refresh_lanes(repo: Path, name: str) -> list[Path]:
    """Write model ``name``'s lanes again from its encoder's config as it is now (after ``tembed engine``
    rewrote it), the same lanes its ensemble lists."""
    ensemble = parse((Layout(repo, name).model_dir("ensemble") / "config.pbtxt").read_text())
    listed = ensemble.parameters[c.PARAM_LANES].string_value if c.PARAM_LANES in ensemble.parameters else ""
    return write_lanes(repo, name, tuple(item.split("=", 1)[0] for item in listed.split(",") if item))


def write_lanes(repo: Path, name: str, lanes: tuple[str, ...]) -> list[Path]:
    """Model ``name``'s priority lanes (``ServingOptions.priority_lanes``): per lane, an encoder whose version
    folder is a symlink to the encoder's (the same weights, profile and model.py; its own queue and
    process) and an ensemble that is the model's with that encoder in its step, marked ``PARAM_LANE_OF``;
    the model's ensemble lists them in ``PARAM_LANES``. Lanes no longer asked for are removed. Returns the
    folders written."""
    layout = Layout(repo, name)
    ens_dir, enc_dir = layout.model_dir("ensemble"), layout.model_dir("encoder")
    for old in repo.glob(f"{c.lane_name(name, '*')}"):
        shutil.rmtree(old)
    for old in repo.glob(f"{c.lane_name(enc_dir.name, '*')}"):
        shutil.rmtree(old)
    ens_path = ens_dir / "config.pbtxt"
    ensemble = parse(ens_path.read_text())
    if c.PARAM_LANES in ensemble.parameters:
        del ensemble.parameters[c.PARAM_LANES]
    written = []
    for lane in lanes:
        if ens_dir == enc_dir:  # one-step: the lane is the model again, its own process and queue
            copy = mc.ModelConfig()
            copy.CopyFrom(ensemble)
            copy.name = c.lane_name(name, lane)
            copy.parameters[c.PARAM_LANE_OF].string_value = name
            lane_dir = repo / copy.name
            lane_dir.mkdir()
            (lane_dir / "config.pbtxt").write_text(render(copy))
            (lane_dir / c.VERSION).symlink_to(Path("..") / ens_dir.name / c.VERSION, target_is_directory=True)
            written.append(lane_dir)
            continue
        encoder = parse((enc_dir / "config.pbtxt").read_text())
        encoder.name = c.lane_name(enc_dir.name, lane)
        lane_enc = repo / encoder.name
        lane_enc.mkdir()
        (lane_enc / "config.pbtxt").write_text(render(encoder))
        (lane_enc / c.VERSION).symlink_to(Path("..") / enc_dir.name / c.VERSION, target_is_directory=True)
        copy = mc.ModelConfig()
        copy.CopyFrom(ensemble)
        copy.name = c.lane_name(name, lane)
        for step in copy.ensemble_scheduling.step:
            if step.model_name == enc_dir.name:
                step.model_name = encoder.name
        copy.parameters[c.PARAM_LANE_OF].string_value = name
        lane_ens = repo / copy.name
        (lane_ens / c.VERSION).mkdir(parents=True)
        (lane_ens / "config.pbtxt").write_text(render(copy))
        written += [lane_enc, lane_ens]
    if lanes:
        ensemble.parameters[c.PARAM_LANES].string_value = ",".join(f"{x}={c.lane_name(name, x)}" for x in lanes)
    ens_path.write_text(render(ensemble))
    return written


def save_profile(p: ModelProfile, layout: Layout) -> list[Path]:
    """Write ``p`` again into every model folder of ``layout`` that holds a profile (after the export
    measured something into it, such as ``int8_ranges``); the files written."""
    written = []
    for role in c.ROLES:
        folder = layout.version_dir(role)
        if (folder / c.PROFILE_FILE).is_file():
            written.append(p.save(folder))
    return written
