"""Write an evaluation set as a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``), the input
``tembed index`` and ``tembed search --queries`` read:

    python -m tembed_eval.beir cmrc2018 --out .cache/beir/cmrc2018
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .data import DEFAULT_DATA, Task, load_beir, load_cmrc, load_tatoeba


def write_beir(task: Task, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc_id, text in task.corpus.items():
            f.write(json.dumps({"_id": doc_id, "title": "", "text": text}, ensure_ascii=False) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in task.queries.items():
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    (out / "qrels").mkdir(exist_ok=True)
    rows = ["query-id\tcorpus-id\tscore"] + [
        f"{q}\t{d}\t{g}" for q, docs in task.qrels.items() for d, g in docs.items()
    ]
    (out / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def load_task(name: str, data: Path = DEFAULT_DATA, limit: int | None = None, max_docs: int | None = None) -> Task:
    if name == "cmrc2018":
        return load_cmrc(data, limit)
    if name in ("tatoeba-zh-en", "tatoeba-en-zh"):
        return load_tatoeba(data, limit)[name != "tatoeba-zh-en"]
    if name == "msmarco":
        return load_beir(data / "msmarco-5k", limit, max_docs)
    raise SystemExit(f"error: unknown set {name!r} (cmrc2018, tatoeba-zh-en, tatoeba-en-zh, msmarco)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tembed_eval.beir", description=__doc__)
    ap.add_argument("name", help="cmrc2018, tatoeba-zh-en, tatoeba-en-zh or msmarco")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, help="first N queries")
    ap.add_argument("--max-docs", type=int, help="MS MARCO: first N documents")
    args = ap.parse_args(argv)
    task = load_task(args.name, args.data, args.limit, args.max_docs)
    write_beir(task, args.out)
    print(f"{args.out}: {task.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
