"""The latency budget's arithmetic (tembed_bench.budget), on Triton's own formats: statistics as
``get_inference_statistics(as_json=True)`` returns them and a trace file as ``--trace-config
level=TIMESTAMPS`` writes it; the machine's floor models on a real tritonserver. The run itself is ``make budget BUDGET_ARGS=--quick``."""

from __future__ import annotations

import json

import pytest

from tembed_bench import budget, pyspy

ENS = "e5"
STEPS = ["e5-tokenizer", "e5-encoder", "e5-postprocess"]


def stats_json(n: int, per_step: dict[str, tuple[int, int, int, int]], success: int) -> dict:
    """Triton's shape: numbers as strings, an untouched counter as {} (as "fail" is)."""

    def counter(ns: int) -> dict:
        return {"count": str(n), "ns": str(ns)} if n else {}

    def model(name: str, q: int, ci: int, inf: int, co: int, ok: int) -> dict:
        stats = {"success": counter(ok), "fail": {}, "queue": counter(q), "compute_input": counter(ci)}
        stats |= {"compute_infer": counter(inf), "compute_output": counter(co), "cache_hit": {}}
        batch = [{"batch_size": "1", "compute_infer": counter(inf)}] if n else []
        return {"name": name, "execution_count": str(n), "inference_stats": stats, "batch_stats": batch}

    models = [model(s, *v, ok=sum(v) + 10_000 * n) for s, v in per_step.items()]
    sums = [sum(v[i] for v in per_step.values()) for i in range(4)]
    models.append(model(ENS, 5_000 * n, sums[1], sums[2], sums[3], ok=success))
    return {"model_stats": models}


def test_statistics_parse_and_subtract():
    before = budget.parse_stats(stats_json(0, dict.fromkeys(STEPS, (0, 0, 0, 0)), 0))
    per_step = {"e5-tokenizer": (1, 2, 3, 4), "e5-encoder": (10, 20, 300, 40), "e5-postprocess": (5, 6, 7, 8)}
    after = budget.parse_stats(stats_json(4, {k: tuple(4 * x * 1000 for x in v) for k, v in per_step.items()}, 10**7))
    d = {k: after[k] - before[k] for k in after}
    assert d["e5-encoder"].count == 4 and d["e5-encoder"].executions == 4
    assert d["e5-encoder"].ms("compute_infer", 4) == pytest.approx(0.3)
    assert d["e5-encoder"].busy_ns == 4 * 300_000
    # Snapshots add (spans summed over single queries) and subtract field by field.
    span = budget.Snapshot(d, {"tritonserver": 0.5})
    twice = span + span
    assert twice.stats["e5"].count == 8 and twice.cpu["tritonserver"] == 1.0
    assert (twice - span).stats["e5-tokenizer"].ns == d["e5-tokenizer"].ns


def test_statistics_budget_adds_up_to_the_client_wall():
    per_step = {
        "e5-tokenizer": (100, 30, 800, 50),
        "e5-encoder": (200, 20, 9000, 60),
        "e5-postprocess": (90, 30, 400, 300),
    }
    n = 3
    stats = budget.parse_stats(
        stats_json(n, {k: tuple(n * 1000 * x for x in v) for k, v in per_step.items()}, n * 11_500_000)
    )
    client = {"build": 0.15, "serialise": 0.02, "rpc": 12.9, "parse": 0.14}
    parts = budget.budget_parts(client, stats, ENS, STEPS, {"encoder": ("ONNX Runtime", 8.5)})
    assert sum(p.ms for p in parts) == pytest.approx(sum(client.values()))
    by = {p.name: p.ms for p in parts}
    assert by["gRPC both ways + Triton's front end"] == pytest.approx(12.9 - 11.5)
    assert by["encoder: ONNX Runtime (same inputs, in-process)"] == 8.5
    assert by["encoder: stub (IPC, pb_utils, model.py)"] == pytest.approx(9.0 - 8.5)
    assert by["tokenizer: stub (compute_infer)"] == pytest.approx(0.8)


def write_trace(path, t: int) -> None:
    """One ensemble request and its three steps, as Triton 2.51 writes them (an entry per stamp)."""
    entries = [{"id": 1, "model_name": ENS, "model_version": 1}]
    stamps = {
        1: {"REQUEST_START": 400, "QUEUE_START": 410, "GRPC_WAITREAD_START": -5000, "GRPC_WAITREAD_END": 350}
        | {
            "INFER_RESPONSE_COMPLETE": 14_000,
            "GRPC_SEND_START": 14_010,
            "GRPC_SEND_END": 14_200,
            "REQUEST_END": 14_300,
        },
    }
    step_times = {2: (450, 1_400), 3: (1_500, 12_000), 4: (12_100, 13_800)}
    for i, (sid, (start, out)) in enumerate(step_times.items()):
        entries.append({"id": sid, "model_name": STEPS[i], "model_version": 1, "parent_id": 1})
        stamps[sid] = {"REQUEST_START": start, "QUEUE_START": start + 5, "COMPUTE_START": start + 30}
        stamps[sid] |= {"COMPUTE_INPUT_END": start + 50, "COMPUTE_OUTPUT_START": out, "COMPUTE_END": out + 200}
        stamps[sid] |= {"REQUEST_END": out + 210}
    for sid, ts in stamps.items():
        entries += [{"id": sid, "timestamps": [{"name": k, "ns": t + v}]} for k, v in ts.items()]
    path.write_text(json.dumps(entries))


