"""Priority lanes: a query (priority high, the default) is not queued behind bulk indexing (priority low).

The export writes, per model, a bulk lane of its own (``repository.write_lanes``: an ensemble and an encoder
over the same weights), so bulk requests queue at their own encoder. Under a saturating bulk load a query
must finish before two bulk batches do, and take well under one bulk batch (ratios and counts: the machine
may be loaded); the same query sent as bulk waits behind them. The figures it prints are the ones
docs/RELIABILITY.md reports."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from .conftest import TEXTS, copy_served

pytestmark = [pytest.mark.slow, pytest.mark.isolated]  # a server of its own, saturated
E5 = "multilingual-e5-small"
PASSAGE = "检索增强生成把向量数据库召回的段落交给大模型，再由大模型写出回答。" * 8  # ~250 tokens


@pytest.fixture
def lanes_server(model_repository, tmp_path):
    from tembed.repository import write_lanes
    from tembed_serving.contract import PRIORITY_VALUES
    from tembed_serving.supervisor import TritonServer

    repo = copy_served(model_repository, tmp_path / "repo", E5)
    write_lanes(repo, E5, PRIORITY_VALUES[1:])  # as `tembed export` does by default
    with TritonServer.on_free_ports(repo, log_file=tmp_path / "tritonserver.log") as srv:
        yield srv


def encoder_stats(srv, name: str) -> tuple[int, float]:
    """(batches run, mean seconds of compute per batch) of encoder ``name``."""
    stats = httpx.get(f"{srv.http_url}/v2/models/{name}/stats", timeout=10).json()["model_stats"][0]
    n = int(stats.get("execution_count", 0))
    compute = int(stats["inference_stats"]["compute_infer"]["ns"]) / 1e9
    return n, compute / max(n, 1)


def test_a_query_does_not_wait_behind_bulk_indexing(lanes_server):
    from tembed_client import EmbeddingClient
    from tembed_gateway import GatewaySettings, GatewayThread
    from tembed_serving.contract import PRIORITY_VALUES, lane_name, model_names

    high, low = PRIORITY_VALUES
    srv = lanes_server
    bulk_encoder = lane_name(model_names(E5)["encoder"], low)
    with EmbeddingClient(srv.grpc_url, E5, timeout=600) as q:
        expected = q.embed(TEXTS[:2])
        np.testing.assert_allclose(q.embed(TEXTS[:2], priority=low), expected, atol=1e-5)
        assert encoder_stats(srv, bulk_encoder)[0] >= 1  # the low lane ran on its own encoder
        with EmbeddingClient(srv.grpc_url, timeout=60) as only:  # the lane is not a second served model
            assert only.model_info().name == E5
        with GatewayThread(GatewaySettings(srv.grpc_url)) as gw:
            listed = [m["id"] for m in httpx.get(f"{gw.url}/v1/models", timeout=30).json()["data"]]
            assert lane_name(E5, low) not in listed and E5 in listed
            body = {"model": E5, "input": TEXTS[:1], "priority": low}
            assert httpx.post(f"{gw.url}/v1/embeddings", json=body, timeout=60).status_code == 200

        stop, failed = threading.Event(), []

        def bulk(k: int) -> None:
            with EmbeddingClient(srv.grpc_url, E5, timeout=600) as c:
                i = 0
                while not stop.is_set():
                    try:
                        c.embed([f"{k} {i} {j} {PASSAGE}" for j in range(8)], priority=low)
                    except Exception as exc:  # recorded: the test says what happened
                        failed.append(repr(exc))
                    i += 1

        threads = [threading.Thread(target=bulk, args=(k,), daemon=True) for k in range(3)]
        for t in threads:
            t.start()
        try:
            start = encoder_stats(srv, bulk_encoder)[0]
            deadline = time.monotonic() + 120
            while encoder_stats(srv, bulk_encoder)[0] < start + 2 and time.monotonic() < deadline:
                time.sleep(0.1)  # saturated: bulk batches run back to back from here
            lat, during = {high: [], low: []}, {high: [], low: []}
            for i in range(16):
                lane = high if i % 4 else low  # a query sent as bulk now and then: the FIFO it used to be
                before = encoder_stats(srv, bulk_encoder)[0]
                t0 = time.perf_counter()
                q.embed([f"查询 {i}: 向量数据库怎么选？"], priority=lane)
                lat[lane].append(time.perf_counter() - t0)
                during[lane].append(encoder_stats(srv, bulk_encoder)[0] - before)
            batch_s = encoder_stats(srv, bulk_encoder)[1]
        finally:
            stop.set()
            for t in threads:
                t.join(600)
    assert not failed, failed[:3]
    ms = {lane: np.array(v) * 1e3 for lane, v in lat.items()}
    print(
        f"\nunder bulk load (bulk batch {batch_s * 1e3:.0f} ms of compute on average): query high "
        f"P50 {np.median(ms[high]):.0f} ms, max {ms[high].max():.0f} ms, bulk batches finished meanwhile "
        f"max {max(during[high])}; the same query as low P50 {np.median(ms[low]):.0f} ms"
    )
    assert max(during[high]) <= 2, during  # finished before two bulk batches did, every time
    assert np.median(ms[high]) < 0.5 * batch_s * 1e3  # well under one bulk batch
    assert np.median(ms[high]) < np.median(ms[low])  # and faster than in the bulk queue


def ensemble_requests(srv, name: str) -> int:
    """Requests ensemble ``name`` has answered."""
    stats = httpx.get(f"{srv.http_url}/v2/models/{name}/stats", timeout=10).json()["model_stats"][0]
    return int(stats["inference_stats"]["success"].get("count", 0))


def test_tembed_index_goes_to_the_bulk_lane_and_search_to_the_default(lanes_server, tmp_path):
    """``tembed index`` sends its embeddings at the bulk priority, over gRPC and through the gateway alike;
    ``--priority high`` overrides it; ``tembed search`` stays on the default lane. Counted by Triton."""
    from tembed_gateway import GatewaySettings, GatewayThread
    from tembed_retrieval.cli import main as retrieval_cli
    from tembed_serving.contract import PRIORITY_BULK, PRIORITY_DEFAULT, lane_name

    srv, lanes = lanes_server, {PRIORITY_DEFAULT: E5, PRIORITY_BULK: lane_name(E5, PRIORITY_BULK)}
    passages = 20  # 3 requests of max_texts (8) texts
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"{i}: {PASSAGE[: 20 + i]}" for i in range(passages)) + "\n", encoding="utf-8")

    def delta(argv: list[str]) -> dict[str, int]:
        before = {lane: ensemble_requests(srv, name) for lane, name in lanes.items()}
        assert retrieval_cli(argv) == 0
        return {lane: ensemble_requests(srv, name) - before[lane] for lane, name in lanes.items()}

    with GatewayThread(GatewaySettings(srv.grpc_url)) as gw:
        for route in (["--url", srv.grpc_url], ["--gateway", gw.url]):
            index = str(tmp_path / route[0].strip("-"))
            made = delta(["index", str(corpus), "--index", index, "--model", E5, *route])
            assert made[PRIORITY_DEFAULT] == 0 and made[PRIORITY_BULK] >= 3, (route[0], made)
            asked = delta(["search", "向量数据库怎么选？", "--index", index, *route])
            assert asked == {PRIORITY_DEFAULT: 1, PRIORITY_BULK: 0}, (route[0], asked)
            told = delta(
                ["index", str(corpus), "--index", f"{index}-high", "--model", E5, "--priority", "high", *route]
            )
            assert told[PRIORITY_DEFAULT] >= 3 and told[PRIORITY_BULK] == 0, (route[0], told)
            print(f"\n{route[0]}: index {made}, search {asked}, index --priority high {told}")
