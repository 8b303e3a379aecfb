"""Where each millisecond of a request goes: a latency budget of the default model's ensemble, from
Triton's own per-model statistics and traces, the client's clock and the same encoder run in-process.

    python -m tembed_bench.budget                     # ~4 min on 2 cores
    python -m tembed_bench.budget --quick             # well under a minute: checks that it works
    python -m tembed_bench.budget --profile-gateway   # and where the gateway's CPU goes (py-spy)

For (a) single short queries, one at a time, and (b) the mixed load of ``tembed_bench.compare`` (requests
of 16 texts, 8 in flight), it reads ``get_inference_statistics`` for the ensemble and each composing
model around each timed call (a) or the whole run (b), times the client's own request path in its
pieces (``TimedClient``), runs our tokenizer and ONNX Runtime encoder in-process on the same inputs, and
reads the CPU seconds of every process (client, tritonserver, each Python stub, the gateway). Some of
the single queries are sent again with Triton's TIMESTAMPS traces on: one timeline per request on the
client's clock, which splits the gRPC part into the way there and the way back. Then the gateway's added
time for the same single queries. Writes a record (tembed_bench.record); a full run renders it into
docs/BENCHMARKS.md (region ``budget``) and docs/budget.png.

How Triton accounts a Python-backend step (python_backend ``ProcessRequests``, tritonserver 2.51):
``queue`` is the wait in the model's scheduler; ``compute_input`` builds the responses and copies the
input tensors into the stub's shared memory; ``compute_infer`` runs from handing the batch to the stub
(message queue) until the stub's answer is back, so it holds the IPC both ways, the stub's unpacking
into ``pb_utils`` objects, ``model.py``'s ``execute`` and the copy of the outputs into shared memory;
``compute_output`` copies the outputs into Triton's response and sends it on — the ensemble starts the
next step inside that send (after the last step, the response goes to the front end). The ensemble
reports its own ``queue`` and ``success`` (the whole request inside Triton); its ``compute_*`` are the
sums of its steps'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tembed_client.contract import INPUT_TYPE

from . import data, procs, record, render, servers
from .data import Item
from .floor import ONE as FLOOR_ONE
from .floor import TWO as FLOOR_TWO
from .floor import FloorClient
from .floor import write_repo as write_floor_repo
from .stats import summary
from .targets import Raw

FIELDS = ("success", "queue", "compute_input", "compute_infer", "compute_output")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


# ---------------------------------------------------------------------------------------------- Triton's numbers
@dataclass
class ModelStats:
    """One model's cumulative counters (``get_inference_statistics``), or the difference of two."""

    count: int = 0  # successful requests
    ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    executions: int = 0
    busy_ns: int = 0  # sum over executions (batches) of compute_infer: how long the model was busy

    def combine(self, other: ModelStats, sign: int) -> ModelStats:
        return ModelStats(
            self.count + sign * other.count,
            {k: self.ns[k] + sign * other.ns[k] for k in FIELDS},
            self.executions + sign * other.executions,
            self.busy_ns + sign * other.busy_ns,
        )

    def __sub__(self, other: ModelStats) -> ModelStats:
        return self.combine(other, -1)

    def __add__(self, other: ModelStats) -> ModelStats:
        return self.combine(other, 1)

    def ms(self, what: str, per: int) -> float:
        """Mean milliseconds of ``what`` over ``per`` requests."""
        return self.ns[what] / 1e6 / max(per, 1)


def parse_stats(stats: dict) -> dict[str, ModelStats]:
    """``get_inference_statistics(as_json=True)``: numbers come as strings, absent fields are {}."""
    out = {}
    for m in stats.get("model_stats", []):
        inf = m.get("inference_stats", {})
        out[m["name"]] = ModelStats(
            count=int(inf.get("success", {}).get("count", 0)),
            ns={k: int(inf.get(k, {}).get("ns", 0)) for k in FIELDS},
            executions=int(m.get("execution_count", 0)),
            busy_ns=sum(int(b.get("compute_infer", {}).get("ns", 0)) for b in m.get("batch_stats", [])),
        )
    return out


