"""py-spy on a running process: record while a block runs, then the functions that took the samples.

py-spy samples another process's Python stacks from outside (no code change, no tracing overhead in
the target; ``--nonblocking``: the target is not paused to be read). It leaves out threads that sleep
(epoll, a lock, a socket), so the samples approximate where the process spends CPU; on a machine busier
than its cores, a thread waiting to run counts as running, which spreads samples where preemption
lands. ``samples / rate`` per request, set beside the CPU time measured from /proc, says how far the
profile can be trusted. (``--gil`` was tried: on Python 3.11 it kept samples in ``select``.)
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

RATE = 997  # samples per second (prime: does not lock step with a periodic timer)
LINE = re.compile(r" \(([^()]*?)(?::\d+)?\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: pip install py-spy (the bench extra pins it)")
    return found


@contextlib.contextmanager
def record(pid: int, out: Path, rate: int = RATE) -> Iterator[Path]:
    """``py-spy record`` of ``pid`` into ``out`` (collapsed stacks, one ``a;b;c count`` a line) while
    the block runs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--nonblocking"]
    proc = subprocess.Popen([*cmd, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield out
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")


def frame_name(frame: str, root: Path | None = None) -> str:
    """``func (path/to/file.py:123)`` -> ``file-relative/path.py:func`` (line numbers merged)."""
    m = LINE.search(frame)
    if not m:
        return frame
    path = m.group(1)  # py-spy already shortens most paths to their import path (``asyncio/events.py``)
    for marker in (r"site-packages/", r"/lib/python3\.\d+/"):
        if re.search(marker, path):
            path = re.split(marker, path, maxsplit=1)[1]
            break
    else:
        if root is not None:
            with contextlib.suppress(ValueError):
                path = str(Path(path).relative_to(root))
    return f"{path}:{frame[: m.start()]}"


def package(name: str) -> str:
    """``x/y.py:func`` -> the package it belongs to: ``tembed_*`` wherever it lies, else the first part."""
    path = name.rsplit(":", 1)[0]
    parts = Path(path).parts
    ours = [p for p in parts if p.startswith("tembed_")]
    first = ours[0] if ours else (parts[0] if parts else path)
    return first.removesuffix(".py")


# Leaf frames that are a thread waiting, not working: the event loop in epoll_wait, grpc's poller thread
# in its C core. py-spy's own idle filter misses them when the machine is busier than its cores.
WAITS = ("selectors.py:EpollSelector.select", "threading.py:Thread.run")


def top(raw: Path, n: int = 40, root: Path | None = None, waits: tuple[str, ...] = WAITS) -> dict:
    """From a raw py-spy file: the samples, those whose leaf is one of ``waits`` (idle), and over the
    others (busy): the ``n`` functions with most samples on top of the stack (self) and anywhere in it
    (inclusive; each counted once per sample), and self samples by package."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [frame_name(f, root) for f in stack.split(";")]
        total += k
        if frames[-1] in waits:
            idle += k
            continue
        own[frames[-1]] += k
        packages[package(frames[-1])] += k
        for f in set(frames):
            inclusive[f] += k
    return {
        "samples": total,
        "idle": idle,
        "busy": total - idle,
        "self": own.most_common(n),
        "inclusive": inclusive.most_common(n),
        "packages": packages.most_common(n),
    }
