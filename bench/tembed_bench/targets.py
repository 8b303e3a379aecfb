"""What the harness measures, each behind one call: ``embed(request)`` (a list of ``Item``; returns the
target's own seconds when it timed itself, else None) and ``vectors(request)`` for the parity check.
``concurrent``: whether several requests may be in flight (a server) or one at a time (in-process).

``open_target(name, ...)`` starts what a target needs (servers.py) on an ExitStack."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from pathlib import Path

import numpy as np

from tembed_client.contract import INPUT_TYPE

from . import servers
from .data import Item

# The CPU engines Infinity 0.0.78 offers; each is a target of its own.
INFINITY_ENGINES = ("torch", "optimum", "ctranslate2")
# Our encoder in-process in each CPU runtime and precision we serve (--backend python-onnx, python-openvino):
# name -> (runner, int8 method (tembed.quantize) or None for fp32, the system's name in the tables).
# raw-openvino-int8 is the method the export's gate keeps for e5-small on an AVX-512 VNNI CPU (the first of
# DEFAULT_METHODS["openvino"] within 0.5 points); raw-openvino-int8-all quantises every linear layer.
RAW = {
    "raw": ("onnxruntime", None, "raw ORT (in-process)"),
    "raw-openvino": ("openvino", None, "raw OpenVINO (in-process)"),
    "raw-openvino-int8": ("openvino", "nncf-ffn-fp32", "raw OpenVINO int8 NNCF, FFN down fp32 (in-process)"),
    "raw-openvino-int8-all": ("openvino", "nncf", "raw OpenVINO int8 NNCF, every linear (in-process)"),
}
# triton-one-step: the same encoder as `tembed export --layout one-step` serves it (one batched Python step), in
# a tritonserver of its own.
TARGETS = (*RAW, "triton", "triton-one-step", "gateway", *(f"infinity-{e}" for e in INFINITY_ENGINES), "st", "st-onnx")


class Raw:
    """The ceiling: our tokenizer (prompt, bucketing) and our encoder runner in-process (ONNX Runtime, or
    ``runner="openvino"``; ``graph``: another ONNX file than the repository's), one call per request."""

    name, concurrent = "raw ORT (in-process)", False
    min_cosine = 0.999  # to our fp32 encoder: what the harness notes as differing

    def __init__(
        self,
        repo: Path,
        model: str = servers.MODEL,
        threads: int = 2,
        runner: str = "onnxruntime",
        graph: Path | None = None,
        **ort_options,
    ) -> None:
        from tembed_serving.contract import Layout
        from tembed_serving.profile import ModelProfile
        from tembed_serving.runners.openvino import OpenVinoEncoder
        from tembed_serving.runners.ort import OrtEncoder, OrtOptions
        from tembed_serving.textproc import TextEncoder

        layout = Layout(repo, model)
        profile = ModelProfile.load(layout.profile_file)
        self.tok = TextEncoder(profile, layout.tokenizer_file)
        options = OrtOptions(intra_op_threads=threads, **ort_options)
        cls = {"onnxruntime": OrtEncoder, "openvino": OpenVinoEncoder}[runner]
        self.enc = cls(
            graph or layout.onnx_file,
            pad_token_id=profile.pad_token_id,
            padding_side=profile.padding_side,
            options=options,
        )

    def tokens(self, items: list[Item]) -> int:
        return int(self.tok([i.text for i in items], items[0].input_type).token_count.sum())

    def vectors(self, items: list[Item]) -> np.ndarray:
        b = self.tok([i.text for i in items], items[0].input_type)
        return self.enc([b.input_ids], [b.attention_mask])[0]

    embed = vectors


class SentenceTransformers:
    name, concurrent = "sentence-transformers (in-process)", False

    def __init__(self, model: str = servers.MODEL, threads: int = 2) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.st = SentenceTransformer(str(servers.FIXTURES / model), device="cpu")

    def vectors(self, items: list[Item]) -> np.ndarray:
        return self.st.encode([i.text for i in items], prompt_name=items[0].input_type, batch_size=len(items))

    embed = vectors


class Triton:
    name, concurrent = "tembed Triton (gRPC)", True

    def __init__(self, url: str, model: str = servers.MODEL, name: str | None = None) -> None:
        from tembed_client import EmbeddingClient

        self.client = EmbeddingClient(url, model)
        self.name = name or self.name

    def vectors(self, items: list[Item]) -> np.ndarray:
        return self.client.embed([i.text for i in items], input_type=items[0].input_type)

    embed = vectors


class _Http:
    """POST JSON on keep-alive connections, one per thread (uvicorn drops idle ones: reconnect once)."""

    def __init__(self, port: int) -> None:
        self.port, self._local = port, threading.local()

    def post(self, path: str, body: dict) -> dict:
        import http.client

        data = json.dumps(body)
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None) or http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            self._local.conn = conn
            try:
                conn.request("POST", path, data, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {raw[:300]!r}")
        return json.loads(raw)


class Gateway(_Http):
    """The OpenAI-compatible gateway (its own process) over HTTP: what the ``openai`` package sends."""

    name, concurrent = "tembed gateway (HTTP)", True

    def __init__(self, url: str, model: str = servers.MODEL) -> None:
        super().__init__(int(url.rsplit(":", 1)[1]))
        self.model = model

    def vectors(self, items: list[Item]) -> np.ndarray:
        body = {"model": self.model, "input": [i.text for i in items], INPUT_TYPE: items[0].input_type}
        rows = self.post("/v1/embeddings", {**body, "encoding_format": "base64"})["data"]
        return np.stack([np.frombuffer(base64.b64decode(r["embedding"]), "<f4") for r in rows])

    embed = vectors


class Infinity(_Http):
    """Infinity's ``/embeddings``; it does not know e5's prompts, so they are sent with the texts."""

    concurrent = True
    PROMPTS = {"query": "query: ", "document": "passage: "}

    def __init__(self, port: int, model_dir: Path, engine: str) -> None:
        super().__init__(port)
        self.model_id, self.name = str(model_dir.resolve()), f"Infinity ({engine})"

    def vectors(self, items: list[Item]) -> np.ndarray:
        body = {"model": self.model_id, "input": [self.PROMPTS[i.input_type] + i.text for i in items]}
        rows = sorted(self.post("/embeddings", body)["data"], key=lambda d: d["index"])
        return np.array([r["embedding"] for r in rows], dtype=np.float32)

    embed = vectors


class STWorker:
    """sentence-transformers' ONNX backend in the peers' venv; its latency is the worker's own encode
    time, without the pipe."""

    concurrent = False

    def __init__(self, proc, version: str, backend: str) -> None:
        self.proc, self.name = proc, f"sentence-transformers {version} {backend.upper()} (in-process)"

    def _ask(self, items: list[Item], vectors: bool) -> dict:
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
        got = self._ask(items, True)
        return np.frombuffer(base64.b64decode(got["vectors"]), dtype="<f4").reshape(got["shape"])


def open_target(name: str, stack: contextlib.ExitStack, repo: Path, threads: int, shared: dict):
    """Start target ``name`` (one of ``TARGETS``) on ``stack``. ``shared`` keeps what targets share
    (the tritonserver the gateway fronts) and the pids whose CPU the harness reads."""
    pids = shared.setdefault("pids", {})
    if name in RAW:
        runner, int8, system = RAW[name]
        t = Raw(repo, threads=threads, runner=runner, graph=servers.int8_graph(repo, int8) if int8 else None)
        t.name = system
        if int8:  # int8 vectors are near ours, not equal: the gate measures what that costs in retrieval
            t.min_cosine = 0.98
        return t
    if name == "st":
        return SentenceTransformers(threads=threads)
    if name == "triton-one-step":
        from tembed_serving.contract import LAYOUT_ONE_STEP

        one = servers.export_repo(repo.with_name(f"{repo.name}-one-step"), threads=threads, layout=LAYOUT_ONE_STEP)
        srv = stack.enter_context(servers.triton(one))
        pids["tritonserver-one-step"] = srv.proc.pid
        return Triton(srv.grpc_url, name="tembed Triton one-step (gRPC)")
    if name in ("triton", "gateway"):
        if "triton" not in shared:
            shared["triton"] = srv = stack.enter_context(servers.triton(repo))
            pids["tritonserver"] = srv.proc.pid
        url = shared["triton"].grpc_url
        if name == "triton":
            return Triton(url)
        gw_url, pids["gateway"] = stack.enter_context(servers.gateway([url]))
        return Gateway(gw_url)
    folder = servers.infinity_model_folder(servers.WORK / "e5-with-onnx")  # Infinity's optimum, ST's ONNX
    if name.startswith("infinity-"):
        engine = name.removeprefix("infinity-")
        port, pids[f"infinity-{engine}"] = stack.enter_context(servers.infinity(engine, folder, threads))
        return Infinity(port, folder, engine)
    if name == "st-onnx":
        proc, version = stack.enter_context(servers.st_worker(folder, "onnx", threads))
        pids["st-onnx"] = proc.pid
        return STWorker(proc, version, "onnx")
    raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")
