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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .contract import EXECUTING_METRIC, LANE_SEPARATOR, model_names


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


def pip_tritonserver(binary: str | Path | None) -> bool:
    """Whether ``binary`` (None: the default) is the tritonserver of the nvidia-pytriton wheel, which needs
    the backend folder :func:`prepare_backends` writes and the wheel's libraries; an image's own
    (``/opt/tritonserver/bin/tritonserver``) has its backends next to it."""
    if binary is None:
        return True
    try:
        root = pytriton_root()
    except ServerError:
        return False
    return Path(binary).resolve().is_relative_to(root.resolve())


def server_env(pip_server: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    libs = Path(pytriton_root()).parent.parent / "nvidia_pytriton.libs" if pip_server else ""
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


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_HANDED_OUT: set[int] = set()  # free_port's answers in this process, never given twice
_HANDED_LOCK = threading.Lock()


def port_pool() -> range:
    """Where free ports are drawn: outside the kernel's ephemeral range, which every outgoing connection of
    every process draws its local port from (one took a test server's metrics port between the draw and
    tritonserver's bind, 2026-12-02); above 10000, clear of the usual services' ports."""
    try:
        lo, hi = (int(x) for x in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999  # Linux's default
    if lo - 10000 >= 2000:
        return range(10000, lo)
    if 65535 - hi >= 2000:
        return range(hi + 1, 65536)
    return range(1024, 65536)


def bindable(port: int, host: str = "127.0.0.1", reuse: bool = False) -> bool:
    """Whether a server could bind ``port`` now (``reuse``: with SO_REUSEADDR, as servers do)."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nobody listens on or connects from now, drawn at random from :func:`port_pool` (so that two
    processes drawing at once rarely meet; a server that finds it taken anyway starts again on new ones:
    ``TritonServer.on_free_ports``). Not the same twice in one process."""
    import random

    pool, draw = port_pool(), random.SystemRandom()
    for _ in range(200):
        port = draw.choice(pool)
        with _HANDED_LOCK:
            if port in _HANDED_OUT or not bindable(port) or not bindable(port, "0.0.0.0"):
                continue
            _HANDED_OUT.add(port)
            return port
    raise ServerError(f"no free port found in {pool.start}..{pool.stop - 1}")


def listening_ports(pid: int) -> set[int] | None:
    """The TCP ports process ``pid`` listens on, from /proc (its sockets' inodes in its net tables); None
    when /proc cannot tell (another user's process, no /proc)."""
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    except OSError:
        return None
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# Admin protocols Triton serves on the same ports as inference. Closed unless the caller presents
# the key: anyone who reaches the port could otherwise load and unload models, change logging,
# register shared memory or start traces. The gateway is the authenticated front door.
PORT_ATTEMPTS = 3  # starts of an on_free_ports server that found a port taken, each on new ports
STOP_AFTER_DRAIN_S = 5.0  # how long Triton may take to exit once a drain found nothing left
QUIET_READS = 3  # reads 0.1 s apart with nothing in flight and nothing finishing: a drain is done

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
    # The tritonserver to run: None is the nvidia-pytriton wheel's; an image's own (docker/entrypoint.sh
    # passes the one on PATH) keeps its own backend directory.
    tritonserver: str | None = None
    # Liveness (``health()``) fails once the server has not been able to serve for this long after it
    # first was: a pod the supervisor cannot heal is restarted by Kubernetes.
    live_bound_s: float = 60.0
    draining: bool = False
    proc: subprocess.Popen | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    _supervisor: Supervisor | None = None
    _watchdog: subprocess.Popen | None = None
    _unready_since: float | None = None
    _was_ready: bool = False
    _drained: bool = False  # a drain found nothing left in flight
    redraw_ports: bool = False  # a start that finds a port taken draws new ones (on_free_ports)
    _log_start: int = 0  # the log's size when tritonserver was last started

    @classmethod
    def on_free_ports(cls, model_repository: Path, **kw) -> TritonServer:
        """On ports :func:`free_port` draws; a start that loses one to another process (between the draw and
        Triton's bind) draws new ones and starts again, up to PORT_ATTEMPTS times."""
        srv = cls(model_repository, **kw)
        srv.redraw_ports = True
        srv.draw_ports()
        return srv

    def draw_ports(self) -> None:
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()

    def ports(self) -> dict[str, int]:
        """The ports tritonserver listens on once started: those its arguments do not turn off."""
        ports = {"grpc": self.grpc_port, "http": self.http_port, "metrics": self.metrics_port}
        args = list(self.extra_args)
        for i, arg in enumerate(args):
            for kind in list(ports):
                flag = f"--allow-{kind}"
                value = arg[len(flag) + 1 :] if arg.startswith(f"{flag}=") else None
                if arg == flag and i + 1 < len(args):
                    value = args[i + 1]
                if value is not None and value.lower() in ("false", "0", "off", "no"):
                    del ports[kind]
        return ports

    def listening(self) -> bool:
        """tritonserver itself listens on every one of its ports (Triton says ready once HTTP is up, before
        it binds the metrics port, and exits when that one is taken)."""
        if self.proc is None:
            return False
        have = listening_ports(self.proc.pid)
        return have is None or set(self.ports().values()) <= have

    def ports_taken(self) -> list[int]:
        """The ports this server's last start found in use: named by Triton's log, or not bindable now."""
        taken = set()
        if self.log_file and Path(self.log_file).exists():
            with open(self.log_file, "rb") as f:
                f.seek(self._log_start)
                tail = f.read().decode(errors="replace")
            for line in tail.splitlines():
                if "already in use" in line.lower():
                    taken |= {p for p in self.ports().values() if f":{p}" in line}
        host = "0.0.0.0" if self.host in ("0.0.0.0", "::") else self.host
        taken |= {p for p in self.ports().values() if not bindable(p, host, reuse=True)}
        return sorted(taken)

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

    @property
    def pip_server(self) -> bool:
        return pip_tritonserver(self.tritonserver)

    def serving(self) -> bool:
        """Every model can serve now: Triton ready, not draining, not recovering, and every Python stub the
        models started with alive (checked now in /proc, not at the supervisor's next poll)."""
        if not self.healthy or self.draining or (self.supervise and self._supervisor is None):
            return False  # (before its supervisor has counted the stubs, a dead one would go unseen)
        if self._supervisor is not None and not self._supervisor.complete():
            return False
        return self.ready()

    def health(self) -> tuple[bool, bool]:
        """(ready, live) as the pod's probes see them. Ready: :meth:`serving`. Live: false once the server,
        ready before, has not been able to serve for ``live_bound_s`` in a row (a stub that cannot be
        reloaded, a tritonserver that does not come back), so Kubernetes restarts the pod; while starting
        and while draining it is live."""
        ready = self.serving()
        now = time.monotonic()
        if ready:
            self._was_ready, self._unready_since = True, None
        elif self._unready_since is None:
            self._unready_since = now
        stuck = self._was_ready and not self.draining and self._unready_since is not None
        return ready, not (stuck and now - self._unready_since > self.live_bound_s)

    def command(self, backend_dir: Path | None) -> list[str]:
        restricted = f"{','.join(RESTRICTED)}:{ADMIN_HEADER}={self.admin_key}"
        binary = self.tritonserver or str(pytriton_root() / "bin" / "tritonserver")
        return [
            binary,
            f"--model-repository={Path(self.model_repository).resolve()}",
            *([f"--backend-directory={backend_dir}"] if backend_dir is not None else []),
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
        self._log_start = out.tell() if out is not None else 0
        # Its own process group: the stubs Triton forks join it, so one killpg removes them all.
        # PR_SET_PDEATHSIG: if this process dies, even by SIGKILL, the kernel stops Triton too.
        with SPAWN_LOCK:  # a Reaper does not take it for an orphan before it is self.proc
            self.proc = subprocess.Popen(
                self.command(Path(self._tmp.name) if self._tmp is not None else None),
                env=server_env(self.pip_server),
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
        with SPAWN_LOCK:
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
        if self.pip_server:
            self._tmp = tempfile.TemporaryDirectory(prefix="tembed-backends-")
            prepare_backends(Path(self._tmp.name))
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._spawn()
            try:
                self.wait_ready(timeout)
                break
            except ServerError as exc:
                exited = self.proc is not None  # (a timeout stopped it: not a port's doing)
                taken = self.ports_taken() if exited else []
                if not (self.redraw_ports and taken and attempt < PORT_ATTEMPTS):
                    if exited:
                        self.stop()
                    if taken:
                        raise ServerError(f"port(s) {taken} in use by another process: {exc}") from None
                    raise
                self.event(f"ports {taken} taken by another process; starting again on new ports")
                self.draw_ports()
        self.event("ready")
        if self.supervise:
            self._supervisor = Supervisor(self)
            self._supervisor.start()
        return self

    def event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))
        if not self.log_file:
            print(f"tembed supervisor: {what}", file=sys.stderr, flush=True)
        else:
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
            if self.ready() and self.listening():
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

    def metrics_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.metrics_port}/metrics"

    def in_flight(self) -> int:
        """Requests in Triton now, whoever sent them (an ensemble, a direct call to a tokenizer or an
        encoder, the gateway's /tokenize): those queued for a model (Triton's
        ``nv_inference_pending_request_count``) plus those a Python stub is executing (our
        ``EXECUTING_METRIC`` gauge, counted only for stubs alive now: a dead stub's series stays behind).
        Triton 2.51 counts nothing else in flight; an ensemble request between two steps, or executing in
        a C++ backend, is seen by :meth:`drain` as progress (completions still moving)."""
        return self._load()[0]

    def _load(self) -> tuple[int, int]:
        """(requests in flight, requests finished so far) from one read of Triton's metrics."""
        with urllib.request.urlopen(self.metrics_url(), timeout=5) as r:
            text = r.read().decode()
        alive = {str(pid) for pid in python_stubs(self.proc.pid)} if self.proc is not None else set()
        queued = executing = finished = 0
        for line in text.splitlines():
            if line.startswith("#") or "{" not in line:
                continue
            name, rest = line.split("{", 1)
            labels, _, value = rest.rpartition("} ")
            try:
                n = int(float(value))
            except ValueError:
                continue
            if name == "nv_inference_pending_request_count":
                queued += n
            elif name == EXECUTING_METRIC:
                pid = labels.split('pid="', 1)[1].split('"', 1)[0] if 'pid="' in labels else ""
                executing += n if pid in alive else 0
            elif name in ("nv_inference_request_success", "nv_inference_request_failure"):
                finished += n
        return queued + executing, finished

    def _admin(self, path: str) -> object:
        """POST ``path`` of Triton's restricted repository API (with the admin key); its JSON answer."""
        req = urllib.request.Request(f"{self.http_url}{path}", data=b"{}", headers=self.admin_headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def ensembles(self, states: tuple[str, ...] = ("READY",)) -> list[str]:
        """The served models (their ensembles, lanes too) in one of ``states``: names with a tokenizer next to them."""
        index = self._admin("/v2/repository/index")
        state = {m["name"]: m.get("state") for m in index if isinstance(m, dict)}  # type: ignore[union-attr]
        # A priority lane's ensemble (NAME-lane-low) is one too: it has NAME's tokenizer.
        return sorted(
            n
            for n, st in state.items()
            if st in states and model_names(n.split(LANE_SEPARATOR)[0])["tokenizer"] in state
        )

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
        """Wait (up to ``grace_s``) until no request is in flight (:meth:`in_flight`); returns how many still were.

        ``refuse_new``: first stop taking new requests (:meth:`refuse_new`), for a replica whose callers
        can go elsewhere; then returns how many ensembles were still unloading (still had requests).
        Without it (one server behind its own gateway, which drains first) requests keep being taken:
        a call sent in chunks one after another gets its next chunk served."""
        self.draining = True
        left = self._drain_refusing(grace_s) if refuse_new else self._drain_counting(grace_s)
        self._drained = left == 0
        return left

    def _drain_counting(self, grace_s: float) -> int:
        deadline, quiet, seen = time.monotonic() + grace_s, 0, None
        left = 0
        while time.monotonic() < deadline:
            try:
                left, finished = self._load()
            except (OSError, ValueError):
                return 0  # Triton is gone: nothing left to wait for
            # Idle: nothing queued or executing, and nothing finished, over QUIET_READS reads in a row
            # (a request between two ensemble steps is counted nowhere for a moment; one finishing shows).
            quiet = quiet + 1 if left == 0 and finished == seen else 0
            seen = finished
            if quiet >= QUIET_READS:
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
                if timeout is None:
                    # Drained with nothing left: Triton has nothing to wait for, but a model whose stub died
                    # with a request inside never finishes unloading, and Triton waited out its whole exit
                    # timeout for it (60 s after a healed stub, 2026-12-02). Past a short wait it is killed.
                    timeout = STOP_AFTER_DRAIN_S if self._drained else self.exit_timeout_s + 15
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.event(f"tritonserver still running {timeout:.0f}s after SIGTERM; killed")
                    self.proc.kill()
                    self.proc.wait()
            self._kill_group()
            self.event("stopped")
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def children(self) -> set[int]:
        """The processes this server started (tritonserver, the watchdog) that are still its to wait for."""
        return {p.pid for p in (self.proc, self._watchdog) if p is not None and p.returncode is None}

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


PR_SET_CHILD_SUBREAPER = 36
SPAWN_LOCK = threading.Lock()  # held while a child is started and recorded (TritonServer.children)


def become_subreaper() -> bool:
    """Make this process the one orphaned descendants are handed to (prctl PR_SET_CHILD_SUBREAPER), as PID 1
    is: a Triton stub whose tritonserver died becomes its child, so it must be waited for (Reaper)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def zombie_children(own: set[int]) -> dict[int, str]:
    """pid -> name of this process's children that have exited, not waited for, and are not in ``own``."""
    me, found = os.getpid(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if rest[0] in ("Z", "X") and int(rest[1]) == me:
            found[int(entry.name)] = name
    return found


class Reaper(threading.Thread):
    """Waits for the orphans handed to this process (PID 1 of a container, or a subreaper): the stubs of a
    tritonserver killed by -9 outlive it until the supervisor kills its group, and then stay zombies unless
    their new parent waits for them. The server's own children are left to their Popen (``children``)."""

    POLL_S = 0.5

    def __init__(self, server: TritonServer) -> None:
        super().__init__(name="tembed-reaper", daemon=True)
        self.server, self.reaped = server, 0
        self._halt = threading.Event()

    def reap(self) -> int:
        """Wait for every orphan that has exited now; how many there were."""
        with SPAWN_LOCK:
            dead = zombie_children(self.server.children())
            for pid, name in dead.items():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self.server.event(f"reaped orphan {pid} ({name})")
        self.reaped += len(dead)
        return len(dead)

    def run(self) -> None:
        while not self._halt.wait(self.POLL_S):
            with contextlib.suppress(Exception):  # a /proc read race: the next poll
                self.reap()

    def stop(self, settle_s: float = 2.0) -> None:
        """Stop polling, then reap what the server's stop left (killed processes take a moment to exit)."""
        self._halt.set()
        if self.is_alive():
            self.join(5)
        deadline = time.monotonic() + settle_s
        while self.reap() or time.monotonic() < deadline and self._orphans():
            time.sleep(0.05)

    def _orphans(self) -> bool:
        """Children of this process the server did not start, alive or not."""
        me, own = os.getpid(), self.server.children()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in own:
                st = _stat(int(entry.name))
                if st is not None and st[1] == me:
                    return True
        return False


STUB = "triton_python_backend_stub"


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of process ``pid`` from one /proc read; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _scan(parent: int) -> dict[int, tuple[str, int]]:
    """pid -> (model name, start time) of the live Python-backend stubs tritonserver ``parent`` runs: every
    process in /proc is read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (st := _stat(int(entry.name))) is None or st[1] != parent:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(STUB.encode()) and len(argv) > 1:  # (a zombie's cmdline is empty)
            # argv[1] is <repository>/<model>/<version>/model.py
            found[int(entry.name)] = (Path(argv[1].decode(errors="replace")).parent.parent.name, st[2])
    return found


def python_stubs(parent: int) -> dict[int, str]:
    """pid -> model name of the Python-backend stubs tritonserver ``parent`` runs (from /proc)."""
    return {pid: model for pid, (model, _) in _scan(parent).items()}


class Supervisor(threading.Thread):
    """Watches one TritonServer: reloads a model whose stub died, restarts a dead tritonserver.

    Each poll reads /proc only for the stubs it knows (one ``stat`` each: alive, still tritonserver's
    child, the same start time, so a reused pid is not taken for the stub), not the whole process table:
    scanning every process 4 times a second cost the launcher 25-37 ms of CPU a second on a machine with
    70 processes, taken from the encoder's two cores. The full scan (``_scan``) runs at start, after a
    reload or restart (to learn the new stubs), and when a known stub is gone."""

    POLL_S = 0.25

    def __init__(self, server: TritonServer) -> None:
        super().__init__(name="tembed-supervisor", daemon=True)
        self.server = server
        self.healthy = True
        self._halt = threading.Event()
        self._learn()
        self._expected = Counter(self._stubs.values())  # stubs per model when all is well

    def _learn(self) -> None:
        """The stubs tritonserver runs now (a full /proc scan), each with its start time; one assignment, so a
        probe's complete() on another thread sees the old stubs or the new ones."""
        self._known = _scan(self.server.proc.pid)

    @property
    def _stubs(self) -> dict[int, str]:
        return {pid: model for pid, (model, _) in self._known.items()}

    def _alive(self) -> dict[int, str]:
        """Those of the known stubs still running (one /proc read each)."""
        parent, out = self.server.proc.pid, {}
        for pid, (model, started) in self._known.items():
            st = _stat(pid)  # not a zombie, still tritonserver's child, not a reused pid
            if st is not None and st[0] not in "ZX" and st[1] == parent and st[2] == started:
                out[pid] = model
        return out

    def complete(self) -> bool:
        """Every model has, now, as many live stubs as it started with."""
        have = Counter(self._alive().values())
        return all(have[m] >= n for m, n in self._expected.items())

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(10)

    def run(self) -> None:
        failures = 0
        while not self._halt.wait(self.POLL_S if not failures else min(10.0, self.POLL_S * 2**failures)):
            try:
                self.check()
                failures = 0
            except Exception as exc:  # the supervisor must outlive any one failure; tries again, backing off
                failures += 1
                self.healthy = False
                self.server.event(f"supervisor error: {exc!r}")

    def check(self) -> None:
        srv = self.server
        if srv.proc.poll() is not None:
            self.healthy = False
            srv.event(f"tritonserver exited with code {srv.proc.returncode}; killing its stubs and restarting")
            srv._kill_group()
            srv._spawn()
            srv.wait_ready(180)
            self._learn()
            self._expected = Counter(self._stubs.values())
            srv.event("tritonserver restarted")
            self.healthy = True
            return
        alive = self._alive()
        have = Counter(alive.values())
        if len(alive) == len(self._known) and all(have[m] >= n for m, n in self._expected.items()):
            self.healthy = True
            return
        # A model is short of stubs when one of those seen died, or when a reload did not bring back
        # as many as it had (so a reload that failed is tried again at the next poll); the whole process
        # table says how many it has now.
        dead = {m for pid, (m, _) in self._known.items() if pid not in alive}
        self._learn()
        have = Counter(self._stubs.values())
        dead |= {m for m, n in self._expected.items() if have[m] < n}
        if not dead:
            self.healthy = True
            return
        self.healthy = False
        for model in sorted(dead):
            srv.event(f"stub of {model} died; reloading it")
            srv.load_model(model)
            srv.event(f"{model} reloaded")
        self._learn()
        have = Counter(self._stubs.values())
        self.healthy = all(have[m] >= self._expected[m] for m in dead)  # else the next poll retries


class HealthServer(ThreadingHTTPServer):
    """The pod's probes (``--health-port``): ``/health/ready`` 200 while every model can serve
    (:meth:`TritonServer.serving`: not while a stub is dead or being reloaded, nor while draining, unlike
    Triton's own ``/v2/health/ready``), ``/health/live`` 200 unless the server has not been able to serve
    for ``live_bound_s`` (:meth:`TritonServer.health`). Answers 503 otherwise, with the reason."""

    daemon_threads = True

    def __init__(self, srv: TritonServer, port: int) -> None:
        self.srv = srv
        host = srv.host if srv.host not in ("::",) else "0.0.0.0"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                ready, live = srv.health()
                answers = {"/health/ready": ready, "/health/live": live}
                if self.path not in answers:
                    self.send_error(404)
                    return
                ok = answers[self.path]
                body = b"ok\n" if ok else (b"draining\n" if srv.draining else b"cannot serve\n")
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:  # probes every few seconds: not in the log
                pass

        super().__init__((host, port), Handler)

    def start(self) -> HealthServer:
        threading.Thread(target=self.serve_forever, name="tembed-health", daemon=True).start()
        return self


def main(argv: list[str] | None = None) -> int:
    """A supervised tritonserver alone on a repository, as a replica (``python -m tembed_serving.supervisor``;
    the container's entrypoint): ``tembed serve`` adds the gateway. Arguments after ``--`` are tritonserver's
    own; its model repository, ports and addresses among them are read, the rest passed on."""
    ap = argparse.ArgumentParser(prog="python -m tembed_serving.supervisor", description=main.__doc__)
    add_server_args(ap)
    ap.add_argument("--tritonserver", help="the tritonserver binary (default: the nvidia-pytriton wheel's)")
    ap.add_argument(
        "--health-port", type=int, default=0, help="serve /health/ready and /health/live for probes here (0: off)"
    )
    ap.add_argument(
        "--live-bound-s",
        type=float,
        default=TritonServer.live_bound_s,
        help="/health/live fails once the server could not serve for this long",
    )
    ap.add_argument(
        "--subreaper",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("TEMBED_SUBREAPER", "") not in ("", "0"),
        help="take orphaned descendants (prctl PR_SET_CHILD_SUBREAPER) and reap them, as PID 1 always does "
        "(default: TEMBED_SUBREAPER; docker/entrypoint.sh passes it)",
    )
    ap.add_argument("triton_args", nargs=argparse.REMAINDER, help="-- then tritonserver's own arguments")
    args = ap.parse_args(argv)
    srv = server_from_args(args)
    srv.tritonserver = args.tritonserver
    srv.live_bound_s = args.live_bound_s
    read_triton_args(srv, args.triton_args[1:] if args.triton_args[:1] == ["--"] else args.triton_args)
    stop = threading.Event()

    def on_signal(signum, _frame):  # SIGTERM: what Docker and Kubernetes send
        print(f"{signal.Signals(signum).name}: refusing new requests, draining, then stopping", flush=True)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    health = HealthServer(srv, args.health_port).start() if args.health_port else None
    reaper = None
    if os.getpid() == 1 or (args.subreaper and become_subreaper()):
        reaper = Reaper(srv)
        reaper.start()
    try:
        srv.start()
        print(f"tritonserver ready (log: {args.log_file}): gRPC {srv.grpc_url}, HTTP {srv.http_url}", flush=True)
        while not stop.wait(0.5):  # the supervisor keeps Triton up meanwhile
            pass
    finally:
        if srv.proc is not None:
            # A replica: new requests go elsewhere at once, those in flight finish, then Triton stops.
            started = time.monotonic()
            left = srv.drain(srv.exit_timeout_s, refuse_new=True)
            if left:
                print(f"{left} models still had requests after {srv.exit_timeout_s}s", flush=True)
            print(f"drained in {time.monotonic() - started:.1f}s", flush=True)
        srv.stop()
        if reaper is not None:
            reaper.stop()
            print(f"reaped {reaper.reaped} orphaned processes", flush=True)
        if health is not None:
            health.shutdown()
            health.server_close()
    return 0


# tritonserver arguments the supervisor owns: read into the TritonServer (``attribute``, ``type``), not
# passed on twice.
TRITON_ARGS = {
    "model-repository": ("model_repository", Path),
    "grpc-port": ("grpc_port", int),
    "http-port": ("http_port", int),
    "metrics-port": ("metrics_port", int),
    "http-address": ("host", str),
    "grpc-address": ("host", str),
    "metrics-address": ("host", str),
    "exit-timeout-secs": ("exit_timeout_s", int),
    "log-verbose": ("log_verbose", int),
}


def read_triton_args(srv: TritonServer, argv: list[str]) -> None:
    """tritonserver's own arguments (``--name=value`` or ``--name value``): those in TRITON_ARGS set the
    server's fields, the rest go to ``extra_args`` (after the supervisor's own, so they win)."""
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in TRITON_ARGS and not eq and i + 1 < len(argv):
            value, eq = argv[i + 1], "="
            i += 1
        if name in TRITON_ARGS and eq:
            attr, kind = TRITON_ARGS[name]
            setattr(srv, attr, kind(value))
        else:
            rest.append(arg)
        i += 1
    srv.extra_args = [*srv.extra_args, *rest]


def add_server_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument(
        "--log-file", type=Path, default=Path(".cache/tritonserver.log"), help="server log ('-': this output)"
    )
    ap.add_argument(
        "--host",
        default="127.0.0.1",
        help="address Triton binds to (0.0.0.0 only on a private network: the gateway is the authenticated door)",
    )
    ap.add_argument("--admin-key", help="key for Triton's admin protocols (default: random, closed to everyone)")


def server_from_args(args: argparse.Namespace) -> TritonServer:
    """``--log-file -``: Triton's log and the supervisor's events on this process's output (a container's).
    No ``--admin-key``: ``TEMBED_ADMIN_KEY`` if set (docker/entrypoint.sh, the pod's Secret), else random."""
    if str(args.log_file) == "-":
        args.log_file = None
    else:
        args.log_file.parent.mkdir(parents=True, exist_ok=True)
    return TritonServer(
        args.model_repository,
        args.grpc_port,
        args.http_port,
        args.metrics_port,
        args.log_verbose,
        log_file=args.log_file,
        host=args.host,
        admin_key=args.admin_key or os.environ.get("TEMBED_ADMIN_KEY") or None,
    )


if __name__ == "__main__":
    raise SystemExit(main())
