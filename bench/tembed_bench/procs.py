"""CPU seconds and resident memory of a process tree, from Linux /proc: the one place the bench reads it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when it has gone)."""
    try:
        f = _stat(pid)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def state(pid: int) -> str:
    """The state letter; "Z" for a zombie or a process that is gone."""
    try:
        return _stat(pid)[0]
    except OSError:
        return "Z"


def command(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def label(pid: int) -> str:
    """``tritonserver``, a Python stub by its model folder, or the executable's name."""
    argv = command(pid)
    if not argv:
        return "?"
    if argv[0].endswith("triton_python_backend_stub") and len(argv) > 1:
        return Path(argv[1]).parts[-3]  # <repository>/<model>/<version>/model.py
    if len(argv) > 2 and argv[1] == "-m":
        return argv[2]  # python -m tembed_gateway
    return Path(argv[0]).name


def tree(pid: int) -> dict[int, str]:
    """``pid`` and all its descendants, each labelled (``label``)."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        out[p] = label(p)
        todo += children(p)
    return out


class Sampler:
    """CPU seconds and RSS per label over process trees (found once: a process started later is missed).
    ``own`` names this process, whose CPU is read with ``time.process_time``."""

    def __init__(self, roots: dict[str, int], own: str | None = None) -> None:
        self.pids: dict[int, str] = {}
        for name, root in roots.items():
            for p, lab in tree(root).items():
                self.pids[p] = name if p == root else lab
        self.own = own

    def cpu(self) -> dict[str, float]:
        import time

        out: dict[str, float] = {self.own: time.process_time()} if self.own else {}
        for p, lab in self.pids.items():
            out[lab] = out.get(lab, 0.0) + cpu_seconds(p)
        return out

    def rss(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p, lab in self.pids.items():
            if (mib := rss_mib(p)) is not None:
                out[lab] = out.get(lab, 0.0) + mib
        return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}