@dataclass
class Snapshot:
    """Triton's statistics and the CPU seconds of each process, at one moment or over a span."""

    stats: dict[str, ModelStats]
    cpu: dict[str, float]

    def __sub__(self, other: Snapshot) -> Snapshot:
        stats = {k: v - other.stats.get(k, ModelStats()) for k, v in self.stats.items()}
        return Snapshot(stats, {k: v - other.cpu.get(k, 0.0) for k, v in self.cpu.items()})

    def __add__(self, other: Snapshot) -> Snapshot:
        zero = ModelStats()
        keys = dict.fromkeys([*self.stats, *other.stats])
        stats = {k: self.stats.get(k, zero) + other.stats.get(k, zero) for k in keys}
        cpu = {k: self.cpu.get(k, 0.0) + other.cpu.get(k, 0.0) for k in dict.fromkeys([*self.cpu, *other.cpu])}
        return Snapshot(stats, cpu)


CLIENT = "client (this process)"


class Counters:
    """Reads a :class:`Snapshot`: the server's statistics and the CPU seconds of this process,
    tritonserver and its stubs (found once: a stub restarted meanwhile would be missed)."""

    def __init__(self, stats_client, server_pid: int) -> None:
        self.client, self.pids = stats_client, procs.tree(server_pid)
        self.pids[server_pid] = "tritonserver"

    def read(self, since: Snapshot | None = None, requests: int = 0) -> Snapshot:
        """A span's start (``since`` None) reads the statistics first and this process's clock last;
        its end the other way round, so the reading's own work (a stats RPC, /proc) stays outside the
        span. Triton counts a request only after its response has left, model by model: the start
        waits until every model has counted the same requests (nothing of an earlier call still on its
        way), the end until each has counted ``requests`` more than at ``since``."""
        stats = self.settled() if since is None else None
        cpu: dict[str, float] = {CLIENT: time.process_time()}
        for pid, label in self.pids.items():
            cpu[label] = cpu.get(label, 0.0) + procs.cpu_seconds(pid)
        if since is None:
            cpu[CLIENT] = time.process_time()
        if stats is None:
            assert since is not None
            stats = self.settled({k: v.count + requests for k, v in since.stats.items()})
        return Snapshot(stats, cpu)

    def settled(self, want: dict[str, int] | None = None, wait_s: float = 5.0) -> dict[str, ModelStats]:
        """The statistics once every model's request count is ``want`` (or, without it, once all
        models of the ensemble show the same count); as they are after ``wait_s`` otherwise."""
        deadline = time.monotonic() + wait_s
        while True:
            stats = self.stats()
            counts = {k: v.count for k, v in stats.items()}
            done = all(counts.get(k, 0) >= n for k, n in want.items()) if want else len(set(counts.values())) <= 1
            if done or time.monotonic() > deadline:
                return stats
            time.sleep(0.001)

    def stats(self) -> dict[str, ModelStats]:
        return parse_stats(self.client.get_inference_statistics(as_json=True))


# ---------------------------------------------------------------------------------------------- the client, timed
PIECES = ("build", "serialise", "rpc", "parse")


