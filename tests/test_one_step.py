"""The one-step layout on a real tritonserver: one batched Python model that tokenizes and runs ONNX Runtime
(``tembed export --layout one-step``), beside the same model as the two-step ensemble.

Its vectors are the ensemble's, through every client (sync, asyncio, the gateway, ``tembed-client``); a bad
request in a batch gets its own error while the requests batched with it are answered."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from .conftest import EMBEDDER, TEXTS, copy_served

ONE = "e5-one-step"
# The same model whose batcher waits long for company: requests sent together are one batch.
WAIT = "e5-one-step-wait"
WAIT_US = 500_000


def write_one_step(model_repository, repo, name: str, **serving) -> None:
    """``EMBEDDER`` of the shared repository (its calibrated profile and graph) as a one-step model ``name``."""
    from tembed.repository import ServingOptions, write_repository
    from tembed_serving.contract import LAYOUT_ONE_STEP, Layout
    from tembed_serving.profile import ModelProfile

    two = Layout(model_repository, EMBEDDER)
    profile = dataclasses.replace(ModelProfile.load(two.profile_file), name=name, layout=LAYOUT_ONE_STEP)
    opts = ServingOptions(priority_lanes=False, **serving)
    write_repository(profile, repo, tokenizer_file=two.tokenizer_file, encoder_file=two.onnx_file, opts=opts)


@pytest.fixture(scope="module")
def one_step_server(model_repository, tmp_path_factory):
    from tembed_serving.supervisor import TritonServer

    repo = copy_served(model_repository, tmp_path_factory.mktemp("one-step-repo"), EMBEDDER)
    write_one_step(model_repository, repo, ONE)
    write_one_step(model_repository, repo, WAIT, max_queue_delay_us=WAIT_US, wait_when_idle=True)
    log = tmp_path_factory.mktemp("one-step-triton") / "tritonserver.log"
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def clients(one_step_server):
    from tembed_client import EmbeddingClient

    made = {name: EmbeddingClient(one_step_server.grpc_url, name, timeout=120) for name in (EMBEDDER, ONE, WAIT)}
    yield made
    for c in made.values():
        c.close()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("input_type", ["query", "document"])
@pytest.mark.parametrize("dimensions", [None, 128])
def test_one_step_vectors_are_the_ensembles(clients, input_type, dimensions):
    one, two = clients[ONE], clients[EMBEDDER]
    assert one.model_info().batched and not two.model_info().batched
    texts = [*TEXTS, "短", "x " * 600]  # and one over max_length: truncated alike
    a = one.encode(texts, input_type=input_type, dimensions=dimensions)
    b = two.encode(texts, input_type=input_type, dimensions=dimensions)
    assert a.embeddings.shape == b.embeddings.shape == (len(texts), dimensions or 384)
    assert cosines(a.embeddings, b.embeddings).min() >= 0.9999
    assert a.token_counts.tolist() == b.token_counts.tolist()
    assert a.original_token_counts.tolist() == b.original_token_counts.tolist()
    for result in (a, b):  # both layouts time their own work (TEI's timing headers)
        assert set(result.server_ns) == {"tokenize_ns", "encode_ns"} and min(result.server_ns.values()) > 0
    assert one.embed(texts[0], input_type=input_type, dimensions=dimensions).shape == (dimensions or 384,)


@pytest.mark.parametrize("options", [{"embedding_type": "int8"}, {"embedding_type": "ubinary"}, {"long_text": "chunk"}])
def test_one_step_options_are_the_ensembles(clients, options):
    texts = [TEXTS[0], "长文本 " * 900]  # chunk: several windows pooled into one vector
    a, b = clients[ONE].encode(texts, **options), clients[EMBEDDER].encode(texts, **options)
    if "embedding_type" in options:
        assert a.embeddings.dtype == b.embeddings.dtype
        assert np.abs(a.embeddings.astype(int) - b.embeddings.astype(int)).max() <= 1  # a level at most
    else:
        assert cosines(a.embeddings, b.embeddings).min() >= 0.9999
    assert a.token_counts.tolist() == b.token_counts.tolist()


def test_tokenize_and_the_async_client(one_step_server, clients):
    from tembed_client import AsyncEmbeddingClient

    a, b = clients[ONE].tokenize(TEXTS, input_type="query"), clients[EMBEDDER].tokenize(TEXTS, input_type="query")
    assert [x.tolist() for x in a.ids] == [x.tolist() for x in b.ids]

    async def run():
        async with AsyncEmbeddingClient(one_step_server.grpc_url, ONE, timeout=120) as client:
            return await client.embed(TEXTS)

    assert cosines(asyncio.run(run()), clients[EMBEDDER].embed(TEXTS)).min() >= 0.9999


def test_tembed_client_cli(one_step_server, clients, capsys):
    from tembed_client.cli import main

    assert main(["--url", one_step_server.grpc_url, "--model", ONE, *TEXTS[:2]]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["model"] == ONE and got["dimension"] == 384
    assert cosines(np.array(got["embeddings"]), clients[EMBEDDER].embed(TEXTS[:2])).min() >= 0.9999


def executions(srv, name: str) -> int:
    stats = httpx.get(f"{srv.http_url}/v2/models/{name}/stats", timeout=10).json()["model_stats"][0]
    return int(stats.get("execution_count", 0))


def raw_infer(srv, inputs: dict[str, np.ndarray]):
    """A request as anyone on Triton's port may send it: tritonclient, no checks of ours before it."""
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        tensors = []
        for name, data in inputs.items():
            t = grpcclient.InferInput(name, list(data.shape), "BYTES" if data.dtype == np.object_ else "INT32")
            t.set_data_from_numpy(data)
            tensors.append(t)
        return client.infer(WAIT, tensors, client_timeout=120).as_numpy("embedding")


