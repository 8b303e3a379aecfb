"""The export pipeline as a library call: model folder -> profile -> repository -> encoder graph.

``tembed export`` is a thin CLI over :func:`export_model`; tests and ``bench/`` call it directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tembed_serving.contract import LAYOUT_ONE_STEP, Layout
from tembed_serving.profile import ModelProfile

from .hf_folder import read_profile
from .repository import BACKENDS, ServingOptions, check_one_step, write_repository

log = logging.getLogger("tembed")


@dataclass(frozen=True)
class ExportOptions:
    """What to read differently from the model's files (None: what they say) and how to serve it."""

    name: str | None = None
    pooling: str | None = None
    padding_side: str | None = None
    max_length: int | None = None
    min_dimension: int | None = None
    max_texts: int = ModelProfile.max_texts
    query_prompt: str | None = None
    document_prompt: str | None = None
    end_token: str | None = None
    ids_dtype: str = ModelProfile.ids_dtype
    task: str | None = None  # None: what the model's files say (hf_folder.read_task)
    # Folders with their own model code (config.json's auto_map) are refused unless this is set:
    # the export imports and runs that code (nomic-embed-text and other custom architectures).
    trust_remote_code: bool = False
    serving: ServingOptions = field(default_factory=ServingOptions)
    # The repository's layout (contract.LAYOUTS; written once into the profile): two-step, the ensemble of
    # tokenizer and encoder models (every backend), or one-step, one batched Python model that tokenizes
    # and runs the encoder itself (embeddings on python-onnx or pytorch: one stub hop per query).
    layout: str = ModelProfile.layout
    opset: int = 17
    quantize: str | None = None  # "int8"
    # int8: the methods tried in order (tembed.quantize.METHODS names; None: the runner's defaults,
    # tembed.quantize.DEFAULT_METHODS), the first that
    # passes the retrieval gate is kept.
    int8_methods: tuple[str, ...] | None = None
    int8_gate_data: Path | None = None  # the evaluation sets the gate reads (None: ../shared/data)
    validate: bool = True
    # embedding models: measure the int8/uint8 ranges of embedding_type with the served encoder
    # (tembed.calibration); without them only float, binary and ubinary are served.
    calibrate: bool = True


@dataclass
class ExportResult:
    profile: ModelProfile
    layout: Layout
    models: dict[str, Path]  # role -> model folder
    onnx: Path | None = None
    max_abs_err: float | None = None  # ONNX vs PyTorch on fresh shapes
    int8_gate: object | None = None  # tembed.quantize.GateReport of the int8 method kept
    int8_dimensions: list[int] | None = None  # sizes embedding_type int8/uint8 is calibrated for


def read_export_profile(source: Path, o: ExportOptions) -> ModelProfile:
    prompts = None
    if o.query_prompt is not None or o.document_prompt is not None:
        prompts = {"query": o.query_prompt or "", "document": o.document_prompt or ""}
    return read_profile(
        source,
        name=o.name,
        pooling=o.pooling,
        max_length=o.max_length,
        min_dimension=o.min_dimension,
        max_texts=o.max_texts,
        padding_side=o.padding_side,
        prompts=prompts,
        end_token=o.end_token,
        ids_dtype=o.ids_dtype,
        task=o.task,
        trust_remote_code=o.trust_remote_code,
    )


