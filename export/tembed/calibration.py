"""The per-dimension ranges behind ``embedding_type`` int8 and uint8, measured at export.

The served encoder itself (ONNX Runtime on the exported graph, or the PyTorch runner for the
``pytorch`` backend) embeds the calibration set that ships with this package
(``calibration_texts.txt``: a few hundred short Chinese, English and mixed texts) once with the query prompt
and once with the document prompt; the per-dimension minimum and maximum of those unit vectors,
for the full size and every size of :func:`calibrated_dimensions` (each vector cut and
re-normalised as the server's ``dimensions`` does), go into ``profile.int8_ranges``. The server
quantises with them (``tembed_serving.vectors.quantize``); rerankers have none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tembed_serving.contract import INPUT_TYPES, PARAM_DTYPE, Layout
from tembed_serving.matryoshka import truncate
from tembed_serving.profile import ModelProfile
from tembed_serving.textproc import TextEncoder

log = logging.getLogger("tembed")

CALIBRATION_FILE = Path(__file__).with_name("calibration_texts.txt")
BATCH_TEXTS = 32  # texts per encoder call (at most the model's max_texts)
# The ranges are measured at full precision, whatever dtype the served runner uses.
CALIBRATION_DTYPE = "float32"

Runner = Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]]


def calibration_texts(path: Path = CALIBRATION_FILE) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def calibrated_dimensions(profile: ModelProfile) -> list[int]:
    """The output sizes int8/uint8 are calibrated for: the powers of two from ``min_dimension`` up
    (the Matryoshka sizes models are trained and stored at), and the full size."""
    sizes, d = {profile.dimension}, 1
    while d < profile.dimension:
        if d >= profile.min_dimension:
            sizes.add(d)
        d *= 2
    return sorted(sizes)


def embed_texts(
    runner: Runner, profile: ModelProfile, tokenizer_file: Path, texts: Sequence[str], input_type: str
) -> np.ndarray:
    """``[len(texts), dimension]`` unit vectors from ``runner``, tokenized as the server does."""
    encoder = TextEncoder(profile, tokenizer_file)
    step = max(1, min(BATCH_TEXTS, profile.max_texts))
    out = []
    with tqdm(total=len(texts), desc=f"calibrate {profile.name} ({input_type})", unit="text", leave=False) as bar:
        for start in range(0, len(texts), step):
            batch = encoder(list(texts[start : start + step]), input_type=input_type)
            out.append(np.asarray(runner([batch.input_ids], [batch.attention_mask])[0], dtype=np.float32))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def ranges(vectors: np.ndarray, dimensions: Sequence[int]) -> dict[str, list[list[float]]]:
    """Per-dimension ``[[min...], [max...]]`` of ``vectors`` cut to each size, by size.

    Values are float32 written in their shortest form, so the served float32 ranges are exactly
    the measured ones."""
    out = {}
    for d in dimensions:
        v = truncate(vectors, d)
        out[str(d)] = [[float(str(x)) for x in row] for row in (v.min(axis=0), v.max(axis=0))]
    return out


def calibrate(runner: Runner, profile: ModelProfile, tokenizer_file: Path, texts: Sequence[str] | None = None) -> dict:
    """``profile.int8_ranges`` from ``runner`` on the calibration texts, both prompts."""
    texts = calibration_texts() if texts is None else list(texts)
    vectors = np.concatenate([embed_texts(runner, profile, tokenizer_file, texts, t) for t in INPUT_TYPES])
    return ranges(vectors, calibrated_dimensions(profile))


def served_runner(layout: Layout, profile: ModelProfile, backend: str, torch_dtype: str = CALIBRATION_DTYPE) -> Runner:
    """The encoder as served: ONNX Runtime (or OpenVINO) on the exported graph, or the PyTorch runner on the copy
    of the Hugging Face folder (``pytorch`` backend; on CPU when no GPU is there)."""
    from tembed_serving.runners import load_runner

    if backend == "pytorch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = layout.version_dir("encoder")
        return load_runner("torch", folder, profile, {PARAM_DTYPE: torch_dtype}, device)
    from .repository import BACKENDS

    runner = getattr(BACKENDS[backend], "runner", "onnxruntime")  # python-openvino: OpenVINO
    return load_runner(runner, layout.onnx_file.parent, profile, {})


def calibrate_repository(
    profile: ModelProfile, layout: Layout, backend: str = "python-onnx", torch_dtype: str = CALIBRATION_DTYPE
) -> list[int]:
    """Measure ``profile.int8_ranges`` with the served encoder and write the profile back into the
    repository; the calibrated sizes."""
    from .repository import save_profile

    t0 = time.perf_counter()
    texts = calibration_texts()
    profile.int8_ranges = calibrate(
        served_runner(layout, profile, backend, torch_dtype), profile, layout.tokenizer_file
    )
    save_profile(profile, layout)
    sizes = sorted(map(int, profile.int8_ranges))
    log.info(
        "calibrated int8/uint8 ranges at dimensions %s on %d texts x %d prompts in %.1fs",
        ", ".join(map(str, sizes)),
        len(texts),
        len(INPUT_TYPES),
        time.perf_counter() - t0,
    )
    return sizes