def test_a_bad_request_gets_its_own_error_and_its_batch_neighbours_are_answered(one_step_server, clients):
    """Six requests sent together into one batch (the batcher waits WAIT_US for company; tritonserver merges
    requests of a model with optional inputs only when they give the same ones, so each gives input_type and
    truncate): three good ones of different lengths, three bad ones: a text over max_length under truncate
    NONE, an unknown input_type sent past the client's checks, and a request of two batch rows. Each bad one
    gets its reason and field; each good one its vectors, as the ensemble gives them."""
    from tembed_client import EmbeddingError
    from tembed_client.errors import triton_errors

    srv, client = one_step_server, clients[WAIT]
    client.embed(["warm up"])
    good = {
        "short": ([TEXTS[0]], {"input_type": "query", "truncate": "END"}),
        "several": (TEXTS, {"input_type": "document", "truncate": "END"}),
        "cut": (["段落 " * 600], {"input_type": "document", "truncate": "START"}),
    }
    rows = lambda *values: np.array([[v] for v in values], dtype=np.object_)  # noqa: E731
    bad = {
        "too long": lambda: client.encode(["x " * 600], input_type="query", truncate="NONE"),
        "input_type": lambda: raw_infer(
            srv, {"text": rows(b"a"), "input_type": rows(b"bogus"), "truncate": rows(b"END")}
        ),
        "two rows": lambda: raw_infer(
            srv, {"text": rows(b"a", b"b"), "input_type": rows(b"query", b"query"), "truncate": rows(b"END", b"END")}
        ),
    }
    results: dict[str, object] = {}
    barrier = threading.Barrier(len(good) + len(bad))

    def send(key, call):
        barrier.wait()
        try:
            with triton_errors():
                results[key] = call()
        except EmbeddingError as exc:
            results[key] = exc

    before = executions(srv, WAIT)
    threads = [
        threading.Thread(target=send, args=(k, lambda t=t, o=o: client.embed(t, **o))) for k, (t, o) in good.items()
    ]
    threads += [threading.Thread(target=send, args=(k, call)) for k, call in bad.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    ran = executions(srv, WAIT) - before
    assert ran < len(threads), f"{len(threads)} requests ran in {ran} batches: none was batched with another"
    for key, (texts, options) in good.items():
        assert not isinstance(results[key], Exception), f"{key}: {results[key]}"
        assert cosines(results[key], clients[EMBEDDER].embed(texts, **options)).min() >= 0.9999, key
    expected = {
        "too long": ("context_length_exceeded", "text"),
        "input_type": ("invalid_argument", "input_type"),
        "two rows": ("invalid_argument", "text"),
    }
    for key, (reason, param) in expected.items():
        err = results[key]
        assert isinstance(err, EmbeddingError), f"{key}: answered {err!r}"
        assert (err.reason, err.param, err.code) == (reason, param, "INVALID_ARGUMENT"), f"{key}: {err}"
        assert "Traceback" not in err.message


def test_the_gateway_serves_the_one_step_model(one_step_server, clients):
    from tembed_gateway import GatewaySettings, GatewayThread

    settings = GatewaySettings(one_step_server.grpc_url, model_repository=one_step_server.model_repository)
    with GatewayThread(settings) as gw:
        listed = {m["id"] for m in httpx.get(f"{gw.url}/v1/models", timeout=30).json()["data"]}
        assert {ONE, EMBEDDER} <= listed and not any("-tokenizer" in n for n in listed)
        resp = httpx.post(
            f"{gw.url}/v1/embeddings", json={"model": ONE, "input": TEXTS, "dimensions": 128}, timeout=120
        )
        assert resp.status_code == 200, resp.text
        got = np.array([d["embedding"] for d in resp.json()["data"]])
        assert cosines(got, clients[EMBEDDER].embed(TEXTS, dimensions=128)).min() >= 0.9999
        assert resp.json()["usage"]["prompt_tokens"] == int(clients[EMBEDDER].encode(TEXTS).token_counts.sum())
        resp = httpx.post(
            f"{gw.url}/v1/embeddings", json={"model": ONE, "input": ["x " * 600], "truncate": "NONE"}, timeout=120
        )
        assert resp.status_code == 400, resp.text
        err = resp.json()["error"]
        assert err["code"] == "context_length_exceeded" and "512 tokens" in err["message"]
