"""The evaluation sets, read from ``../shared/data``-style folders into one retrieval shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data"

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Task:
    """Queries, a corpus and graded judgements (query id -> doc id -> grade >= 1)."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: Qrels

    @property
    def size(self) -> str:
        return f"{len(self.queries)} q / {len(self.corpus)} docs"


def _paragraphs(path: Path) -> Iterator[tuple[str, str, list[tuple[str, str]]]]:
    """(paragraph id, context, [(question id, question)]) in file order."""
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for p in article["paragraphs"]:
            yield p["id"], p["context"], [(q["id"], q["question"]) for q in p["qas"]]


def load_cmrc(data: Path, limit: int | None = None) -> Task:
    """CMRC2018 dev as question -> its paragraph. With ``limit``, the first ``limit`` questions
    and only their paragraphs (a smaller, easier corpus: sizes go into the report)."""
    queries, corpus, qrels = {}, {}, {}
    for pid, context, qas in _paragraphs(data / "cmrc2018" / "cmrc2018_dev.json"):
        for qid, question in qas:
            if limit is not None and len(queries) >= limit:
                break
            queries[qid], qrels[qid] = question, {pid: 1}
            corpus[pid] = context
    return Task("cmrc2018", queries, corpus, qrels)


def load_tatoeba(data: Path, limit: int | None = None) -> tuple[Task, Task]:
    """Tatoeba cmn-eng as zh->en and en->zh: line i of one side is the gold match of line i."""
    folder = data / "tatoeba"
    zh = (folder / "tatoeba.cmn-eng.cmn").read_text(encoding="utf-8").splitlines()[:limit]
    en = (folder / "tatoeba.cmn-eng.eng").read_text(encoding="utf-8").splitlines()[:limit]
    if len(zh) != len(en):
        raise ValueError(f"tatoeba sides differ in length: {len(zh)} vs {len(en)}")
    zh_ids = {f"zh{i}": t for i, t in enumerate(zh)}
    en_ids = {f"en{i}": t for i, t in enumerate(en)}
    zh_en = Task("tatoeba zh→en", zh_ids, en_ids, {f"zh{i}": {f"en{i}": 1} for i in range(len(zh))})
    en_zh = Task("tatoeba en→zh", en_ids, zh_ids, {f"en{i}": {f"zh{i}": 1} for i in range(len(en))})
    return zh_en, en_zh


def load_beir(folder: Path, limit: int | None = None, max_docs: int | None = None, split: str = "test") -> Task:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).

    ``max_docs`` keeps the first documents of the corpus in file order and drops judgements on the
    others (and queries left without any), so the capped set is still a consistent benchmark;
    ``limit`` then keeps the first queries that have judgements."""
    corpus = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if max_docs is not None and len(corpus) >= max_docs:
                break
            doc = json.loads(line)
            # BEIR convention: title and text joined, title first.
            corpus[str(doc["_id"])] = f"{doc.get('title') or ''} {doc['text']}".strip()
    qrels: Qrels = {}
    for line in (folder / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].strip().lstrip("-").isdigit():
            continue  # the optional header line
        qid, did, grade = parts[0], parts[1], int(parts[2])
        if grade > 0 and did in corpus:
            qrels.setdefault(qid, {})[did] = grade
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            if str(q["_id"]) in qrels and (limit is None or len(queries) < limit):
                queries[str(q["_id"])] = q["text"]
    qrels = {q: qrels[q] for q in queries}
    return Task(folder.name, queries, corpus, qrels)


def long_document(data: Path, min_chars: int = 20_000) -> list[str]:
    """CMRC2018 paragraphs in file order until they add up to ``min_chars`` characters. Each
    article there has one paragraph, so the long document spans several articles."""
    paragraphs, total = [], 0
    for _, context, _ in _paragraphs(data / "cmrc2018" / "cmrc2018_dev.json"):
        paragraphs.append(context)
        total += len(context)
        if total >= min_chars:
            break
    return paragraphs
