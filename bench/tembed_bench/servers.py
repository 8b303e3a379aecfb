"""Starting and stopping what the bench measures: our repository and tritonserver, the gateway, and
the peers (Infinity's engines, sentence-transformers' ONNX backend in the peers' venv). Each is a
context manager that yields once the server answers and removes every process it started."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tembed_serving.contract import ATTENTION_MASK, INPUT_IDS, Layout

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("TEMBED_FIXTURES", ROOT / "fixtures"))
WORK = ROOT / ".cache" / "bench"
MODEL = "multilingual-e5-small"
PEERS = ROOT / ".venv-infinity" / "bin"


def export_repo(
    repo: Path, model: str = MODEL, *, threads: int = 2, queue_delay_us: int | None = None, layout: str | None = None
) -> Path:
    """Export ``model`` into ``repo`` once (reused while its ONNX graph is there), int32 ids, in ``layout``
    (None: the export's default)."""
    from tembed.pipeline import ExportOptions, export_model
    from tembed.repository import ServingOptions

    if not Layout(repo, model).onnx_file.exists():
        delay = ServingOptions.max_queue_delay_us if queue_delay_us is None else queue_delay_us
        serving = ServingOptions(intra_op_threads=threads, max_queue_delay_us=delay)
        given = {"layout": layout} if layout else {}
        options = ExportOptions(ids_dtype="int32", serving=serving, validate=False, **given)
        export_model(FIXTURES / model, repo, options)
    return repo


def int8_graph(repo: Path, method: str, model: str = MODEL) -> Path:
    """``model``'s graph in ``repo`` quantised by the int8 ``method`` (tembed.quantize; ``nncf-ffn-fp32`` is what
    ``--backend python-openvino --quantize int8`` keeps for e5-small on a VNNI CPU), once: reused while the file
    is there. The bench does not run the gate; the export does."""
    from tembed.quantize import METHODS_BY_NAME, quantize
    from tembed_serving.profile import ModelProfile

    layout = Layout(repo, model)
    out = WORK / f"{model}-{method}" / "model.onnx"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        profile = ModelProfile.load(layout.profile_file)
        quantize(layout.onnx_file, out.with_suffix(".tmp"), METHODS_BY_NAME[method], profile, layout.tokenizer_file)
        out.with_suffix(".tmp").replace(out)
    return out


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


@contextlib.contextmanager
def triton(repo: Path, log_file: Path | None = None, **kw) -> Iterator:
    """tritonserver on ``repo`` (free ports, 127.0.0.1): the ``TritonServer``, with ``proc.pid``."""
    from tembed_serving.supervisor import TritonServer

    log_file = log_file or WORK / f"tritonserver-{repo.name}.log"
    with TritonServer.on_free_ports(repo, log_file=log_file, **kw) as srv:
        yield srv


def _wait_http(proc: subprocess.Popen, port: int, path: str, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log else ""
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[0]} not ready on port {port} after {timeout:.0f}s (log: {log})")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen, group: bool = True) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15) if group else proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9) if group else proc.kill()
        proc.wait()


@contextlib.contextmanager
def gateway(triton_urls: list[str], *, own_process: bool = True, **settings) -> Iterator[tuple[str, int]]:
    """The OpenAI-compatible gateway on a free port: its URL and pid. In its own process by default
    (``python -m tembed_gateway``), so it shares no GIL with the load and its CPU can be read from
    /proc; ``own_process=False`` runs ``GatewayThread`` in this process (pid: this one's)."""
    from tembed_serving.supervisor import free_port

    if not own_process:
        from tembed_gateway import GatewaySettings, GatewayThread

        urls = {"triton_urls": tuple(triton_urls)} if len(triton_urls) > 1 else {"triton_url": triton_urls[0]}
        gw = GatewayThread(GatewaySettings(**urls, **settings)).start()
        try:
            yield gw.url, os.getpid()
        finally:
            gw.stop()
        return
    port = free_port()
    cmd = [sys.executable, "-m", "tembed_gateway", "--port", str(port), "--log-level", "warning"]
    cmd += [x for u in triton_urls for x in ("--triton", u)]
    if settings.get("model_repository"):
        cmd += ["--model-repository", str(settings["model_repository"])]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        _wait_http(proc, port, "/health", 60, None)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        _stop(proc)


@contextlib.contextmanager
def infinity(engine: str, model_dir: Path, threads: int = 2, batch_size: int = 32) -> Iterator[tuple[int, int]]:
    """Infinity in the peers' venv (it pins torch/transformers/optimum of its own): port and pid.

    Its optimum engine writes an optimised graph and its ctranslate2 engine a converted model into the
    Hugging Face cache: pointed at ``.cache/bench/hf-cache``, so nothing lands in the user's cache."""
    from tembed_serving.supervisor import free_port

    exe = PEERS / "infinity_emb"
    if not exe.exists():
        raise RuntimeError(f"{exe} missing: make .venv-infinity/.installed")
    port, log = free_port(), WORK / f"infinity-{engine}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    env["HF_HUB_CACHE"] = str(WORK / "hf-cache")
    env["OMP_NUM_THREADS"] = str(threads)  # torch's and ctranslate2's pools; ORT's default is the cores
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(exe), "v2", "--model-id", str(model_dir.resolve()), "--port", str(port), "--engine", engine]
    cmd += ["--device", "cpu", "--batch-size", str(batch_size), "--no-model-warmup"]
    # The model's own pooling (1_Pooling: mean): left at "auto", Infinity's optimum engine pools the CLS
    # token (its code reads "mean if mean else cls"), and its vectors are not e5's (cosine ~0.88).
    cmd += ["--pooling-method", "mean"]
    if engine == "torch":
        cmd.append("--no-bettertransformer")  # BetterTransformer is deprecated; plain SDPA is what runs
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(proc, port, "/health", 600, log)
        yield port, proc.pid
    finally:
        _stop(proc)


@contextlib.contextmanager
def st_worker(folder: Path, backend: str = "onnx", threads: int = 2) -> Iterator[tuple[subprocess.Popen, str]]:
    """``st_worker.py`` in the peers' venv (its ONNX backend needs optimum, whose pins clash with
    ours): the process, talking JSON lines on stdin/stdout, and its sentence-transformers version."""
    exe, log = PEERS / "python", WORK / f"st-{backend}.log"
    if not exe.exists():
        raise RuntimeError(f"{exe} missing: make .venv-infinity/.installed")
    cmd = [str(exe), str(Path(__file__).with_name("st_worker.py")), str(folder), "--backend", backend]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop("VIRTUAL_ENV", None)
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [*cmd, "--threads", str(threads)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
        )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError(f"sentence-transformers worker exited with code {proc.wait()} (log: {log})")
        yield proc, json.loads(line)["version"]
    finally:
        if proc.stdin:
            proc.stdin.close()
        _stop(proc, group=False)


def infinity_model_folder(out: Path, model: str = MODEL) -> Path:
    """The model folder plus ``onnx/model.onnx`` (token states out), which Infinity's optimum engine
    requires (it does not export a folder that has no ONNX file: "No onnx files found") and which
    sentence-transformers' ONNX backend loads as it is (optimum's layout): exported here, never fetched."""
    onnx_path = out / "onnx" / "model.onnx"
    if onnx_path.exists():
        return out
    import torch
    from transformers import AutoModel

    src = FIXTURES / model
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
