"""Run the tritonserver that ships in the ``nvidia-pytriton`` wheel on a model repository.

Outside the NGC containers this is the only Triton build a pip install gives: it carries the
server, the Python backend and one backend stub per Python version. The stub has to match the
interpreter whose packages the Python models import, so it is copied into a private backend
folder next to the backend library.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


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


@dataclass
class TritonServer:
    """A tritonserver process on one model repository; use as a context manager."""

    model_repository: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    log_verbose: int = 0
    log_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    @classmethod
    def on_free_ports(cls, model_repository: Path, **kw) -> TritonServer:
        return cls(model_repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), **kw)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self, backend_dir: Path) -> list[str]:
        return [
            str(pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={backend_dir}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *self.extra_args,
        ]

    def start(self, timeout: float = 180.0) -> TritonServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="tembed-backends-")
        backend_dir = prepare_backends(Path(self._tmp.name))
        out = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115  (None: inherit)
        self.proc = subprocess.Popen(
            self.command(backend_dir), env=server_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready(timeout)
        return self

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
                raise ServerError(f"tritonserver exited with code {self.proc.returncode}{self._log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver not ready after {timeout:.0f}s{self._log_tail()}")

    def _log_tail(self, n: int = 40) -> str:
        if not self.log_file or not Path(self.log_file).exists():
            return ""
        lines = Path(self.log_file).read_text(errors="replace").splitlines()[-n:]
        return "\n--- tritonserver log (tail) ---\n" + "\n".join(lines)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> TritonServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Triton alone on a repository (``python -m tembed_serving.server``); ``tembed serve`` adds the gateway."""
    ap = argparse.ArgumentParser(prog="python -m tembed_serving.server", description=main.__doc__)
    add_server_args(ap)
    args = ap.parse_args(argv)
    srv = server_from_args(args)
    try:
        srv.start()
        print(f"tritonserver ready (log: {args.log_file}): gRPC {srv.grpc_url}, HTTP {srv.http_url}", flush=True)
        srv.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


def add_server_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--log-file", type=Path, default=Path(".cache/tritonserver.log"), help="server log")


def server_from_args(args: argparse.Namespace) -> TritonServer:
    args.log_file.parent.mkdir(parents=True, exist_ok=True)
    return TritonServer(
        args.model_repository,
        args.grpc_port,
        args.http_port,
        args.metrics_port,
        args.log_verbose,
        log_file=args.log_file,
    )


if __name__ == "__main__":
    raise SystemExit(main())
