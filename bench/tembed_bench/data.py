"""Realistic request texts from the evaluation data (``../shared/data`` beside the checkout, or
$TEMBED_DATA): Chinese questions and paragraphs, English
queries and passages, Tatoeba sentences and a few long documents, mixed the way a search
service sees them (many short queries, fewer and longer documents)."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tembed_eval.data import DEFAULT_DATA

# The one definition of where the data lies is the evaluation package's.
DATA = Path(os.environ.get("TEMBED_DATA", DEFAULT_DATA))


@dataclass(frozen=True)
class Item:
    text: str
    input_type: str  # "query" or "document": picks the model's prompt


@cache
def pools() -> dict[str, list[Item]]:
    cmrc = json.loads((DATA / "cmrc2018" / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    paras = [p for art in cmrc["data"] for p in art["paragraphs"]]
    marco = [json.loads(line) for line in (DATA / "msmarco-5k" / "corpus.jsonl").open(encoding="utf-8")]
    marco_q = [json.loads(line)["text"] for line in (DATA / "msmarco-5k" / "queries.jsonl").open(encoding="utf-8")]
    tatoeba = [
        line.strip()
        for f in ("tatoeba.cmn-eng.cmn", "tatoeba.cmn-eng.eng")
        for line in (DATA / "tatoeba" / f).open(encoding="utf-8")
        if line.strip()
    ]
    passages = [(m.get("title", "") + " " + m["text"]).strip() for m in marco]
    # Long documents: several neighbouring paragraphs joined, past the 512-token limit (truncated).
    long_docs = ["\n".join(p["context"] for p in paras[i : i + 4]) for i in range(0, 400, 4)]
    long_docs += [" ".join(passages[i : i + 8]) for i in range(0, 800, 8)]
    return {
        "short": [Item(q["question"], "query") for p in paras for q in p["qas"]]
        + [Item(q, "query") for q in marco_q]
        + [Item(t, "query") for t in tatoeba],
        "zh_paragraph": [Item(p["context"], "document") for p in paras],
        "en_passage": [Item(t, "document") for t in passages],
        "long": [Item(t, "document") for t in long_docs],
    }


# Share of each kind in the mixed workload.
MIX = {"short": 0.4, "en_passage": 0.3, "zh_paragraph": 0.22, "long": 0.08}


def mixed(n: int, seed: int = 0) -> list[Item]:
    """``n`` texts drawn with the MIX shares, shuffled, reproducible."""
    rng = random.Random(seed)
    p = pools()
    out = [rng.choice(p[kind]) for kind, share in MIX.items() for _ in range(round(n * share))]
    rng.shuffle(out)
    return out[:n]


def short_queries(n: int, seed: int = 1) -> list[Item]:
    rng = random.Random(seed)
    return rng.sample(pools()["short"], n)


def requests(items: list[Item], batch: int) -> list[list[Item]]:
    """Cut into requests of ``batch`` texts; a request keeps one input_type (the contract's [1] option)."""
    by_type: dict[str, list[Item]] = {}
    for it in items:
        by_type.setdefault(it.input_type, []).append(it)
    out = [v[i : i + batch] for v in by_type.values() for i in range(0, len(v), batch)]
    random.Random(2).shuffle(out)
    return out
