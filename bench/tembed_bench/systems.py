"""The systems under comparison, each behind one call: embed one request (a list of texts)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tembed_serving.contract import ATTENTION_MASK, INPUT_IDS, Layout

from .data import Item

ROOT = Path(__file__).resolve().parents[2]
MODEL = "multilingual-e5-small"


def export_repo(repo: Path, model: str = MODEL, *, threads: int = 2, queue_delay_us: int | None = None) -> Path:
    """Export ``model`` into ``repo`` once (reused while its ONNX graph is there), int32 ids."""
    from tembed.pipeline import ExportOptions, export_model
    from tembed.repository import ServingOptions

    if not Layout(repo, model).onnx_file.exists():
        delay = ServingOptions.max_queue_delay_us if queue_delay_us is None else queue_delay_us
        serving = ServingOptions(intra_op_threads=threads, max_queue_delay_us=delay)
        export_model(ROOT / "fixtures" / model, repo, ExportOptions(ids_dtype="int32", serving=serving, validate=False))
    return repo


def variant_repo(base: Path, dest: Path, encoder: dict[str, str], params: dict[str, str]) -> Path:
    """A copy of ``base`` (hard links) whose encoder config has other fields/parameters."""
    from tembed.repository import parse, render

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base, dest, copy_function=os.link)
    path = Layout(dest, MODEL).model_dir("encoder") / "config.pbtxt"
    cfg = parse(path.read_text())
    if "delay_us" in encoder:
        cfg.dynamic_batching.max_queue_delay_microseconds = int(encoder["delay_us"])
    if "instances" in encoder:
        cfg.instance_group[0].count = int(encoder["instances"])
    for k, v in params.items():
        cfg.parameters[k].string_value = v
    path.unlink()  # a hard link: do not write through to the base copy
    path.write_text(render(cfg))
    return dest


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

    def vectors(self, items: list[Item]) -> np.ndarray:
        b = self.tok([i.text for i in items], items[0].input_type)
        return self.enc([b.input_ids], [b.attention_mask])[0]


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

    def vectors(self, items: list[Item]) -> np.ndarray:
        return self.st.encode([i.text for i in items], prompt_name=items[0].input_type, batch_size=len(items))


class Triton:
    name = "tembed Triton (gRPC)"
    concurrent = True

    def __init__(self, url: str, model: str = MODEL) -> None:
        from tembed_client import EmbeddingClient

        self.client = EmbeddingClient(url, model)

    def embed(self, items: list[Item]) -> None:
        self.client.embed([i.text for i in items], input_type=items[0].input_type)

    def vectors(self, items: list[Item]) -> np.ndarray:
        return self.client.embed([i.text for i in items], input_type=items[0].input_type)


@contextlib.contextmanager
def triton_server(repo: Path, log_file: Path) -> Iterator[Triton]:
    from tembed_serving.supervisor import TritonServer

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

    def _post(self, items: list[Item]) -> bytes:
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
        return data

    def embed(self, items: list[Item]) -> None:
        self._post(items)

    def vectors(self, items: list[Item]) -> np.ndarray:
        rows = sorted(json.loads(self._post(items))["data"], key=lambda d: d["index"])
        return np.array([r["embedding"] for r in rows], dtype=np.float32)


INFINITY_BIN = ROOT / ".venv-infinity" / "bin" / "infinity_emb"


@contextlib.contextmanager
def infinity_server(
    engine: str,
    log_file: Path,
    model_dir: Path,
    batch_size: int = 32,
    timeout: float = 600,
    threads: int = 2,
    pooling: str = "mean",
) -> Iterator[Infinity]:
    """Infinity in its own venv (it pins torch/transformers/optimum of its own), on a free port.

    Its optimum engine writes an optimised graph and its ctranslate2 engine a converted model into the
    Hugging Face cache: pointed at ``.cache/`` beside the log, so nothing lands in the user's cache."""
    from tembed_serving.supervisor import free_port

    if not INFINITY_BIN.exists():
        raise RuntimeError(
            f"{INFINITY_BIN} missing: python3.11 -m venv .venv-infinity"
            " && .venv-infinity/bin/pip install -r bench/requirements-infinity.txt"
        )
    port, model_id = free_port(), str(Path(model_dir).resolve())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    env["HF_HUB_CACHE"] = str(Path(log_file).resolve().parent / "hf-cache")
    env["OMP_NUM_THREADS"] = str(threads)  # torch's and ctranslate2's pools; ORT's default is the cores
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(INFINITY_BIN), "v2", "--model-id", model_id, "--port", str(port), "--engine", engine]
    cmd += ["--device", "cpu", "--batch-size", str(batch_size), "--no-model-warmup"]
    # The model's own pooling (1_Pooling: mean): left at "auto", Infinity's optimum engine pools the CLS
    # token (its code reads "mean if mean else cls"), and its vectors are not e5's (cosine ~0.88).
    cmd += ["--pooling-method", pooling]
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


PEERS_PYTHON = ROOT / ".venv-infinity" / "bin" / "python"


class SentenceTransformersWorker:
    """sentence-transformers with another backend (ONNX), run by the peers' venv (``st_worker.py``):
    the ONNX backend needs optimum, whose pins clash with this venv's transformers. Latency is the
    worker's own encode time (in-process, without the pipe)."""

    concurrent = False

    def __init__(self, proc: subprocess.Popen, version: str, backend: str) -> None:
        self.proc, self.name = proc, f"sentence-transformers {version} {backend.upper()} (in-process)"

    def _ask(self, items: list[Item], vectors: bool) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        req = {"texts": [i.text for i in items], "prompt_name": items[0].input_type, "vectors": vectors}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the sentence-transformers worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def embed(self, items: list[Item]) -> float:
        return float(self._ask(items, False)["seconds"])

    def vectors(self, items: list[Item]) -> np.ndarray:
        import base64

        got = self._ask(items, True)
        return np.frombuffer(base64.b64decode(got["vectors"]), dtype="<f4").reshape(got["shape"])


@contextlib.contextmanager
def st_worker(
    folder: Path, log_file: Path, backend: str = "onnx", threads: int = 2
) -> Iterator[SentenceTransformersWorker]:
    if not PEERS_PYTHON.exists():
        raise RuntimeError(f"{PEERS_PYTHON} missing: make .venv-infinity/.installed")
    cmd = [str(PEERS_PYTHON), str(Path(__file__).with_name("st_worker.py")), str(folder)]
    cmd += ["--backend", backend, "--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop("VIRTUAL_ENV", None)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            tail = "\n".join(Path(log_file).read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"sentence-transformers worker exited with code {proc.wait()}:\n{tail}")
        yield SentenceTransformersWorker(proc, json.loads(line)["version"], backend)
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def infinity_model_folder(out: Path, model: str = MODEL) -> Path:
    """The model folder plus ``onnx/model.onnx`` (token states out), which Infinity's optimum engine
    requires (it does not export a folder that has no ONNX file: "No onnx files found") and which
    sentence-transformers' ONNX backend loads as it is (optimum's layout): exported here, never fetched."""
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