class TimedClient:
    """``EmbeddingClient.encode``'s own path (``Call`` from tembed_client, then what tritonclient's
    ``InferenceServerClient.infer`` does), cut at its seams: build the request (validation, numpy,
    ``InferInput``), build and serialise the protobuf, the RPC on a bytes-in/bytes-out channel (so
    gRPC's (de)serialisation is not inside it), parse the response (protobuf, ``InferResult``,
    ``Call.finish``). One chunk per call (requests here are within ``max_texts``). Times on
    ``time.monotonic_ns`` (CLOCK_MONOTONIC), the clock of Triton's trace timestamps (steady_clock)."""

    def __init__(self, url: str, info) -> None:
        import grpc

        self.info = info
        size = 2**31 - 1  # tritonclient's MAX_GRPC_MESSAGE_SIZE
        opts = [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
        self.channel = grpc.insecure_channel(url, options=opts)
        self.rpc = self.channel.unary_unary(MODEL_INFER)  # no serializers: bytes in, bytes out

    def embed(self, items: list[Item]) -> tuple[np.ndarray, dict[str, float]]:
        from tritonclient.grpc import InferResult, service_pb2
        from tritonclient.grpc._utils import _get_inference_request

        from tembed_client.calls import Call

        t0 = time.monotonic_ns()
        call = Call.prepare(self.info, [i.text for i in items], input_type=items[0].input_type)
        ((_, kw),) = call.requests()
        t1 = time.monotonic_ns()
        request = _get_inference_request(
            model_name=kw["model_name"],
            inputs=kw["inputs"],
            model_version="",
            request_id="",
            outputs=kw["outputs"],
            sequence_id=0,
            sequence_start=False,
            sequence_end=False,
            priority=0,
            timeout=None,
            parameters=None,
        )
        payload = request.SerializeToString()
        t2 = time.monotonic_ns()
        raw = self.rpc(payload, timeout=300)
        t3 = time.monotonic_ns()
        result = call.finish([InferResult(service_pb2.ModelInferResponse.FromString(raw))])
        t4 = time.monotonic_ns()
        self.last = (t0, t2, t3, t4)  # start, RPC sent, RPC answered, done: to match Triton's traces
        return result.embeddings, dict(
            zip(PIECES, ((t1 - t0) / 1e9, (t2 - t1) / 1e9, (t3 - t2) / 1e9, (t4 - t3) / 1e9))
        )

    def close(self) -> None:
        self.channel.close()


class InProcess:
    """Our tokenizer and ONNX Runtime encoder in this process (``targets.Raw``), each timed."""

    def __init__(self, repo: Path, threads: int) -> None:
        self.raw = Raw(repo, threads=threads)

    def embed(self, items: list[Item]) -> tuple[np.ndarray, dict[str, float]]:
        """The embeddings, and seconds: tokenize, ort (wall) and cpu (this process's CPU for both: the
        same work's CPU, to set beside the stubs')."""
        c0, t0 = time.process_time(), time.perf_counter()
        b = self.raw.tok([i.text for i in items], items[0].input_type)
        t1 = time.perf_counter()
        (emb,) = self.raw.enc([b.input_ids], [b.attention_mask])
        t2 = time.perf_counter()
        return emb, {"tokenize": t1 - t0, "ort": t2 - t1, "cpu": time.process_time() - c0}


# ---------------------------------------------------------------------------------------------- the budget
@dataclass
class Part:
    group: str  # client, gRPC, ensemble, or a step (tokenizer, encoder, postprocess)
    name: str
    ms: float


def step_label(ensemble: str, model: str) -> str:
    return model[len(ensemble) + 1 :] if model.startswith(ensemble + "-") else model


def budget_parts(
    client_ms: dict[str, float],
    stats: dict[str, ModelStats],
    ensemble: str,
    steps: list[str],
    inproc_ms: dict[str, tuple[str, float]] | None = None,
) -> list[Part]:
    """One request's mean milliseconds, in the order they are spent; they add up to the client's
    mean wall time by construction (two parts are differences: gRPC + front end, ensemble scheduling).

    ``client_ms``: mean of each of ``PIECES``; ``stats``: deltas over the run; ``inproc_ms``: per
    step label, (what, ms) of the same work run in-process, which splits the step's compute_infer."""
    ens = stats[ensemble]
    n = ens.count
    total = ens.ms("success", n)
    step_sum = sum(stats[s].ms(k, n) for s in steps for k in FIELDS[1:])
    parts = [
        Part("client", "build request (validate, numpy, InferInput)", client_ms["build"]),
        Part("client", "protobuf: build + serialise", client_ms["serialise"]),
        Part("gRPC", "gRPC both ways + Triton's front end", client_ms["rpc"] - total),
        Part("ensemble", "ensemble queue", ens.ms("queue", n)),
        Part("ensemble", "ensemble scheduling between steps", total - ens.ms("queue", n) - step_sum),
    ]
    for s in steps:
        st, label = stats[s], step_label(ensemble, s)
        parts += [
            Part(label, f"{label}: queue", st.ms("queue", n)),
            Part(label, f"{label}: inputs to the stub (compute_input)", st.ms("compute_input", n)),
        ]
        infer = st.ms("compute_infer", n)
        if inproc_ms and label in inproc_ms:
            what, ms = inproc_ms[label]
            parts += [
                Part(label, f"{label}: {what} (same inputs, in-process)", ms),
                Part(label, f"{label}: stub (IPC, pb_utils, model.py)", infer - ms),
            ]
        else:
            parts.append(Part(label, f"{label}: stub (compute_infer)", infer))
        parts.append(Part(label, f"{label}: outputs back (compute_output)", st.ms("compute_output", n)))
    parts.append(Part("client", "response: parse protobuf, as_numpy", client_ms["parse"]))
    return parts


# ---------------------------------------------------------------------------------------------- Triton's traces
def read_traces(path: Path) -> list[dict]:
    """Triton's trace file (``--trace-config triton,file=``, level TIMESTAMPS): per top-level request,
    its timestamps and its children's (the ensemble's steps), each ``{"model", "ts": {name: ns}}``."""
    by_id: dict[int, dict] = {}
    for f in sorted(path.parent.glob(path.name + "*")):  # one file, or .0, .1, ... with log_frequency
        for e in json.loads(f.read_text() or "[]"):
            t = by_id.setdefault(e["id"], {"model": None, "parent": None, "ts": {}, "children": []})
            if "model_name" in e:
                t["model"], t["parent"] = e["model_name"], e.get("parent_id")
            for stamp in e.get("timestamps", []):
                t["ts"][stamp["name"]] = int(stamp["ns"])
    for t in by_id.values():
        if t["parent"] in by_id:
            by_id[t["parent"]]["children"].append(t)
    tops = [t for t in by_id.values() if t["parent"] is None and "GRPC_WAITREAD_END" in t["ts"]]
    for t in tops:
        t["children"].sort(key=lambda c: c["ts"]["REQUEST_START"])
    return sorted(tops, key=lambda t: t["ts"]["GRPC_WAITREAD_END"])


def timeline(trace: dict, client: tuple[int, int, int, int], ensemble: str) -> list[Part]:
    """One request along its own clock: the client's stamps (start, RPC sent, RPC answered, done) and
    Triton's, consecutive, so the parts add up to the client's wall time exactly. A step's
    ``compute_output`` sends its response on, and the ensemble starts the next step from inside that
    call: the hand-off row holds both."""
    t0, sent, answered, done = client
    ts = trace["ts"]
    parts = [
        Part("client", "client: build + serialise the request", sent - t0),
        Part("gRPC", "gRPC in: client send → server has read it", ts["GRPC_WAITREAD_END"] - sent),
        Part("gRPC", "front end: request → ensemble", ts["REQUEST_START"] - ts["GRPC_WAITREAD_END"]),
    ]
    prev, prev_label = ts["REQUEST_START"], None
    for step in trace["children"]:
        c, label = step["ts"], step_label(ensemble, step["model"])
        what = (
            f"{prev_label} outputs → {label} (compute_output + ensemble hand-off)"
            if prev_label
            else f"ensemble → {label}"
        )
        parts += [
            Part(prev_label or "ensemble", what, c["REQUEST_START"] - prev),
            Part(label, f"{label}: queue", c["COMPUTE_START"] - c["REQUEST_START"]),
            Part(label, f"{label}: inputs to the stub", c["COMPUTE_INPUT_END"] - c["COMPUTE_START"]),
            Part(label, f"{label}: stub (compute_infer)", c["COMPUTE_OUTPUT_START"] - c["COMPUTE_INPUT_END"]),
        ]
        prev, prev_label = c["COMPUTE_OUTPUT_START"], label
    parts += [
        Part(
            prev_label or "ensemble",
            f"{prev_label} outputs → response to the front end",
            ts["INFER_RESPONSE_COMPLETE"] - prev,
        ),
        Part("gRPC", "front end: response protobuf", ts["GRPC_SEND_START"] - ts["INFER_RESPONSE_COMPLETE"]),
        Part("gRPC", "gRPC out: server send → client has it", answered - ts["GRPC_SEND_START"]),
        Part("client", "client: parse the response", done - answered),
    ]
    return [Part(p.group, p.name, p.ms / 1e6) for p in parts]  # ns -> ms


def match_traces(traces: list[dict], stamps: list[tuple[int, int, int, int]]) -> list[tuple[dict, tuple]]:
    """Each client call with the trace whose request the server read while that call's RPC was out."""
    out = []
    for s in stamps:
        t = next((t for t in traces if s[1] <= t["ts"]["GRPC_WAITREAD_END"] <= s[2]), None)
        if t is not None and "INFER_RESPONSE_COMPLETE" in t["ts"] and "GRPC_SEND_START" in t["ts"]:
            out.append((t, s))
    return out


def mean_parts(runs: list[list[Part]]) -> tuple[list[Part], dict[str, float]]:
    """Per part name: the mean over runs (a Part) and the median (by name)."""
    names = list(dict.fromkeys(p.name for r in runs for p in r))
    groups = {p.name: p.group for r in runs for p in r}
    vals = {n: [next((p.ms for p in r if p.name == n), 0.0) for r in runs] for n in names}
    return [Part(groups[n], n, float(np.mean(vals[n]))) for n in names], {n: float(np.median(vals[n])) for n in names}


def ensemble_steps(stats_client, ensemble: str) -> list[str]:
    cfg = stats_client.get_model_config(ensemble, as_json=True)["config"]
    return [s["model_name"] for s in cfg["ensemble_scheduling"]["step"]]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1), b.reshape(-1)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------------------------- the runs
