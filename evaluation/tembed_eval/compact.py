"""What compact vectors (``embedding_type``) cost in retrieval: the served model's float, int8 and
binary vectors of the same texts, searched each its own way, and binary search with float rescoring
(ours, and Qdrant's binary quantisation with rescoring in the evaluation index).

``tembed eval --embedding-types float,int8,binary`` runs it and writes its section of the report
(between the markers below, so the rest of docs/QUALITY.md is left as it is; a full ``tembed eval``
keeps the section).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tembed_client import EmbeddingClient
from tembed_client.contract import BIT_PACKED_TYPES, EMBEDDING_TYPE_DEFAULT, EMBEDDING_TYPES, packed_width

from .data import Task
from .evaluate import score, task_metrics
from .index import Ranking, Stores, VectorIndex

RESCORE_DEPTH = 100  # binary candidates rescored with the float vectors, per query
TOP_K = 10
SECTION = "compact-vectors"
BEGIN, END = f"<!-- {SECTION}: begin -->", f"<!-- {SECTION}: end -->"


def check_types(types: list[str]) -> list[str]:
    bad = [t for t in types if t not in EMBEDDING_TYPES]
    if bad:
        raise ValueError(f"--embedding-types: {', '.join(bad)} not in {', '.join(EMBEDDING_TYPES)}")
    # float is the baseline and the rescoring vectors: always measured, first.
    return [EMBEDDING_TYPE_DEFAULT, *(t for t in dict.fromkeys(types) if t != EMBEDDING_TYPE_DEFAULT)]


class CompactEncoder:
    """The served vectors of each type, one server-sized request at a time, cached per
    (type, input_type, text)."""

    def __init__(self, client: EmbeddingClient) -> None:
        self.client = client
        self.info = client.model_info()
        self._cache: dict[tuple[str, str, str], np.ndarray] = {}

    def embed(self, texts: list[str], input_type: str, kind: str, desc: str) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if (kind, input_type, t) not in self._cache))
        step = self.info.max_texts
        with tqdm(total=len(missing), desc=desc, unit="text", leave=False) as bar:
            for start in range(0, len(missing), step):
                chunk = missing[start : start + step]
                rows = self.client.embed(chunk, input_type=input_type, embedding_type=kind)
                for text, row in zip(chunk, rows):
                    self._cache[(kind, input_type, text)] = row
                bar.update(len(chunk))
        return np.stack([self._cache[(kind, input_type, t)] for t in texts])


def _top(scores: np.ndarray, doc_ids: list[str], k: int = TOP_K) -> list[Ranking]:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: corpus order
    return [[(doc_ids[j], float(row[j])) for j in idx] for row, idx in zip(scores, top)]


def cosine_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Cosine of the vectors' values as numbers (int8 and uint8 as a vector store of such values
    computes it; the ranges that made them are not known to the client)."""
    q, d = (v.astype(np.float64) for v in (queries, docs))
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return q @ d.T


def bits(packed: np.ndarray, kind: str, dimension: int) -> np.ndarray:
    """±1 per dimension from served binary (int8, bits - 128) or ubinary (uint8) rows."""
    raw = packed.view(np.uint8) if kind == "ubinary" else (packed.astype(np.int16) + 128).astype(np.uint8)
    return np.unpackbits(raw, axis=1)[:, :dimension].astype(np.float32) * 2 - 1


def hamming_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """d - 2 * Hamming distance: the number of agreeing bits minus the disagreeing ones."""
    return queries @ docs.T


def rescored(candidates: np.ndarray, q_float: np.ndarray, d_float: np.ndarray, doc_ids: list[str]) -> list[Ranking]:
    """The top ``RESCORE_DEPTH`` by binary score, re-ranked by the float cosine."""
    top = np.argsort(-candidates, axis=1, kind="stable")[:, :RESCORE_DEPTH]
    out = []
    for q, idx in zip(q_float, top):
        exact = d_float[idx] @ q
        order = np.argsort(-exact, kind="stable")[:TOP_K]
        out.append([(doc_ids[idx[j]], float(exact[j])) for j in order])
    return out


def qdrant_binary(
    qdrant: Stores, doc_ids: list[str], docs: np.ndarray, queries: np.ndarray, rescore: bool
) -> list[Ranking]:
    """Float vectors in an index with Qdrant's binary quantization (the real engine), searched through it with
    (or without) rescoring: ``oversampling`` makes its candidates ``RESCORE_DEPTH`` per query."""
    with VectorIndex.build(qdrant, doc_ids, docs, "binary quantization", quantization="binary") as index:
        return index.search(queries, TOP_K, exact=False, rescore=rescore, oversampling=RESCORE_DEPTH / TOP_K)


