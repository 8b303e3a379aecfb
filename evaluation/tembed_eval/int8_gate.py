"""The retrieval scorer of the int8 export gate (``tembed.quantize``; entry point ``tembed.int8_gate``).

Small fixed slices of the shipped sets, every distinct text embedded once by the graph under test
with ONNX Runtime (tokenized as served), exact search, tembed_eval's headline metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tembed_client.contract import INPUT_TYPES
from tembed_serving.profile import ModelProfile

from .data import DEFAULT_DATA, Task, load_beir, load_cmrc, load_tatoeba
from .evaluate import score, task_metrics
from .index import exact_search

# The gate's fixed slices, ~35k tokens per graph (e5-small: well under a minute on 2 quiet cores):
# all 1,000 Tatoeba pairs both ways (short texts, cheap; one flip is 0.1 point: on the first 500 the
# OpenVINO NNCF graph of e5-small read +0.2 on zh->en acc@1 where the whole set says -0.7), the first 100 CMRC2018
# questions with their paragraphs, MS MARCO's judged queries over its first 200 documents.
GATE_SLICES = {"cmrc2018": 100, "tatoeba": 1000, "msmarco_docs": 200}
BATCH_TEXTS = 32
QUERY, DOCUMENT = INPUT_TYPES


def gate_tasks(data: Path | None = None, slices: dict[str, int] | None = None) -> list[Task]:
    data = Path(data or DEFAULT_DATA)
    s = {**GATE_SLICES, **(slices or {})}
    if not (data / "tatoeba").is_dir():
        from tembed.quantize import Int8Refused

        raise Int8Refused(f"int8 is gated on retrieval over the shipped evaluation sets, not found at {data}")
    beir = load_beir(data / "msmarco-5k", None, s["msmarco_docs"])
    return [load_cmrc(data, s["cmrc2018"]), *load_tatoeba(data, s["tatoeba"]), beir]


def token_batches(profile: ModelProfile, tokenizer_file: Path, tasks: list[Task]) -> list:
    """(input_type, texts, ids, mask) batches covering every distinct text once, similar lengths together."""
    from tembed_serving.textproc import TextEncoder

    enc = TextEncoder(profile, tokenizer_file)
    wanted = {QUERY: set(), DOCUMENT: set()}
    for t in tasks:
        wanted[QUERY].update(t.queries.values())
        wanted[DOCUMENT].update(t.corpus.values())
    batches = []
    for input_type, texts in wanted.items():
        texts = sorted(texts, key=lambda x: (len(x), x))
        for s in range(0, len(texts), BATCH_TEXTS):
            chunk = texts[s : s + BATCH_TEXTS]
            b = enc(chunk, input_type=input_type)
            batches.append((input_type, chunk, b.input_ids, b.attention_mask))
    return batches


def embed(onnx_path: Path, batches: list, runtime: str = "onnxruntime") -> dict[tuple[str, str], np.ndarray]:
    """Every batch's vectors from ``onnx_path`` run by ``runtime`` (a tembed_serving runner name:
    ``onnxruntime``, or ``openvino`` for a graph OpenVINO will serve), as one call per batch."""
    from tembed_serving.runners.ort import OrtEncoder, OrtOptions

    if runtime == "onnxruntime":
        enc = OrtEncoder(onnx_path, pad_token_id=0, padding_side="right", options=OrtOptions(trim_padding=False))
    elif runtime == "openvino":
        from tembed_serving.runners.openvino import OpenVinoEncoder

        enc = OpenVinoEncoder(onnx_path, pad_token_id=0, padding_side="right", options=OrtOptions(trim_padding=False))
    else:
        raise ValueError(f"runtime must be onnxruntime or openvino, got {runtime!r}")
    out = {}
    for input_type, texts, ids, mask in batches:
        v = enc.run(ids, mask)
        out.update({(input_type, t): row for t, row in zip(texts, v)})
    return out


def retrieval(vectors: dict, tasks: list[Task]) -> dict[str, dict[str, float]]:
    """Each task's two headline metrics (``task_metrics``) by exact search."""
    out = {}
    for t in tasks:
        ids = list(t.corpus)
        d = np.stack([vectors[(DOCUMENT, t.corpus[i])] for i in ids])
        q = np.stack([vectors[(QUERY, x)] for x in t.queries.values()])
        out[t.name] = score(t, exact_search(q, d, ids), task_metrics(t.name)[:2])
    return out


class Scorer:
    """``graph path -> {task: {metric: value}}`` on the gate slices (tokenized once)."""

    def __init__(
        self,
        profile: ModelProfile,
        tokenizer_file: Path,
        data: Path | None,
        slices: dict | None,
        runtime: str = "onnxruntime",
    ):
        self.runtime = runtime
        self.tasks = gate_tasks(data, slices)
        self.batches = token_batches(profile, tokenizer_file, self.tasks)
        self.sizes = ", ".join(f"{t.name} {t.size}" for t in self.tasks)

    def __call__(self, onnx_path: Path) -> dict[str, dict[str, float]]:
        return retrieval(embed(onnx_path, self.batches, self.runtime), self.tasks)