def single_queries(
    timed: TimedClient,
    plain,
    inproc: InProcess,
    counters: Counters,
    queries: list[list[Item]],
    warm: int,
    floor: FloorClient | None = None,
) -> dict:
    """Each query three ways, interleaved and in rotating order (timed path, ``EmbeddingClient.encode``,
    in-process), so a busy moment on the machine hits all three alike. Triton's statistics and the CPU
    counters are read just before and after each timed call: the server parts are those calls' own.
    With ``floor``, two more: the machine's floor (``tembed_bench.floor``) with one and with two Python
    steps, the last busy as long as ONNX Runtime took in-process on the query before."""
    text = lambda q: [i.text for i in q]  # noqa: E731
    ort: list[float] = []
    for q in queries[:warm]:
        timed.embed(q)
        plain.encode(text(q), input_type=q[0].input_type)
        ort.append(inproc.embed(q)[1]["ort"])
        if floor is not None:
            for model in (FLOOR_ONE, FLOOR_TWO):
                floor.call(model, text(q), q[0].input_type, ort[-1])
    floor_walls: dict[str, list[float]] = {FLOOR_ONE: [], FLOOR_TWO: []}
    pieces: dict[str, list[float]] = {k: [] for k in PIECES}
    plain_wall, tok, cos, inproc_cpu = [], [], [], []
    ort_warm = len(ort)
    spans: Snapshot | None = None
    for n, q in enumerate(queries):
        got: dict = {}

        def via_timed(q: list[Item] = q, got: dict = got) -> None:
            before = counters.read()
            got["emb"], got["pieces"] = timed.embed(q)
            got["span"] = counters.read(before, requests=1) - before

        def via_client(q: list[Item] = q) -> None:
            t = time.perf_counter()
            plain.encode(text(q), input_type=q[0].input_type)
            plain_wall.append(time.perf_counter() - t)

        def via_inproc(q: list[Item] = q, got: dict = got) -> None:
            got["ref"], r = inproc.embed(q)
            tok.append(r["tokenize"])
            ort.append(r["ort"])
            inproc_cpu.append(r["cpu"])

        order = [via_timed, via_client, via_inproc]
        if floor is not None:
            wait = ort[-1]  # the in-process ORT time of the query before (or of the warm-up)
            for model in floor_walls:
                order.append(
                    lambda m=model, q=q, w=wait: floor_walls[m].append(floor.call(m, text(q), q[0].input_type, w))
                )
        k = n % len(order)
        for f in order[k:] + order[:k]:
            f()
        for k, v in got["pieces"].items():
            pieces[k].append(v)
        spans = got["span"] if spans is None else spans + got["span"]
        cos.append(cosine(got["emb"], got["ref"]))
    assert spans is not None
    n_server = spans.stats[timed.info.name].count
    return {
        "requests": len(queries),
        "server_requests": n_server,
        "stats": spans.stats,
        "client_ms": {k: float(np.mean(v)) * 1e3 for k, v in pieces.items()},
        "wall": summary([sum(p) for p in zip(*pieces.values())]),
        "encode_wall": summary(plain_wall),
        "inproc": {
            "tokenize": summary(tok),
            "ort": summary(ort[ort_warm:]),
            "total": summary([a + b for a, b in zip(tok, ort[ort_warm:])]),
        },
        "floor": {k: summary(v) for k, v in floor_walls.items() if v},
        # The client's CPU over the timed calls' spans only (the reads of the counters are outside them).
        "cpu_ms_per_request": {k: v * 1e3 / max(n_server, 1) for k, v in spans.cpu.items()},
        "inproc_cpu_ms_per_request": float(np.mean(inproc_cpu)) * 1e3,
        "min_cosine": min(cos),
    }