def wire_sizes(rows: np.ndarray) -> dict[str, float]:
    """Bytes per vector: the gRPC output tensor, the JSON array of the gateway's ``encoding_format``
    float (numbers as the shortest float32 text, integers as they are) and its base64 string."""
    values = [[float(str(x)) for x in r] if r.dtype == np.float32 else r.tolist() for r in rows]
    return {
        "grpc": float(rows[0].nbytes),
        "json": float(np.mean([len(json.dumps(v, separators=(",", ":"))) for v in values])),
        "base64": float(np.mean([len(base64.b64encode(r.tobytes())) for r in rows])),
    }


def _wire(vec: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per type, over the documents; uint8 and ubinary from int8 and binary (the same values + 128)."""
    out = {kind: wire_sizes(docs) for kind, (_, docs) in vec.items()}
    for signed, unsigned in (("int8", "uint8"), ("binary", "ubinary")):
        if signed in vec and unsigned not in vec:
            out[unsigned] = wire_sizes((vec[signed][1].astype(np.int16) + 128).astype(np.uint8))
    return {k: out[k] for k in EMBEDDING_TYPES if k in out}


def _same(a: list[Ranking], b: list[Ranking]) -> bool:
    return [[i for i, _ in r] for r in a] == [[i for i, _ in r] for r in b]


def evaluate_task(enc: CompactEncoder, task: Task, qdrant: Stores, types: list[str]) -> dict[str, Any]:
    doc_ids = list(task.corpus)
    doc_texts, query_texts = [task.corpus[d] for d in doc_ids], list(task.queries.values())
    metric = task_metrics(task.name)[0]
    dim = enc.info.dimension
    vec: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for kind in types:
        label = f"{enc.info.name} {task.name} {kind}"
        vec[kind] = (
            enc.embed(query_texts, "query", kind, f"{label} queries"),
            enc.embed(doc_texts, "document", kind, f"{label} docs"),
        )
    q_float, d_float = vec[EMBEDDING_TYPE_DEFAULT]
    rows: dict[str, float] = {}
    with VectorIndex.build(qdrant, doc_ids, d_float, f"{task.name} float") as index:
        float_rankings = index.search(q_float, TOP_K)
    rows["float"] = score(task, float_rankings, (metric,))[metric]
    checks: dict[str, bool] = {}
    for kind in types[1:]:
        q, d = vec[kind]
        if kind in BIT_PACKED_TYPES:
            qb, db = bits(q, kind, dim), bits(d, kind, dim)
            # The served bits are the signs of the served float vectors (same texts, same requests' shapes).
            checks[kind] = bool(np.array_equal(qb > 0, q_float > 0) and np.array_equal(db > 0, d_float > 0))
            candidates = hamming_scores(qb, db)
            rows[kind] = score(task, _top(candidates, doc_ids), (metric,))[metric]
            rows[f"{kind} → float rescoring"] = score(task, rescored(candidates, q_float, d_float, doc_ids), (metric,))[
                metric
            ]
        else:
            rows[kind] = score(task, _top(cosine_scores(q, d), doc_ids), (metric,))[metric]
    qdrant_rows = {}
    if any(t in BIT_PACKED_TYPES for t in types):
        plain = qdrant_binary(qdrant, doc_ids, d_float, q_float, rescore=False)
        with_rescore = qdrant_binary(qdrant, doc_ids, d_float, q_float, rescore=True)
        qdrant_rows = {
            "qdrant_bq": score(task, plain, (metric,))[metric],
            "qdrant_bq_rescore": score(task, with_rescore, (metric,))[metric],
            "qdrant_bq_ignored": _same(plain, float_rankings),
        }
    return {
        "queries": len(query_texts),
        "docs": len(doc_ids),
        "metric": metric,
        "rows": rows,
        **qdrant_rows,
        "signs_match_float": checks,
        "wire": _wire(vec),
    }


def evaluate_compact(url: str, model: str, tasks: list[Task], qdrant: Stores, types: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    with EmbeddingClient(url, model) as client:
        enc = CompactEncoder(client)
        result = {
            "name": model,
            "dimension": enc.info.dimension,
            "types": types,
            "engine": qdrant.engine,
            "tasks": {t.name: evaluate_task(enc, t, qdrant, types) for t in tasks},
        }
    result["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return result


def _bytes(kind: str, d: int) -> int:
    base = kind.split(" ")[0]
    return 4 * d if base == EMBEDDING_TYPE_DEFAULT else packed_width(base, d)


def markdown(result: dict[str, Any], command: str, date: str, limits: str) -> list[str]:
    tasks = result["tasks"]
    d = result["dimension"]
    names = list(tasks)
    first = tasks[names[0]]
    header = " | ".join(f"{n} {tasks[n]['metric']}" for n in names)
    lines = [
        "## Compact vectors (`embedding_type`)",
        "",
        f"Generated {date} by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"{result['name']}, d={d}; {limits}. Sizes: "
        + ", ".join(f"{n} {tasks[n]['queries']} q / {tasks[n]['docs']} docs" for n in names)
        + f". The run took {result['elapsed_s']:.0f} s (every text embedded once per type).",
        "",
        f"| vectors (bytes per vector) | {header} |",
        "|---|" + "---:|" * len(names),
    ]
    for row in first["rows"]:
        kind = row.split(" ")[0]
        what = {
            "float": "float32, Qdrant exact cosine",
            "int8": "int8, cosine of the int8 values",
            "uint8": "uint8, cosine of the uint8 values",
            "binary": "binary, Hamming",
            "ubinary": "ubinary, Hamming",
        }.get(row)
        size = f"{_bytes(row, d)} B"
        if what is None:  # rescoring: the bits searched, the float vectors read for the candidates
            what, size = f"{kind} top {RESCORE_DEPTH} by Hamming, rescored with float", f"{size} + {4 * d} B kept"
        cells = " | ".join(f"{tasks[n]['rows'][row]:.3f}" for n in names)
        lines.append(f"| {what} ({size}) | {cells} |")
    if "qdrant_bq" in first:
        over = RESCORE_DEPTH // TOP_K
        for key, what in (
            ("qdrant_bq", "Qdrant BinaryQuantization of the float vectors, no rescoring"),
            ("qdrant_bq_rescore", f"Qdrant BinaryQuantization of the float vectors, rescore, oversampling {over}"),
        ):
            lines.append(f"| {what} | " + " | ".join(f"{tasks[n][key]:.3f}" for n in names) + " |")
    lines.append("")
    wire_task = names[-1]
    lines += [
        f"Bytes per vector on the wire (mean over the {wire_task} documents; uint8/ubinary are int8/binary + 128): "
        "the gRPC output tensor, the gateway's JSON `embedding` array (`encoding_format` float: numbers, "
        "integers for the compact types) and its base64 string (`encoding_format` base64: float32 or the "
        "compact bytes). `python bench/experiments/compact_wire.py --model-repository REPO` measures whole responses.",
        "",
        "| embedding_type | gRPC tensor | JSON array | base64 |",
        "|---|---:|---:|---:|",
        *(
            f"| {kind} | {w['grpc']:.0f} | {w['json']:.0f} | {w['base64']:.0f} |"
            for kind, w in tasks[wire_task]["wire"].items()
        ),
        "",
    ]
    notes = [
        "Every vector comes from the server with its `embedding_type` (the same texts sent once per type); "
        f"the float row is the baseline, searched in Qdrant as in the table above. int8/uint8 are ranked by "
        "the cosine of their values as numbers (what a vector store of int8 values computes; the calibration "
        "ranges stay on the server), binary/ubinary by Hamming distance (ties in corpus order). "
        f"Rescoring: each query's top {RESCORE_DEPTH} by Hamming re-ranked by the float cosine of query and "
        "document (the float document vectors kept beside the bits, as a store keeps originals on disk).",
        "Served binary = signs of the served float vectors on every text: "
        + ", ".join(f"{n} {'yes' if all(tasks[n]['signs_match_float'].values()) else 'NO'}" for n in names)
        + ".",
    ]
    if "qdrant_bq" in first:
        ignored = all(tasks[n]["qdrant_bq_ignored"] for n in names)
        notes.append(
            f"Qdrant rows: {result.get('engine', 'Qdrant')}, binary quantization of the float vectors (one sign "
            "bit per dimension, like `binary`), searched through the quantized vectors (not exact)."
        )
        if ignored:
            notes.append("Qdrant rows: binary search without rescoring ranked exactly as float: quantisation ignored.")
    lines += [f"- {n}" for n in notes]
    return [BEGIN, *lines, END]


def write_section(out: Path, lines: list[str]) -> Path:
    """Put the section into ``out``: in place of its previous version, else before the notes."""
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    elif "\n## How it is measured" in text:
        head, tail = text.split("\n## How it is measured", 1)
        text = head.rstrip("\n") + "\n\n" + block + "\n\n## How it is measured" + tail
    else:
        text = text + ("\n" if text else "") + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def kept_section(out: Path) -> list[str]:
    """The section as ``out`` has it now (for a full report to keep), or nothing."""
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    if BEGIN not in text or END not in text:
        return []
    return [BEGIN, *text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n").splitlines(), END]
