"""The systems under comparison, each behind one call: embed one request (a list of texts)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tembed_serving.contract import ATTENTION_MASK, INPUT_IDS, Layout

from .data import Item

ROOT = Path(__file__).resolve().parents[2]
MODEL = "multilingual-e5-small"


def export_repo(repo: Path, model: str = MODEL, *, threads: int = 2, queue_delay_us: int = 0) -> Path:
    """Export ``model`` into ``repo`` once (reused while its ONNX graph is there), int32 ids."""
    from tembed.pipeline import ExportOptions, export_model
    from tembed.repository import ServingOptions

    if not Layout(repo, model).onnx_file.exists():
        serving = ServingOptions(intra_op_threads=threads, max_queue_delay_us=queue_delay_us)
        export_model(ROOT / "fixtures" / model, repo, ExportOptions(ids_dtype="int32", serving=serving, validate=False))
    return repo


class Raw:
    """The ceiling: our tokenizer (prompt, bucketing) and OrtEncoder in-process, one call per request."""

    name = "raw ORT (in-process)"
    concurrent = False

    def __init__(self, repo: Path, model: str = MODEL, threads: int = 2, **ort_options) -> None:
        from tembed_serving.profile import ModelProfile
        from tembed_serving.runners.ort import OrtEncoder, OrtOptions
        from tembed_serving.textproc import TextEncoder

        layout = Layout(repo, model)
        profile = ModelProfile.load(layout.profile_file)
        self.tok = TextEncoder(profile, layout.tokenizer_file)
        self.enc = OrtEncoder(
            layout.onnx_file,
            pad_token_id=profile.pad_token_id,
            padding_side=profile.padding_side,
            options=OrtOptions(intra_op_threads=threads, **ort_options),
        )

    def embed(self, items: list[Item]) -> None:
        b = self.tok([i.text for i in items], items[0].input_type)
        self.enc([b.input_ids], [b.attention_mask])


class SentenceTransformers:
    name = "sentence-transformers (in-process)"
    concurrent = False

    def __init__(self, model: str = MODEL, threads: int = 2) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.st = SentenceTransformer(str(ROOT / "fixtures" / model), device="cpu")

    def embed(self, items: list[Item]) -> None:
        self.st.encode([i.text for i in items], prompt_name=items[0].input_type, batch_size=len(items))


class Triton:
    name = "tembed Triton (gRPC)"
    concurrent = True

    def __init__(self, url: str, model: str = MODEL) -> None:
        from tembed_client import EmbeddingClient

        self.client = EmbeddingClient(url, model)

    def embed(self, items: list[Item]) -> None:
        self.client.embed([i.text for i in items], input_type=items[0].input_type)


@contextlib.contextmanager
def triton_server(repo: Path, log_file: Path) -> Iterator[Triton]:
    from tembed_serving.server import TritonServer

    with TritonServer.on_free_ports(repo, log_file=log_file) as srv:
        yield Triton(srv.grpc_url)


class Infinity:
    """Infinity's OpenAI-style ``/embeddings`` over HTTP keep-alive, one connection per thread."""

    concurrent = True
    # Infinity does not know e5's prompts: send them, so every system embeds the same strings.
    PROMPTS = {"query": "query: ", "document": "passage: "}

    def __init__(self, port: int, model_id: str, engine: str) -> None:
        self.port, self.model_id, self.name = port, model_id, f"Infinity ({engine})"
        self._local = threading.local()

    def embed(self, items: list[Item]) -> None:
        body = json.dumps({"model": self.model_id, "input": [self.PROMPTS[i.input_type] + i.text for i in items]})
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            try:
                conn.request("POST", "/embeddings", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                # uvicorn drops keep-alive connections idle for 5 s (a thread waiting its turn): reconnect once.
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        if resp.status != 200:
            raise RuntimeError(f"infinity: HTTP {resp.status}: {data[:300]!r}")


INFINITY_BIN = ROOT / ".venv-infinity" / "bin" / "infinity_emb"


@contextlib.contextmanager
def infinity_server(
    engine: str, log_file: Path, model_dir: Path, batch_size: int = 32, timeout: float = 300
) -> Iterator[Infinity]:
    """Infinity in its own venv (it pins torch/transformers/optimum of its own), on a free port."""
    from tembed_serving.server import free_port

    if not INFINITY_BIN.exists():
        raise RuntimeError(
            f"{INFINITY_BIN} missing: python3.11 -m venv .venv-infinity"
            " && .venv-infinity/bin/pip install -r bench/requirements-infinity.txt"
        )
    port, model_id = free_port(), str(Path(model_dir).resolve())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(INFINITY_BIN), "v2", "--model-id", model_id, "--port", str(port), "--engine", engine]
    cmd += ["--device", "cpu", "--batch-size", str(batch_size), "--no-model-warmup"]
    if engine == "torch":
        cmd.append("--no-bettertransformer")  # BetterTransformer is deprecated; plain SDPA is what runs
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = "\n".join(Path(log_file).read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"infinity exited with code {proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"infinity not ready after {timeout:.0f}s (log: {log_file})")
            time.sleep(1)
        yield Infinity(port, model_id, engine)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def infinity_model_folder(out: Path, model: str = MODEL) -> Path:
    """The model folder plus ``onnx/model.onnx`` (token states out), which Infinity's optimum engine
    requires: it does not export a folder that has no ONNX file ("No onnx files found")."""
    onnx_path = out / "onnx" / "model.onnx"
    if onnx_path.exists():
        return out
    import torch
    from transformers import AutoModel

    src = ROOT / "fixtures" / model
    out.mkdir(parents=True, exist_ok=True)
    for f in src.rglob("*"):
        if f.is_file() and f.suffix != ".onnx":
            dest = out / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                dest.symlink_to(f)
    backbone = AutoModel.from_pretrained(src).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    onnx_path.parent.mkdir(exist_ok=True)
    ids = torch.ones((2, 12), dtype=torch.int64)
    axes = {0: "batch_size", 1: "sequence_length"}
    with torch.inference_mode():
        torch.onnx.export(
            Hidden(),
            (ids, ids),
            str(onnx_path),
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=["last_hidden_state"],
            dynamic_axes={INPUT_IDS: axes, ATTENTION_MASK: axes, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )
    return out