@contextlib.contextmanager
def tracing(stats_client, admin_key: str) -> Iterator[None]:
    """Triton's TIMESTAMPS traces on for every request while the block runs (the trace protocol is
    one of the server's admin protocols: the admin key opens it)."""
    from tembed_serving.supervisor import ADMIN_HEADER

    headers = {f"triton-grpc-protocol-{ADMIN_HEADER}": admin_key}
    on = {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "0"}
    stats_client.update_trace_settings(settings=on, headers=headers)
    try:
        yield
    finally:
        stats_client.update_trace_settings(settings={"trace_level": ["OFF"]}, headers=headers)


def traced_queries(timed: TimedClient, stats_client, admin_key: str, queries: list[list[Item]]) -> list:
    """The queries again, one at a time, with Triton tracing each: the client's stamps per call (the
    traces themselves are written when the server stops)."""
    stamps = []
    with tracing(stats_client, admin_key):
        for q in queries:
            timed.embed(q)
            stamps.append(timed.last)
    return stamps


def mixed_load(
    timed: TimedClient,
    inproc: InProcess,
    counters: Counters,
    reqs: list[list[Item]],
    tokens: dict[str, int],
    concurrency: int,
) -> dict:
    """compare.py's load through the timed client, ``concurrency`` in flight; then the same requests
    in-process, one at a time (the ceiling)."""
    pieces: dict[str, list[float]] = {k: [] for k in PIECES}
    lock = threading.Lock()

    def one(req: list[Item]) -> None:
        _, p = timed.embed(req)
        with lock:
            for k, v in p.items():
                pieces[k].append(v)

    before = counters.read()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, reqs))
    seconds = time.perf_counter() - t0
    span = counters.read(before, requests=len(reqs)) - before
    tok, ort, cpu = [], [], []
    for req in reqs:
        _, r = inproc.embed(req)
        tok.append(r["tokenize"])
        ort.append(r["ort"])
        cpu.append(r["cpu"])
    return {
        "requests": len(reqs),
        "texts": sum(len(r) for r in reqs),
        "tokens": sum(tokens[i.text] for r in reqs for i in r),
        "seconds": seconds,
        "stats": span.stats,
        "client_ms": {k: float(np.mean(v)) * 1e3 for k, v in pieces.items()},
        "wall": summary([sum(p) for p in zip(*pieces.values())]),
        "inproc_seconds": {"tokenize": float(sum(tok)), "ort": float(sum(ort)), "cpu": float(sum(cpu))},
        "cpu_s": span.cpu,
    }