def export_model(source: Path, repo: Path, options: ExportOptions | None = None) -> ExportResult:
    """Export the Hugging Face folder ``source`` into the Triton repository ``repo``."""
    o = options or ExportOptions()
    source = Path(source)
    backend = BACKENDS[o.serving.backend]
    if o.quantize and not backend.quantizable:
        quantizable = ", ".join(b.name for b in BACKENDS.values() if b.quantizable)
        raise ValueError(f"--quantize {o.quantize} is for the encoders that serve the ONNX graph ({quantizable})")
    if o.quantize:
        from .quantize import methods_for

        methods_for(getattr(backend, "runner", "onnxruntime"), o.int8_methods)  # unknown names: refused now
    profile = read_export_profile(source, o)
    profile.runner = getattr(backend, "runner", backend.name)  # a fact of the served encoder, written once
    profile.layout = o.layout
    if o.layout == LAYOUT_ONE_STEP:
        check_one_step(profile, o.serving)  # before any work: embeddings on a Python-backend runner
        if profile.multi_output:
            log.warning("%s: the %s layout serves bge-m3's dense vector only", profile.name, o.layout)
            profile.outputs, profile.special_token_ids = profile.outputs[:1], []
    if o.quantize and profile.task != "embed":
        raise ValueError(f"--quantize {o.quantize} is checked on embeddings; {profile.name} is a {profile.task} model")
    if profile.multi_output and backend.name != "python-onnx":
        # bge-m3's sparse and ColBERT outputs are finished by the ONNX Runtime runner (m3.finish_request).
        log.warning(
            "%s: the %s backend serves bge-m3's dense vector only (sparse and colbert: python-onnx)",
            profile.name,
            backend.name,
        )
        profile.outputs, profile.special_token_ids = profile.outputs[:1], []
    log.info(
        "[1/4] profile of %s: task=%s pooling=%s padding=%s max_length=%d dim=%d (min %d) end_token=%s prompts=%s",
        source,
        profile.task,
        profile.pooling,
        profile.padding_side,
        profile.max_length,
        profile.dimension,
        profile.min_dimension,
        profile.end_token,
        profile.prompts,
    )
    layout = Layout(Path(repo), profile.name)
    tokenizer_file = source / "tokenizer.json"
    if backend.graph is None:  # the runner reads the Hugging Face folder copied into the repository
        models = write_repository(profile, repo, tokenizer_file=tokenizer_file, encoder_file=source, opts=o.serving)
        log.info("[2/2] wrote %s (%s backend)", ", ".join(str(p) for p in models.values()), backend.name)
        result = ExportResult(profile, layout, models)
        _calibrate(result, o)
        return result

    models = write_repository(profile, repo, tokenizer_file=tokenizer_file, encoder_file=None, opts=o.serving)
    log.info("[2/4] wrote %s", ", ".join(str(p) for p in models.values()))
    from tembed_serving.runners.torch_model import load_model

    from .onnx_export import export_onnx, validate_onnx

    t0 = time.perf_counter()
    model = load_model(source, profile)
    onnx_path = export_onnx(model, profile, layout.onnx_file, opset=o.opset)
    log.info(
        "[3/4] exported %s (%.0f MB) in %.1fs", onnx_path, onnx_path.stat().st_size / 2**20, time.perf_counter() - t0
    )
    result = ExportResult(profile, layout, models, onnx=onnx_path)
    if o.validate:
        reports = validate_onnx(model, profile, onnx_path)
        result.max_abs_err = max(r.max_abs_err for r in reports)
        log.info("[4/4] validated on %d fresh shapes: max |onnx - torch| = %.2e", len(reports), result.max_abs_err)
    else:
        log.warning("[4/4] validation skipped")
    if o.quantize == "int8":
        from .quantize import methods_for, quantize_gated

        runtime = getattr(backend, "runner", "onnxruntime")  # the gate scores in the runtime that serves
        methods = methods_for(runtime, o.int8_methods)
        report = quantize_gated(onnx_path, profile, tokenizer_file, methods, data=o.int8_gate_data, runtime=runtime)
        result.int8_gate = report
        # Facts of the served graph, written once into every profile.json (calibration rewrites them).
        profile.precision, profile.quantization = "int8", report.method
        from .repository import save_profile

        save_profile(profile, layout)
        log.info(
            "quantised to int8 (%s) in %.0fs, retrieval gate passed: %s",
            report.method,
            report.seconds,
            report.summary(),
        )
    _calibrate(result, o)  # on the graph as served (int8-quantised when asked), before ids are retyped
    if profile.ids_dtype == "int32" and backend.name != "tensorrt":
        # The export always takes int64 ids; `tembed engine` retypes the graph for TensorRT itself.
        from .tensorrt_build import retype_ids

        retype_ids(onnx_path, onnx_path, "int32")
        log.info("input ids retyped to int32 in %s", onnx_path)
    if backend.name == "tensorrt":
        log.info("next: build %s from %s with `make engine` (docker/README.md)", layout.plan_file, onnx_path.name)
    return result


def _calibrate(result: ExportResult, o: ExportOptions) -> None:
    if o.calibrate and result.profile.task == "embed":
        from .calibration import calibrate_repository

        result.int8_dimensions = calibrate_repository(
            result.profile, result.layout, o.serving.backend, o.serving.torch_dtype
        )
