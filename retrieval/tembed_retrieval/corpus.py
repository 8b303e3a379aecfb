"""A corpus to index: BEIR jsonl (``_id``, ``title``, ``text``), or plain text files (one passage per line, or the
whole file with ``--per-file``). Every record is read and checked before anything is embedded or written, so a
bad corpus leaves the index as it was."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class CorpusError(ValueError):
    """A corpus that cannot be indexed; the message names the file and line."""


@dataclass(frozen=True)
class Record:
    doc_id: str
    text: str
    title: str = ""

    @property
    def passage(self) -> str:
        """What is embedded: BEIR's convention, title then text."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


def _beir(path: Path) -> list[Record]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(
                    f"{where}: not a JSON line ({exc.msg}); a BEIR corpus has one object per line"
                ) from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{where}: a BEIR record is an object with _id and text, not {type(obj).__name__}")
            if "_id" not in obj or obj["_id"] in (None, ""):
                raise CorpusError(f"{where}: record without an _id")
            text, title = obj.get("text"), obj.get("title") or ""
            if not isinstance(text, str) or not isinstance(title, str):
                raise CorpusError(f"{where}: text and title must be strings")
            if not (text.strip() or title.strip()):
                raise CorpusError(f"{where}: record {obj['_id']!r} has an empty text")
            out.append(Record(str(obj["_id"]), text, title))
    return out


def _plain(path: Path, per_file: bool) -> list[Record]:
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not UTF-8 text (a corpus is BEIR .jsonl or plain .txt files)") from None
    if per_file:
        if not content.strip():
            raise CorpusError(f"{path}: empty file")
        return [Record(path.stem, content.strip())]
    # One passage per non-empty line, id = file stem and line number (stable when lines are appended).
    return [Record(f"{path.stem}:{n}", line.strip()) for n, line in enumerate(content.splitlines(), 1) if line.strip()]


def read_corpus(paths: Iterable[Path | str], *, per_file: bool = False) -> list[Record]:
    """Records of every file (a folder: its ``corpus.jsonl``, else its ``*.jsonl`` and ``*.txt``), ids unique."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = (
                [p / "corpus.jsonl"]
                if (p / "corpus.jsonl").exists()
                else sorted([*p.glob("*.jsonl"), *p.glob("*.txt")])
            )
            if not found:
                raise CorpusError(f"{p}: no corpus.jsonl, *.jsonl or *.txt in the folder")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise CorpusError(f"{p}: no such file")
    records: list[Record] = []
    for f in files:
        if f.suffix == ".jsonl":
            records.extend(_beir(f))
        elif f.suffix in (".txt", ".md", ""):
            records.extend(_plain(f, per_file))
        else:
            raise CorpusError(f"{f}: unknown corpus format {f.suffix!r} (BEIR .jsonl, or plain .txt)")
    seen: set[str] = set()
    for r in records:
        if r.doc_id in seen:
            raise CorpusError(f"document id {r.doc_id!r} appears twice")
        seen.add(r.doc_id)
    if not records:
        raise CorpusError("the corpus has no records")
    return records


def read_queries(path: Path | str) -> dict[str, str]:
    """BEIR queries.jsonl (``_id``, ``text``) -> {id: text}, in file order."""
    return {r.doc_id: r.passage for r in _beir(Path(path))}
