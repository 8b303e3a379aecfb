"""The serving runtime installs and serves alone: a fresh venv with only ``tembed-serving`` and its
declared dependencies (the client's contract, numpy, tokenizers, onnxruntime, tritonserver) serves an
exported repository correctly. This is what the serving image installs; ``tembed`` (export, torch,
transformers, onnx) must not be needed there."""

from __future__ import annotations

import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT, TEXTS, copy_served

pytestmark = [pytest.mark.slow, pytest.mark.isolated]  # a venv and a launcher of its own
MODEL = "multilingual-e5-small"


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("runtime-venv")
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    cmd = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*cmd, str(ROOT / "client"), f"{ROOT / 'serving'}[triton]"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return py


def test_runtime_venv_holds_no_build_time_packages(runtime_python):
    probe = (
        "import importlib.util as u; print([m for m in ('tembed', 'torch', 'transformers', 'onnx') if u.find_spec(m)])"
    )
    out = subprocess.run([str(runtime_python), "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_runtime_venv_serves_an_exported_repository(runtime_python, model_repository, references, tmp_path):
    from tembed_client import EmbeddingClient
    from tembed_serving.supervisor import free_port

    repo = tmp_path / "repo"
    copy_served(model_repository, repo, MODEL)
    grpc, http, metrics = free_port(), free_port(), free_port()
    log = tmp_path / "tritonserver.log"
    cmd = [str(runtime_python), "-m", "tembed_serving.supervisor", "--model-repository", str(repo)]
    cmd += ["--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics), "--log-file", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        ready = ""
        while time.monotonic() < deadline and "tritonserver ready" not in ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            ready += line
        assert "tritonserver ready" in ready, ready + (log.read_text()[-3000:] if log.exists() else "")
        with EmbeddingClient(f"127.0.0.1:{grpc}", MODEL) as client:
            served = client.embed(TEXTS, input_type="query")
        expected = references(MODEL).encode(TEXTS, prompt_name="query", normalize_embeddings=True)
        cos = (served * expected).sum(-1)
        assert cos.min() >= 0.9999, cos
        assert np.allclose(np.linalg.norm(served, axis=-1), 1.0, atol=1e-5)
    finally:
        proc.send_signal(2)  # SIGINT: the launcher stops tritonserver and its stubs
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, sys.stderr
