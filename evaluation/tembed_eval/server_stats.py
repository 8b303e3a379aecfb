"""Resident memory of a running tritonserver and its Python backend stubs, from /proc."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

PROC = Path("/proc")


def _status(pid: int) -> dict[str, str]:
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def rss_kib(pid: int) -> int:
    """VmRSS in KiB (0 when the process is gone or unreadable)."""
    value = _status(pid).get("VmRSS", "0 kB").split()[0]
    return int(value) if value.isdigit() else 0


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the Python backend stubs are tritonserver's children)."""
    parents: dict[int, list[int]] = {}
    for d in PROC.iterdir():
        if d.name.isdigit():
            ppid = _status(int(d.name)).get("PPid", "")
            if ppid.isdigit():
                parents.setdefault(int(ppid), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            rows = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def find_server_pid(grpc_url: str) -> int | None:
    """The process listening on the gRPC URL's port (exact even when several tritonservers run
    on the machine), else the only ``tritonserver`` process, else None."""
    port = grpc_url.rsplit(":", 1)[-1]
    if port.isdigit() and (inodes := _listening_inodes(int(port))):
        targets = {f"socket:[{i}]" for i in inodes}
        holders = set()
        for d in PROC.iterdir():
            if not d.name.isdigit():
                continue
            try:
                fds = list((d / "fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    if str(fd.readlink()) in targets:
                        holders.add(int(d.name))
                except OSError:
                    continue
        # Children may inherit the listening socket: the server is the holder whose parent is not one.
        roots = [p for p in holders if int(_status(p).get("PPid", "0") or 0) not in holders]
        if roots:
            return min(roots)
    try:
        found = subprocess.run(["pgrep", "-x", "tritonserver"], capture_output=True, text=True).stdout.split()
    except OSError:
        return None
    return int(found[0]) if len(found) == 1 else None


def server_memory(pid: int, models: list[str]) -> dict[str, object]:
    """VmRSS (MiB) of tritonserver, of all its descendants, and per model of the stubs that run
    that model's steps (their command line names ``<repo>/<model>-<step>/``). Shared pages are
    counted once per process, so the sum overstates the machine's real use a little."""
    mib = 1 / 1024
    kids = children(pid)
    per_model = {m: 0 for m in models}
    for k in kids:
        line = cmdline(k)
        for m in models:
            if re.search(rf"/{re.escape(m)}-(tokenizer|encoder|postprocess)/", line):
                per_model[m] += rss_kib(k)
    main, total_kids = rss_kib(pid), sum(rss_kib(k) for k in kids)
    return {
        "pid": pid,
        "processes": 1 + len(kids),
        "tritonserver_mib": round(main * mib, 1),
        "total_mib": round((main + total_kids) * mib, 1),
        "model_stubs_mib": {m: round(v * mib, 1) for m, v in per_model.items()},
    }
