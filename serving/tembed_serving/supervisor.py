"""Run the tritonserver that ships in the ``nvidia-pytriton`` wheel on a model repository.

Outside the NGC containers this is the only Triton build a pip install gives: it carries the
server, the Python backend and one backend stub per Python version. The stub has to match the
interpreter whose packages the Python models import, so it is copied into a private backend
folder next to the backend library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .contract import model_names


class ServerError(RuntimeError):
    """tritonserver could not be started or did not become ready."""


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - install problem
        raise ServerError("nvidia-pytriton is not installed: pip install nvidia-pytriton==0.7.0") from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def prepare_backends(dest: Path) -> Path:
    """Copy the Python backend with the stub for this interpreter into ``dest/python``."""
    root = pytriton_root()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"no Triton Python backend stub for Python {ver} in {stub.parent.parent}")
    py = dest / "python"
    py.mkdir(parents=True, exist_ok=True)
    for item in (root / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, py / item.name)
    shutil.copy2(stub, py / stub.name)
    return dest


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = Path(pytriton_root()).parent.parent / "nvidia_pytriton.libs"
    # The stub links libpython3.X; prefer this interpreter's own copy over the system one.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld = [p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(ld)
    # The stub's embedded interpreter ignores PYTHONPATH and builds sys.path from the first
    # `python3` on PATH: putting this interpreter's bin first makes its venv (and the editable
    # install of this package) what the Python models import.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Python models must never reach for a hub at run time.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Admin protocols Triton serves on the same ports as inference. Closed unless the caller presents
# the key: anyone who reaches the port could otherwise load and unload models, change logging,
# register shared memory or start traces. The gateway is the authenticated front door.
RESTRICTED = ("model-repository", "logging", "shared-memory", "trace")
ADMIN_HEADER = "tembed-admin-key"


@dataclass
class TritonServer:
    """A supervised tritonserver on one model repository; use as a context manager.

    Closed by default: it binds to ``host`` (127.0.0.1) and its admin protocols need ``admin_key``
    (random per server unless given). Supervised: a Python stub that dies has its model reloaded,
    a tritonserver that dies has its stubs killed and is started again; ``healthy`` is False in
    between. ``stop()`` lets in-flight requests finish (``exit_timeout_s``), then removes every
    process of the server's group and the backend folder.
    """

    model_repository: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_verbose: int = 0
    log_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    admin_key: str | None = None
    supervise: bool = True
    exit_timeout_s: int = 30
    proc: subprocess.Popen | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    _supervisor: Supervisor | None = None
    _watchdog: subprocess.Popen | None = None

    @classmethod
    def on_free_ports(cls, model_repository: Path, **kw) -> TritonServer:
        return cls(model_repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), **kw)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}" if self.host in ("0.0.0.0", "::") else f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.http_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """HTTP headers that open the admin protocols."""
        return {ADMIN_HEADER: self.admin_key or ""}

    @property
    def healthy(self) -> bool:
        """Running and not recovering from a dead stub or a restart."""
        return (
            self.proc is not None
            and self.proc.poll() is None
            and (self._supervisor is None or self._supervisor.healthy)
        )

    def command(self, backend_dir: Path) -> list[str]:
        restricted = f"{','.join(RESTRICTED)}:{ADMIN_HEADER}={self.admin_key}"
        return [
            str(pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={backend_dir}",
            f"--grpc-address={self.host}",
            f"--http-address={self.host}",
            f"--metrics-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--grpc-restricted-protocol={restricted}",
            f"--http-restricted-api={restricted}",
            # Explicit control: the supervisor reloads one model whose stub died, nothing else.
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *self.extra_args,
        ]

    def _spawn(self) -> None:
        out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115  (None: inherit)
        # Its own process group: the stubs Triton forks join it, so one killpg removes them all.
        # PR_SET_PDEATHSIG: if this process dies, even by SIGKILL, the kernel stops Triton too.
        self.proc = subprocess.Popen(
            self.command(Path(self._tmp.name)),
            env=server_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if out is not None:
            out.close()
        self._watch_group()

    def _watch_group(self) -> None:
        """A watchdog that kills Triton's whole process group once this process is gone, however it went.

        PR_SET_PDEATHSIG takes tritonserver down with this process, but not its stubs: a stub busy when
        its server died outlived it for good (the encoder's, 650 MiB, asleep under PID 1, after a kill -9
        of this launcher under load; idle stubs exit by themselves). The watchdog is a shell outside the
        group that waits for the end of its stdin, whose other end only this process holds (pipes are
        not inherited by the processes it starts), and then kills the group."""
        self._stop_watchdog()
        assert self.proc is not None
        self._watchdog = subprocess.Popen(
            ["sh", "-c", 'read -r _; kill -s KILL -- "-$0" 2>/dev/null', str(self.proc.pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the terminal's group does not reach it
        )

    def _stop_watchdog(self) -> None:
        """Done with the group it watches (removed by now): it kills what may be left of it, and exits."""
        if self._watchdog is not None:
            with contextlib.suppress(OSError):
                self._watchdog.stdin.close()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._watchdog.wait(5)
            self._watchdog = None

    def start(self, timeout: float = 180.0) -> TritonServer:
        if self.admin_key is None:
            self.admin_key = secrets.token_urlsafe(24)
        self._tmp = tempfile.TemporaryDirectory(prefix="tembed-backends-")
        prepare_backends(Path(self._tmp.name))
        self._spawn()
        self.wait_ready(timeout)
        self.event("ready")
        if self.supervise:
            self._supervisor = Supervisor(self)
            self._supervisor.start()
        return self

    def event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))
        if self.log_file:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(f"tembed supervisor: {what}\n")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                self._kill_group()
                raise ServerError(f"tritonserver exited with code {code}{self._log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f}s{self._log_tail()}")

    def load_model(self, name: str, timeout: float = 120.0) -> None:
        """Reload one model through the restricted repository API.

        Triton treats a load of a loaded, unchanged model as done (it returned in 1 ms with the dead
        stub still in place), also when the same config is sent again: the model's own config with a
        parameter that changes each time makes it a real reload, new instances and all, without
        writing to the repository."""
        with urllib.request.urlopen(f"{self.http_url}/v2/models/{name}/config", timeout=10) as r:
            config = json.load(r)
        config.setdefault("parameters", {})["tembed_reload"] = {"string_value": str(time.time_ns())}
        body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
        req = urllib.request.Request(
            f"{self.http_url}/v2/repository/models/{name}/load", data=body, headers=self.admin_headers, method="POST"
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if r.status != 200:
                raise ServerError(f"reloading {name}: HTTP {r.status}")

    def in_flight(self) -> int:
        """Ensemble requests that have entered their tokenizer and not yet finished, from Triton's
        statistics (tokenizer successes + failures - ensemble successes + failures). Triton 2.51
        has no in-flight counter, and on SIGTERM it refuses the next step of an ensemble already
        running, so the launcher waits for this to reach 0 first. Assumes the tokenizers are called
        through their ensembles: a direct caller only makes the drain wait out its grace."""
        with urllib.request.urlopen(f"{self.http_url}/v2/models/stats", timeout=5) as r:
            stats = json.load(r)
        done = {}
        for m in stats.get("model_stats", []):
            s = m.get("inference_stats", {})
            done[m["name"]] = (
                done.get(m["name"], 0) + s.get("success", {}).get("count", 0) + s.get("fail", {}).get("count", 0)
            )
        tokenizers = {model_names(n)["tokenizer"]: n for n in done}
        return sum(max(0, done[tok] - done[n]) for tok, n in tokenizers.items() if tok in done)

    def _admin(self, path: str) -> object:
        """POST ``path`` of Triton's restricted repository API (with the admin key); its JSON answer."""
        req = urllib.request.Request(f"{self.http_url}{path}", data=b"{}", headers=self.admin_headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def ensembles(self, states: tuple[str, ...] = ("READY",)) -> list[str]:
        """The served models (their ensembles) in one of ``states``: names with a tokenizer model next to them."""
        index = self._admin("/v2/repository/index")
        state = {m["name"]: m.get("state") for m in index if isinstance(m, dict)}  # type: ignore[union-attr]
        return sorted(n for n, st in state.items() if st in states and model_names(n)["tokenizer"] in state)

    def refuse_new(self) -> list[str]:
        """Stop taking new requests, and say so: unload every served ensemble (not the models it calls).

        Triton refuses new requests for an unloading model at once (NOT_FOUND "... has no available
        versions", which a client over several replicas and the gateway send to another replica), reports
        not ready meanwhile (``--strict-readiness``), and unloads the ensemble only once the requests
        already in it have finished: their next steps still find the tokenizer, encoder and postprocess
        loaded. Returns the ensembles being unloaded."""
        names = self.ensembles()
        for name in names:
            self._admin(f"/v2/repository/models/{name}/unload")
        self.event(f"refusing new requests: unloading {', '.join(names) or 'nothing'}")
        return names

    def drain(self, grace_s: float, refuse_new: bool = False) -> int:
        """Wait (up to ``grace_s``) until no ensemble request is in flight; returns how many still were.

        ``refuse_new``: first stop taking new requests (:meth:`refuse_new`), for a replica whose callers
        can go elsewhere; then returns how many ensembles were still unloading (still had requests).
        Without it (one server behind its own gateway, which drains first) requests keep being taken:
        a call sent in chunks one after another gets its next chunk served."""
        if refuse_new:
            return self._drain_refusing(grace_s)
        deadline, quiet = time.monotonic() + grace_s, 0
        left = 0
        while time.monotonic() < deadline:
            try:
                left = self.in_flight()
            except (OSError, ValueError):
                return 0  # Triton is gone: nothing left to wait for
            quiet = quiet + 1 if left == 0 else 0
            if quiet >= 2:
                return 0
            time.sleep(0.1)
        return left

    def _drain_refusing(self, grace_s: float) -> int:
        deadline = time.monotonic() + grace_s
        try:
            self.refuse_new()
            while True:
                busy = self.ensembles(("READY", "UNLOADING"))
                if not busy or time.monotonic() >= deadline:
                    return len(busy)
                time.sleep(0.1)
        except (OSError, ValueError):
            return 0  # Triton is gone: nothing left to wait for

    def _log_tail(self, n: int = 40) -> str:
        if not self.log_file or not Path(self.log_file).exists():
            return ""
        lines = Path(self.log_file).read_text(errors="replace").splitlines()[-n:]
        return "\n--- tritonserver log (tail) ---\n" + "\n".join(lines)

    def _kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Every process of the server's group: stubs outlive a crashed tritonserver otherwise."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
        self._stop_watchdog()

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop: Triton finishes in-flight requests (up to ``exit_timeout_s``), then exits;
        whatever of its group is left is killed, and the backend folder removed."""
        if self._supervisor is not None:
            self._supervisor.stop()
            self._supervisor = None
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout if timeout is not None else self.exit_timeout_s + 15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._kill_group()
            self.event("stopped")
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


STUB = "triton_python_backend_stub"


def python_stubs(parent: int) -> dict[int, str]:
    """pid -> model name of the Python-backend stubs tritonserver ``parent`` runs (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if argv and argv[0].endswith(STUB.encode()) and len(argv) > 1:
            # argv[1] is <repository>/<model>/<version>/model.py
            found[int(entry.name)] = Path(argv[1].decode(errors="replace")).parent.parent.name
    return found


class Supervisor(threading.Thread):
    """Watches one TritonServer: reloads a model whose stub died, restarts a dead tritonserver."""

    POLL_S = 0.25

    def __init__(self, server: TritonServer) -> None:
        super().__init__(name="tembed-supervisor", daemon=True)
        self.server = server
        self.healthy = True
        self._halt = threading.Event()
        self._stubs = python_stubs(server.proc.pid)
        self._expected = Counter(self._stubs.values())  # stubs per model when all is well

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(10)

    def run(self) -> None:
        while not self._halt.wait(self.POLL_S):
            try:
                self.check()
            except Exception as exc:  # the supervisor must outlive any one failure
                self.server.event(f"supervisor error: {exc!r}")

    def check(self) -> None:
        srv = self.server
        if srv.proc.poll() is not None:
            self.healthy = False
            srv.event(f"tritonserver exited with code {srv.proc.returncode}; killing its stubs and restarting")
            srv._kill_group()
            srv._spawn()
            srv.wait_ready(180)
            self._stubs = python_stubs(srv.proc.pid)
            self._expected = Counter(self._stubs.values())
            srv.event("tritonserver restarted")
            self.healthy = True
            return
        alive = python_stubs(srv.proc.pid)
        # A model is short of stubs when one of those seen died, or when a reload did not bring back
        # as many as it had (so a reload that failed is tried again at the next poll).
        have = Counter(alive.values())
        dead = {m for pid, m in self._stubs.items() if pid not in alive}
        dead |= {m for m, n in self._expected.items() if have[m] < n}
        if not dead:
            self._stubs = alive
            self.healthy = True
            return
        self.healthy = False
        for model in sorted(dead):
            srv.event(f"stub of {model} died; reloading it")
            srv.load_model(model)
            srv.event(f"{model} reloaded")
        self._stubs = python_stubs(srv.proc.pid)
        have = Counter(self._stubs.values())
        self.healthy = all(have[m] >= self._expected[m] for m in dead)  # else the next poll retries


def main(argv: list[str] | None = None) -> int:
    """Triton alone on a repository (``python -m tembed_serving.supervisor``); ``tembed serve`` adds the gateway."""
    ap = argparse.ArgumentParser(prog="python -m tembed_serving.supervisor", description=main.__doc__)
    add_server_args(ap)
    args = ap.parse_args(argv)
    srv = server_from_args(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        srv.start()
        print(f"tritonserver ready (log: {args.log_file}): gRPC {srv.grpc_url}, HTTP {srv.http_url}", flush=True)
        while not stop.wait(0.5):  # the supervisor keeps Triton up meanwhile
            pass
    finally:
        if srv.proc is not None:
            # A replica: new requests go elsewhere at once, those in flight finish, then Triton stops.
            left = srv.drain(srv.exit_timeout_s, refuse_new=True)
            if left:
                print(f"{left} models still had requests after {srv.exit_timeout_s}s", flush=True)
        srv.stop()
    return 0


def add_server_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--log-file", type=Path, default=Path(".cache/tritonserver.log"), help="server log")
    ap.add_argument(
        "--host",
        default="127.0.0.1",
        help="address Triton binds to (0.0.0.0 only on a private network: the gateway is the authenticated door)",
    )
    ap.add_argument("--admin-key", help="key for Triton's admin protocols (default: random, closed to everyone)")


def server_from_args(args: argparse.Namespace) -> TritonServer:
    args.log_file.parent.mkdir(parents=True, exist_ok=True)
    return TritonServer(
        args.model_repository,
        args.grpc_port,
        args.http_port,
        args.metrics_port,
        args.log_verbose,
        log_file=args.log_file,
        host=args.host,
        admin_key=args.admin_key,
    )


if __name__ == "__main__":
    raise SystemExit(main())