def gateway_run(
    triton_url: str, model: str, queries: list[list[Item]], warm: int, profile: Path | None, profile_rounds: int = 3
) -> dict:
    """The same single queries direct (``AsyncEmbeddingClient``) and through the gateway (httpx, what
    the ``openai`` package uses), alternated query by query; the gateway's CPU per request."""
    import httpx

    from tembed_client import AsyncEmbeddingClient

    from .pyspy import record as pyspy_record

    async def run(url: str, pid: int) -> dict:
        direct, via = [], []
        async with (
            AsyncEmbeddingClient(triton_url, model) as client,
            httpx.AsyncClient(base_url=url, timeout=60) as http,
        ):

            async def grpc_call(q: list[Item]) -> None:
                await client.encode([i.text for i in q], input_type=q[0].input_type)

            async def http_call(q: list[Item]) -> None:
                body = {"model": model, "input": [i.text for i in q], INPUT_TYPE: q[0].input_type}
                r = await http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
                r.raise_for_status()

            for q in queries[:warm]:
                await grpc_call(q)
                await http_call(q)
            cpu = 0.0
            for q in queries:
                t = time.perf_counter()
                await grpc_call(q)
                direct.append(time.perf_counter() - t)
                c0 = procs.cpu_seconds(pid)
                t = time.perf_counter()
                await http_call(q)
                via.append(time.perf_counter() - t)
                cpu += procs.cpu_seconds(pid) - c0
            if profile is not None:  # a pass of its own: the sampler's CPU would slow the one above
                with pyspy_record(pid, profile):
                    for _ in range(profile_rounds):
                        for q in queries:
                            await http_call(q)
        d, g = summary(direct), summary(via)
        return {
            "direct": d,
            "gateway": g,
            "added": {k: g[k] - d[k] for k in d},
            "gateway_cpu_ms_per_request": cpu * 1e3 / len(queries),
            "profile_rounds": profile_rounds if profile is not None else 0,
        }

    with servers.gateway([triton_url]) as (url, pid):
        return asyncio.run(run(url, pid))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts: checks that it works; the doc is left alone")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="ORT intra-op threads")
    ap.add_argument("--queries", type=int, default=200, help="single short queries")
    ap.add_argument("--traced", type=int, default=100, help="of which sent again with Triton's tracing on (0: none)")
    ap.add_argument("--load-texts", type=int, default=768, help="texts of the mixed load")
    ap.add_argument("--batch", type=int, default=16, help="texts per request under load")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight under load")
    ap.add_argument("--no-gateway", action="store_true", help="skip the gateway's added time")
    ap.add_argument("--no-floor", action="store_true", help="skip the machine's floor (tembed_bench.floor)")
    ap.add_argument("--profile-gateway", action="store_true", help="then the gateway again under py-spy")
    args = ap.parse_args(argv)
    if args.quick:
        args.queries, args.traced, args.load_texts = (
            min(args.queries, 40),
            min(args.traced, 20),
            min(args.load_texts, 16),
        )
    from tritonclient.grpc import InferenceServerClient

    from tembed_client import EmbeddingClient

    work = servers.WORK
    repo = servers.export_repo(work / f"repo-t{args.threads}-ddefault-i32", threads=args.threads)
    queries = [[q] for q in data.short_queries(args.queries)]
    load_reqs = data.requests(data.mixed(args.load_texts), args.batch)
    inproc = InProcess(repo, args.threads)
    tokens = {i.text: inproc.raw.tokens([i]) for r in load_reqs for i in r}
    warm = 3 if args.quick else 10
    trace_file = work / "budget-trace.json"
    for old in trace_file.parent.glob(trace_file.name + "*"):
        old.unlink()
    # The trace file is fixed at start (not settable over the network); tracing stays off until asked.
    trace_args = [f"--trace-config=triton,file={trace_file}", "--trace-config=level=OFF"]
    res: dict = {"notes": []}
    stamps: list = []
    with contextlib.ExitStack() as stack:
        srv = stack.enter_context(servers.triton(repo, extra_args=trace_args))
        stats = stack.enter_context(contextlib.closing(InferenceServerClient(srv.grpc_url)))
        plain = stack.enter_context(EmbeddingClient(srv.grpc_url))
        info = plain.model_info()
        floor = None
        if not args.no_floor:  # the same tritonserver and launcher, a repository of its own
            floor_srv = stack.enter_context(servers.triton(write_floor_repo(work / "floor-repo", info.dimension)))
            floor = stack.enter_context(contextlib.closing(FloorClient(floor_srv.grpc_url)))
        res["ensemble"] = info.name
        steps = ensemble_steps(stats, info.name)
        timed = stack.enter_context(contextlib.closing(TimedClient(srv.grpc_url, info)))
        counters = Counters(stats, srv.proc.pid)
        res["single"] = single_queries(timed, plain, inproc, counters, queries, warm, floor)
        if args.traced:
            stamps = traced_queries(timed, stats, srv.admin_key, queries[: args.traced])
        for r in load_reqs[:2]:  # warm the long-text shapes too
            timed.embed(r)
        res["load"] = mixed_load(timed, inproc, counters, load_reqs, tokens, args.concurrency)
        if not args.no_gateway:
            profile = work / "gateway-pyspy.txt" if args.profile_gateway else None
            res["gateway"] = gateway_run(srv.grpc_url, info.name, queries, warm, profile)
            if profile is not None:
                from .pyspy import RATE, top

                res["gateway_profile"] = top(profile, root=servers.ROOT)
                res["gateway_profile"] |= {"rate": RATE, "requests": res["gateway"]["profile_rounds"] * len(queries)}
    # Triton writes the traces when it stops (log_frequency 0: no file I/O while measuring).
    s, load = res["single"], res["load"]
    if s["min_cosine"] < 0.999:
        res["notes"].append(f"the timed path's vectors differ from in-process: min cosine {s['min_cosine']:.4f}")
    for run in (s, load):
        counts = {k: v.count for k, v in run["stats"].items()}
        if len(set(counts.values())) > 1:
            res["notes"].append(f"per-model request counts differ (rejected or stray requests?): {counts}")
    tok_ms, ort_ms = s["inproc"]["tokenize"]["mean"], s["inproc"]["ort"]["mean"]
    inproc_of = {"tokenizer": ("tokenize", tok_ms), "encoder": ("ONNX Runtime", ort_ms)}
    c1, mixed = "c=1 query", f"mixed load x{args.concurrency}"
    parts = {
        c1: budget_parts(s["client_ms"], s["stats"], info.name, steps, inproc_of),
        mixed: budget_parts(load["client_ms"], load["stats"], info.name, steps),
    }
    encoder = next(v for k, v in load["stats"].items() if step_label(info.name, k) == "encoder")
    load["encoder_busy_s"], load["encoder_executions"] = encoder.busy_ns / 1e9, encoder.executions
    single_bar = parts[c1]
    matched = match_traces(read_traces(trace_file), stamps) if stamps else []
    if stamps and len(matched) < len(stamps):
        res["notes"].append(f"{len(stamps) - len(matched)} of {len(stamps)} traced queries had no usable trace")
    if matched:
        mean, medians = mean_parts([timeline(t, c, info.name) for t, c in matched])
        res["timeline"] = {"n": len(matched), "mean": [asdict(p) for p in mean], "p50": medians}
        # The bar: the traced timeline, its tokenizer and encoder stubs split with the in-process times,
        # clamped: the in-process run can be the slower one; the bar then shows no stub overhead.
        single_bar = []
        for p in mean:
            step = p.name.split(":")[0]
            if p.name.endswith(": stub (compute_infer)") and step in inproc_of:
                what, ms = inproc_of[step]
                single_bar.append(Part(step, f"{what} (in-process time)", min(ms, p.ms)))
                p = Part(step, f"{step}: stub overhead", max(p.ms - ms, 0.0))
            single_bar.append(p)
    bars = {
        "in-process\n(tokenizer + ORT)": [Part("tokenizer", "tokenize (in-process time)", tok_ms),
                                          Part("encoder", "ONNX Runtime (in-process time)", ort_ms)],
        "Triton over gRPC" + ("\n(traced timeline)" if matched else "\n(statistics)"): single_bar,
    }  # fmt: skip
    if "gateway" in res:
        added = Part("gateway", "gateway + HTTP client (added)", res["gateway"]["added"]["mean"])
        bars["via the gateway\n(OpenAI HTTP API)"] = [*single_bar, added]
    # What serving adds, with the in-process work taken out.
    added_bars = {
        k: [p for p in v if "(in-process time)" not in p.name] for k, v in bars.items() if "in-process" not in k
    }
    if FLOOR_TWO in s.get("floor", {}):
        added_bars["machine floor\n(2 pass-through\nPython steps)"] = [
            Part("machine", "gRPC + Triton + 2 Python steps", s["floor"][FLOOR_TWO]["mean"])
        ]
    n, io = load["requests"], load["inproc_seconds"]
    load_bars = {
        "in-process,\none at a time": [Part("tokenizer", "tokenize", io["tokenize"] * 1e3 / n),
                                       Part("encoder", "ONNX Runtime", io["ort"] * 1e3 / n)],
        f"Triton,\n{args.concurrency} in flight": parts[mixed],
    }  # fmt: skip
    as_dicts = lambda bs: {k: [asdict(p) for p in v] for k, v in bs.items()}  # noqa: E731
    res["bars"] = {
        "one short query at a time": as_dicts(bars),
        "…of which serving adds (in-process work taken out)": as_dicts(added_bars),
        f"mixed load, {args.concurrency} in flight": as_dicts(load_bars),
    }
    res["parts"] = as_dicts(parts)
    for k in ("single", "load"):
        res[k] = {**res[k], "stats": {m: asdict(v) for m, v in res[k]["stats"].items()}}
    rec = json.loads(json.dumps(res, default=str))
    record.write("budget", rec, quick=args.quick, args=vars(args))
    print(render.section("budget", record.latest("budget", quick=True)))
    if not args.quick:
        render.main(["budget"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
