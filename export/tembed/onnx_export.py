"""Export the pooled, normalised encoder to ONNX and validate it against PyTorch on fresh shapes."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tembed_client.contract import TASK_RERANK
from tembed_serving.contract import (
    ATTENTION_MASK,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    GRAPH_OUTPUTS,
    INPUT_IDS,
    TASK_EMBED,
)
from tembed_serving.profile import ModelProfile

log = logging.getLogger(__name__)


def graph_outputs(profile: ModelProfile) -> list[str]:
    """The graph's outputs: the task's one, or bge-m3's embedding, token weights and token vectors."""
    if profile.task == TASK_EMBED and profile.multi_output:
        return [GRAPH_OUTPUTS[kind] for kind in profile.outputs]
    return [ENCODER_OUTPUTS[profile.task]]


def dynamic_axes(*outputs: str) -> dict[str, dict[int, str]]:
    axes = {
        INPUT_IDS: {0: "batch_size", 1: "sequence_length"},
        ATTENTION_MASK: {0: "batch_size", 1: "sequence_length"},
    }
    for i, output in enumerate(outputs):
        # The first output is per sequence; bge-m3's others per token.
        axes[output] = {0: "batch_size"} if i == 0 else {0: "batch_size", 1: "sequence_length"}
    return axes


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


TRACE_SHAPE = (2, 12)
# Shapes never seen by the tracer: odd lengths, batch 1, padding on the profile's side.
VALIDATION_SHAPES = ((1, 8), (3, 17), (5, 33), (2, 64))
# fp32 on CPU: ONNX Runtime fuses attention and layer norm, which reorders float sums.
FP32_ATOL = 1e-4


class ExportValidationError(RuntimeError):
    """The exported graph disagrees with the PyTorch model beyond tolerance."""


@dataclass
class ValidationReport:
    shape: tuple[int, int]
    max_abs_err: float
    min_cosine: float


def sample_inputs(profile: ModelProfile, batch: int, length: int, vocab: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random ids with ragged real lengths (the first row full), padded on the profile's side."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, length), dtype=np.int64)
    ids[ids == profile.pad_token_id] = 5
    mask = np.ones((batch, length), dtype=np.int64)
    for row in range(1, batch):
        n = int(rng.integers(1, length + 1))
        pad = slice(0, length - n) if profile.padding_side == "left" else slice(n, length)
        ids[row, pad] = profile.pad_token_id
        mask[row, pad] = 0
    if profile.end_token_id is not None:
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        ids[np.arange(batch), last] = profile.end_token_id
    return ids, mask


def export_onnx(model: nn.Module, profile: ModelProfile, out: Path, *, opset: int = 17) -> Path:
    """``model`` is the task's module (EmbeddingModel or RerankModel); the output is named for the task."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    outputs = graph_outputs(profile)
    vocab = model.config.vocab_size
    ids, mask = sample_inputs(profile, *TRACE_SHAPE, vocab=vocab, seed=0)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            model,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(out),
            input_names=list(ENCODER_INPUTS),
            output_names=outputs,
            dynamic_axes=dynamic_axes(*outputs),
            opset_version=opset,
            dynamo=False,
        )
    import onnx

    # The tracer leaves the hidden size symbolic ("Divembedding_dim_1"); configs and engine
    # builders want the static size they can check against the profile.
    graph = onnx.load(str(out), load_external_data=False)
    graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value = profile.dimension
    for out_info in graph.graph.output[1:]:  # bge-m3's token vectors [b, s, hidden]
        dims = out_info.type.tensor_type.shape.dim
        if len(dims) == 3:
            dims[2].dim_value = profile.dimension
    onnx.save(graph, str(out))
    onnx.checker.check_model(str(out))
    return out


def validate_onnx(
    model: nn.Module, profile: ModelProfile, onnx_path: Path, *, atol: float = FP32_ATOL, threads: int = 0
) -> list[ValidationReport]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    expected = graph_outputs(profile)
    outputs = [o.name for o in sess.get_outputs()]
    if names != list(ENCODER_INPUTS) or outputs != expected:
        raise ExportValidationError(f"unexpected graph signature: inputs {names}, outputs {outputs}")
    vocab = model.config.vocab_size
    reports = []
    for i, (batch, length) in enumerate(VALIDATION_SHAPES):
        ids, mask = sample_inputs(profile, batch, length, vocab=vocab, seed=100 + i)
        with torch.inference_mode():
            refs = [r.numpy() for r in _as_tuple(model(torch.from_numpy(ids), torch.from_numpy(mask)))]
        gots = sess.run(expected, {INPUT_IDS: ids, ATTENTION_MASK: mask})
        got, ref = gots[0], refs[0]
        if got.shape != (batch, profile.dimension):
            raise ExportValidationError(
                f"shape {(batch, length)}: output {got.shape}, expected {(batch, profile.dimension)}"
            )
        # Every output (bge-m3's token weights and vectors too) within the tolerance.
        err = max(float(np.abs(g - r).max()) for g, r in zip(gots, refs))
        if profile.task == TASK_RERANK:  # one score per pair: no vectors, no cosine
            cos = float("nan")
            log.info("validate %s: max|onnx-torch| = %.2e (scores)", (batch, length), err)
        else:
            cos = float((got * ref).sum(-1).min())
            log.info("validate %s: max|onnx-torch| = %.2e, min cosine = %.7f", (batch, length), err, cos)
        reports.append(ValidationReport((batch, length), err, cos))
        if not all(np.isfinite(g).all() for g in gots) or err > atol:
            raise ExportValidationError(
                f"ONNX output differs from PyTorch at batch={batch}, seq={length}: max abs error {err:.3e} > {atol:.0e}"
            )
    return reports
