"""Timing probes for the GPU latency bench (``bench/gpu_triton.py latency``): where a c=1 query's time goes
inside a Python stub, without changing the served code.

``probe_repository`` rewrites the ``model.py`` of each Python model of a written repository so that Triton
loads :func:`probed` versions of the same classes: each ``execute`` and each runner call is timed (the runner's
GPU forward between two ``torch.cuda.synchronize``) and appended as one JSON line to a file per stub process.
At load each stub also times the same two micro-benchmarks as :func:`environment` does in the bench process
(a pure-Python loop, and tiny CUDA kernel launches), so an interpreter or launch-speed difference between the
stub's embedded Python and the bench's shows up as a number.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

MODEL_PY = '''"""Triton Python model, probed for the GPU latency bench (tembed_bench.gpu_probe)."""

from {module} import TritonPythonModel as _Model
from tembed_bench.gpu_probe import probed

TritonPythonModel = probed(_Model, {folder!r})
'''


def _sync(device) -> None:
    import torch

    if device is not None and getattr(device, "type", "") == "cuda":
        torch.cuda.synchronize(device)


def environment(device: str | None = None) -> dict:
    """Micro-benchmarks of this process: a pure-Python loop (ms, best of 5) and the host cost of one tiny
    CUDA kernel launch (us, best of 3 x 500 launches), with the interpreter and torch's CPU threads."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        sum(i * i for i in range(200_000))
        best = min(best, time.perf_counter() - t0)
    out: dict = {"python": sys.version.split()[0], "executable": sys.executable, "py_loop_ms": best * 1e3}
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        if device and device.startswith("cuda") and torch.cuda.is_available():
            x = torch.zeros(16, device=device)
            launch = float("inf")
            for _ in range(3):
                torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                for _ in range(500):
                    x.add_(1.0)
                torch.cuda.synchronize(device)
                launch = min(launch, (time.perf_counter() - t0) / 500)
            out["launch_us"] = launch * 1e6
    except Exception as exc:  # noqa: BLE001 - a probe must never stop a stub
        out["error"] = repr(exc)
    return out


class TimedRunner:
    """A runner that records, per call, the whole call and its GPU forwards (``encode``, synchronised)."""

    def __init__(self, runner, sink):
        self.runner, self.sink = runner, sink
        self.forward_s = 0.0
        self.device = getattr(runner, "device", None)
        encode = getattr(runner, "encode", None)
        if encode is not None:

            def timed_encode(ids, mask):
                _sync(self.device)
                t0 = time.perf_counter()
                out = encode(ids, mask)
                _sync(self.device)
                self.forward_s += time.perf_counter() - t0
                return out

            runner.encode = timed_encode
        self.graphed = 0
        self.graphs = graphs = getattr(runner, "graphs", None)  # runners.torch.CudaGraphs, or None
        if graphs is not None:  # a graph replay is the forward too

            def timed_graphs(ids):
                _sync(self.device)
                t0 = time.perf_counter()
                out = graphs(ids)
                _sync(self.device)
                self.forward_s += time.perf_counter() - t0
                self.graphed += out is not None
                return out

            runner.graphs = timed_graphs

    def __call__(self, *args):
        self.forward_s, self.graphed = 0.0, 0
        t0 = time.perf_counter()
        out = self.runner(*args)
        total = time.perf_counter() - t0
        rows = sum(int(a.shape[0]) for a in args[0])
        record = {"kind": "runner", "rows": rows, "runner_ms": total * 1e3, "forward_ms": self.forward_s * 1e3}
        record |= {"graphed": self.graphed, "graph_failed": getattr(self.graphs, "failed", None)}
        self.sink(record)
        return out

    def __getattr__(self, name):
        return getattr(self.runner, name)


def probed(cls, folder: str):
    """``cls`` (a Triton Python model class of tembed_serving) whose execute and runner are timed into
    ``folder/<model>.<pid>.jsonl``."""

    class Probed(cls):
        def initialize(self, args):
            self._probe_path = Path(folder) / f"{args['model_name']}.{os.getpid()}.jsonl"
            super().initialize(args)
            runner = getattr(self, "runner", None)
            device = str(getattr(runner, "device", "")) or None
            self._sink({"kind": "env", "model": args["model_name"], **environment(device)})
            if runner is not None:
                self.runner = TimedRunner(runner, self._sink)

        def _sink(self, record: dict) -> None:
            record["t"] = time.time()
            with open(self._probe_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

        def execute(self, requests):
            t0 = time.perf_counter()
            out = super().execute(requests)
            self._sink({"kind": "execute", "requests": len(requests), "execute_ms": (time.perf_counter() - t0) * 1e3})
            return out

    Probed.__name__ = Probed.__qualname__ = "TritonPythonModel"
    return Probed


def probe_repository(repo: Path, folder: Path) -> list[str]:
    """Point every tembed Python model of ``repo`` at its probed class; the models rewritten."""
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for model_py in sorted(Path(repo).glob("*/1/model.py")):
        text = model_py.read_text(encoding="utf-8")
        if "tembed_bench.gpu_probe" in text:
            done.append(model_py.parent.parent.name)
            continue
        for line in text.splitlines():
            if line.startswith("from tembed_serving.triton.") and "import TritonPythonModel" in line:
                module = line.split()[1]
                model_py.write_text(MODEL_PY.format(module=module, folder=str(folder)), encoding="utf-8")
                done.append(model_py.parent.parent.name)
                break
    return done


def read_probes(folder: Path, since: float, until: float) -> dict[str, dict[str, list[dict]]]:
    """model -> kind -> records stamped within [since, until] (env records whatever their time)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(Path(folder).glob("*.jsonl")):
        model = path.name.rsplit(".", 2)[0]
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec["kind"] == "env" or since <= rec["t"] <= until:
                out.setdefault(model, {}).setdefault(rec["kind"], []).append(rec)
    return out