def test_trace_timeline_adds_up_and_splits_the_way_there_and_back(tmp_path):
    t = 10**12
    write_trace(tmp_path / "trace.json", t)
    traces = budget.read_traces(tmp_path / "trace.json")
    assert len(traces) == 1 and [c["model"] for c in traces[0]["children"]] == STEPS
    client = (t - 200, t + 100, t + 14_500, t + 14_600)  # start, RPC sent, RPC answered, done
    other = (t + 50_000, t + 50_100, t + 60_000, t + 60_100)  # a call whose RPC did not cover the trace
    ((trace, matched),) = budget.match_traces(traces, [other, client])
    assert matched == client
    parts = budget.timeline(trace, client, ENS)
    assert sum(p.ms for p in parts) == pytest.approx((client[3] - client[0]) / 1e6)
    assert all(p.ms >= 0 for p in parts)
    by = {p.name: p.ms for p in parts}
    assert by["gRPC in: client send → server has read it"] == pytest.approx(250 / 1e6)
    assert by["encoder: stub (compute_infer)"] == pytest.approx((12_000 - 1_550) / 1e6)
    assert by["tokenizer outputs → encoder (compute_output + ensemble hand-off)"] == pytest.approx(100 / 1e6)
    assert by["gRPC out: server send → client has it"] == pytest.approx(490 / 1e6)


def test_pyspy_top_counts_self_and_inclusive(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (app.py:1);handle (pkg/site-packages/x/h.py:10);render (pkg/site-packages/x/r.py:5) 6\n"
        "main (app.py:1);handle (pkg/site-packages/x/h.py:12) 3\n"
        "main (app.py:1);handle (pkg/site-packages/x/h.py:10);handle (pkg/site-packages/x/h.py:30) 1\n"
        "main (app.py:1);select (/usr/lib/python3.11/selectors.py:468) 4\n"
        "main (app.py:1);select (selectors.py:468) 1\n"
    )
    got = pyspy.top(raw, waits=("selectors.py:select",))
    assert (got["samples"], got["idle"], got["busy"]) == (15, 5, 10)
    assert dict(got["self"]) == {"x/r.py:render": 6, "x/h.py:handle": 4}
    assert dict(got["inclusive"])["x/h.py:handle"] == 10  # a recursive frame counts once per sample
    assert dict(got["packages"]) == {"x": 10}
    assert pyspy.package("gateway/tembed_gateway/app.py:render") == "tembed_gateway"


@pytest.mark.isolated  # a tritonserver of its own
def test_floor_models_serve_and_keep_busy_as_asked(tmp_path, model_repository):
    """The machine's floor (tembed_bench.floor) on a real tritonserver: both models answer a vector of the
    asked size per text and spend the asked time busy (so wall − busy is what serving alone costs); the
    ONNX Runtime floor runs the encoder's graph on as many ids as asked."""
    from tembed_bench import floor
    from tembed_serving.contract import Layout
    from tembed_serving.supervisor import TritonServer

    graph = Layout(model_repository, "multilingual-e5-small").onnx_file
    repo = floor.write_repo(tmp_path / "floor", dim=8, onnx=graph, threads=1)
    with TritonServer.on_free_ports(repo, log_file=tmp_path / "tritonserver.log") as srv:
        client = floor.FloorClient(srv.grpc_url)
        try:
            for tokens in (3, 40):  # [1, 1, 384]: the graph's vector, one request per batch row
                got = client.client.infer(floor.ONE_ORT, client.inputs(["q"], "query", 0.0, True, tokens=tokens))
                vec = got.as_numpy("embedding")
                assert vec.shape == (1, 1, 384) and abs(float((vec**2).sum()) - 1.0) < 1e-3
            assert 0.0 < client.call(floor.ONE_ORT, ["q"], "query", 0.0, tokens=16) < 1.0
            for model in (floor.ONE, floor.TWO, floor.ONE_BATCHED):
                for wait in (0.0, 0.02):
                    got = client.call(model, ["如何提高睡眠质量", "two"], "query", wait)
                    # Not below zero: the busy step really waited; small: a pass-through on loopback.
                    assert 0.0 < got < 1.0, (model, wait, got)
                batched = model == floor.ONE_BATCHED  # one request per batch row: [1, n] in, [1, n, d] out
                out = client.client.infer(model, client.inputs(["a", "b", "c"], "query", 0.0, batched))
                assert out.as_numpy("embedding").shape == ((1, 3, 8) if batched else (3, 8))
        finally:
            client.close()
