"""One JSON record per run: what ran, where, when, at which commit, and the numbers.

Records go to ``.cache/bench/records/NAME-YYYYmmdd-HHMMSS.json`` (ignored by git); ``python -m
tembed_bench render`` turns the latest of each name into docs/BENCHMARKS.md's generated regions and
copies it to ``docs/bench/NAME.json``, the committed record that the doc shows."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from tembed_serving.cpu import cpu_model_and_flags

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / ".cache" / "bench" / "records"
SHOWN = ROOT / "docs" / "bench"


def machine() -> dict:
    model, isa = cpu_model_and_flags()
    return {
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": model,
        "isa": isa,
        "python": sys.version.split()[0],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def write(name: str, numbers: dict, *, quick: bool = False, args: dict | None = None, out: Path = RECORDS) -> Path:
    now = dt.datetime.now().astimezone()
    rec = {
        "bench": name,
        "date": now.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": git_commit(),
        "machine": machine(),
        "quick": quick,
        "args": args or {},
        **numbers,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{now:%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(rec, indent=1, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"record: {path}", flush=True)
    return path


def latest(name: str, *, quick: bool = False, folder: Path = RECORDS) -> dict | None:
    """The newest record of ``name`` (quick ones only when asked), else the committed one."""
    for path in sorted(folder.glob(f"{name}-*.json"), reverse=True):
        rec = json.loads(path.read_text(encoding="utf-8"))
        if rec.get("bench") == name and (quick or not rec.get("quick")):
            return rec
    shown = SHOWN / f"{name}.json"
    return json.loads(shown.read_text(encoding="utf-8")) if shown.exists() else None
