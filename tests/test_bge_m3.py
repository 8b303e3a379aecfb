"""bge-m3 as released: dense, sparse and multi-vector outputs from one forward pass, and its M3 score.

The reference is FlagEmbedding 1.4.2's ``BGEM3FlagModel`` loading the same fixture folder (the tiny
XLM-R plus ``sparse_linear.pt`` and ``colbert_linear.pt``), run in a venv of its own
(``.cache/flagembedding-venv``: FlagEmbedding needs transformers<5, which the main venv does not
have) by ``tests/bgem3_reference.py``. The served side is the real tritonserver with the ONNX graph
``tembed export`` writes for the folder.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

from .conftest import DOCS, ROOT, TEXTS

pytestmark = [pytest.mark.slow, pytest.mark.isolated]  # a venv and a tritonserver of its own
MODEL = "bge-m3-tiny"
ALL = ["dense", "sparse", "colbert"]
REFERENCE_VENV = ROOT / ".cache" / "flagembedding-venv"
# FlagEmbedding 1.4.2 imports transformers.modeling_attn_mask_utils (gone in transformers 5).
REFERENCE_PACKAGES = ["FlagEmbedding==1.4.2", "transformers<5", "datasets<4", "sentence-transformers<5"]
LOCAL_TORCH = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
PAIRS_WEIGHTS = [0.4, 0.2, 0.4]  # bge-m3's model card's weights, besides compute_score's default [1, 1, 1]


def reference_python() -> Path:
    """The reference venv's interpreter, built once and cached under .cache/ (a marker file says it is whole)."""
    py = REFERENCE_VENV / "bin" / "python"
    marker = REFERENCE_VENV / ".tembed-installed"
    wanted = " ".join(REFERENCE_PACKAGES)
    if marker.is_file() and marker.read_text() == wanted:
        return py
    venv.create(REFERENCE_VENV, with_pip=True, clear=True)
    torch = str(LOCAL_TORCH) if LOCAL_TORCH.is_file() else "torch==2.13.0"
    cmd = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", torch, *REFERENCE_PACKAGES]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    marker.write_text(wanted)
    return py


def long_text(tokenizer, tokens: int, sentences: list[str]) -> str:
    parts: list[str] = []
    while len(tokenizer(" ".join(parts))["input_ids"]) < tokens:
        parts.extend(f"({i}) {sentences[i % len(sentences)]}" for i in range(len(parts), len(parts) + 50))
    return " ".join(parts)


@pytest.fixture(scope="module")
def m3_dir(tmp_path_factory) -> Path:
    from tembed_fixtures.build import build_fixtures

    return build_fixtures(tmp_path_factory.mktemp("m3"), only=[MODEL])[MODEL]


@pytest.fixture(scope="module")
def texts(m3_dir) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(m3_dir / "tokenizer.json"))
    count = lambda t: {"input_ids": tok.encode(t).ids}  # noqa: E731
    # An 8,192-token text: cut to 8192 by both sides (truncation at the end).
    return [*TEXTS, *DOCS, "hello hello world", long_text(count, 8300, TEXTS)]


@pytest.fixture(scope="module")
def pairs() -> list[list[str]]:
    return [[TEXTS[0], DOCS[0]], [TEXTS[2], DOCS[2]], [DOCS[1], TEXTS[1]], ["hello", "hello hello world"]]


@pytest.fixture(scope="module")
def reference(m3_dir, texts, pairs, tmp_path_factory) -> dict[str, np.ndarray]:
    work = tmp_path_factory.mktemp("m3-reference")
    given = work / "in.json"
    given.write_text(json.dumps({"texts": texts, "pairs": pairs, "weights": PAIRS_WEIGHTS}), encoding="utf-8")
    out = work / "out.npz"
    script = Path(__file__).with_name("bgem3_reference.py")
    cmd = [str(reference_python()), str(script), str(m3_dir), str(given), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def m3_server(m3_dir, tmp_path_factory):
    from tembed.pipeline import ExportOptions, export_model
    from tembed_serving.supervisor import TritonServer

    repo = tmp_path_factory.mktemp("m3-repo")
    result = export_model(m3_dir, repo, ExportOptions())
    assert result.profile.outputs == ALL and result.max_abs_err < 1e-4
    log = tmp_path_factory.mktemp("m3-triton") / "tritonserver.log"
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(m3_server):
    from tembed_client import EmbeddingClient

    with EmbeddingClient(m3_server.grpc_url, MODEL) as c:
        yield c


def check_parity(result, reference, rows: list[int]) -> None:
    """Served outputs of texts ``rows`` (in order) against FlagEmbedding's."""
    cos = (result.embeddings * reference["dense"][rows]).sum(-1)
    assert cos.min() >= 0.9999, cos
    for got_sparse, got_multi, i in zip(result.sparse, result.multi_vectors, rows):
        ids, weights = reference[f"sparse_ids_{i}"], reference[f"sparse_weights_{i}"]
        assert got_sparse.ids.tolist() == ids.tolist(), i  # the same ids, in FlagEmbedding's order
        assert np.abs(got_sparse.weights - weights).max(initial=0) <= 1e-5, i
        colbert = reference[f"colbert_{i}"]
        assert got_multi.shape == colbert.shape, (i, got_multi.shape, colbert.shape)
        assert np.abs(got_multi - colbert).max() <= 1e-5, i


def test_outputs_equal_bgem3flagmodel(client, reference, texts):
    """One call per text (the 8192-token one pads to its own bucket) and one call of all short texts."""
    for i in range(len(texts)):
        check_parity(client.encode([texts[i]], outputs=ALL), reference, [i])
    short = list(range(len(texts) - 1))
    check_parity(client.encode(texts[:-1], outputs=ALL), reference, short)
    long = client.encode(texts[-1:], outputs=ALL)
    assert long.token_counts.tolist() == [8192] and long.multi_vectors[0].shape[0] == 8191


def test_a_text_alone_equals_it_in_a_batch_of_50(client, texts):
    batch = [texts[(i * 7) % (len(texts) - 1)] + f" ({i})" * (i % 5) for i in range(50)]
    together = client.encode(batch, outputs=ALL)
    for i in (0, 13, 49):
        alone = client.encode([batch[i]], outputs=ALL)
        assert np.abs(alone.embeddings[0] - together.embeddings[i]).max() <= 1e-5
        assert alone.sparse[0].ids.tolist() == together.sparse[i].ids.tolist()
        assert np.abs(alone.sparse[0].weights - together.sparse[i].weights).max() <= 1e-5
        assert alone.multi_vectors[0].shape == together.multi_vectors[i].shape
        assert np.abs(alone.multi_vectors[0] - together.multi_vectors[i]).max() <= 1e-5


def test_m3_score_equals_compute_score(client, reference, pairs):
    """``score`` on a bge-m3 model is compute_score's "colbert+sparse+dense", per mode too."""
    from tembed_client.m3 import m3_scores

    for weights, prefix in ((None, "m3"), (PAIRS_WEIGHTS, "m3w")):
        for i, (query, document) in enumerate(pairs):
            got = client.score(query, [document], weights=weights).scores
            assert abs(float(got[0]) - reference[f"{prefix}_colbert+sparse+dense"][i]) <= 1e-5, (prefix, i)
    r = client.encode([pairs[0][0], pairs[0][1]], outputs=ALL)
    _, modes = m3_scores(r.embeddings, r.sparse, r.multi_vectors)
    for mode in ALL:
        assert abs(modes[mode][0] - reference[f"m3_{mode}"][0]) <= 1e-5, mode
    ranked = client.rerank(pairs[0][0], [p[1] for p in pairs])
    assert sorted(i for i, _ in ranked) == list(range(len(pairs)))


def test_outputs_are_what_was_asked(client, texts):
    dense = client.embed(texts[:3])
    assert isinstance(dense, np.ndarray) and dense.shape == (3, 32)
    plain = client.encode(texts[:3])
    assert plain.sparse is None and plain.multi_vectors is None
    sparse = client.encode(texts[:3], outputs=["sparse"])
    assert sparse.embeddings.shape == (3, 0) and sparse.multi_vectors is None and len(sparse.sparse) == 3
    both = client.encode(texts[:3], outputs="dense,colbert", embedding_type="ubinary")
    # embedding_type applies to the dense vector only; the multi-vectors stay float.
    assert both.embeddings.shape == (3, 4) and both.embeddings.dtype == np.uint8
    assert np.array_equal(both.embeddings, np.packbits(dense > 0, axis=-1))
    assert {m.shape[1] for m in both.multi_vectors} == {32} and both.sparse is None


def test_long_text_chunk_sparse_is_the_windows_maximum_and_colbert_is_refused(client, texts):
    from tembed_client import EmbeddingError

    chunked = client.encode(texts[-1:], outputs=["dense", "sparse"], long_text="chunk")
    cut = client.encode(texts[-1:], outputs=["sparse"])
    got, first = chunked.sparse[0].as_dict(), cut.sparse[0].as_dict()
    # Every id of the first 8192 tokens is there with at least its weight there (the maximum runs wider).
    assert set(first) <= set(got) and all(got[k] >= w - 1e-6 for k, w in first.items())
    with pytest.raises(EmbeddingError) as err:
        client.encode(texts[:1], outputs=["colbert"], long_text="chunk")
    assert err.value.reason == "invalid_argument" and err.value.param == "long_text"
    with pytest.raises(EmbeddingError) as err:
        client.encode(texts[:1], outputs=["splade"])
    assert err.value.reason == "invalid_argument" and err.value.param == "embedding_outputs"


# --- the gateway ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def m3_gateway(m3_server):
    from tembed_gateway import GatewaySettings, GatewayThread

    with GatewayThread(GatewaySettings(m3_server.grpc_url, model_repository=m3_server.model_repository)) as gw:
        yield gw


def post(gw, path: str, body: dict):
    import httpx

    return httpx.post(f"{gw.url}{path}", json=body, timeout=60)


def test_tei_embed_sparse_and_embed_all(m3_gateway, client, texts):
    want = client.encode(texts[:4], outputs=ALL)
    got = post(m3_gateway, "/embed_sparse", {"inputs": texts[:4], "model": MODEL})
    assert got.status_code == 200, got.text
    for items, sp in zip(got.json(), want.sparse):
        assert [i["index"] for i in items] == sp.ids.tolist()
        assert np.allclose([i["value"] for i in items], sp.weights, atol=1e-6)
    named = post(m3_gateway, "/embed_sparse", {"inputs": texts[0], "return_tokens": True})  # the only model
    assert named.status_code == 200, named.text
    assert all(isinstance(i["token"], str) and i["token"] for i in named.json()[0])
    multi = post(m3_gateway, "/embed_all", {"inputs": texts[:2], "model": MODEL})
    assert multi.status_code == 200, multi.text
    for vectors, mv in zip(multi.json(), want.multi_vectors):
        assert np.allclose(np.array(vectors), mv, atol=1e-6)


def test_all_three_route_and_the_openai_route_stays_dense(m3_gateway, client, texts):
    want = client.encode(texts[:3], outputs=ALL)
    got = post(m3_gateway, "/v1/embeddings/all", {"model": MODEL, "input": texts[:3]})
    assert got.status_code == 200, got.text
    data = got.json()["data"]
    assert np.allclose([d["embedding"] for d in data], want.embeddings, atol=1e-6)
    assert [d["sparse"]["indices"] for d in data] == [s.ids.tolist() for s in want.sparse]
    assert all(np.allclose(d["multi_vector"], m, atol=1e-6) for d, m in zip(data, want.multi_vectors))
    only = post(m3_gateway, "/v1/embeddings/all", {"model": MODEL, "input": texts[:1], "outputs": ["sparse"]})
    assert only.status_code == 200 and set(only.json()["data"][0]) == {"object", "index", "sparse"}
    dense = post(m3_gateway, "/v1/embeddings", {"model": MODEL, "input": texts[:3]})
    assert np.allclose([d["embedding"] for d in dense.json()["data"]], want.embeddings, atol=1e-6)
    refused = post(m3_gateway, "/v1/embeddings", {"model": MODEL, "input": texts[:1], "embedding_outputs": "sparse"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "embedding_outputs"


def test_rerank_routes_serve_the_m3_score(m3_gateway, client, pairs):
    query, documents = pairs[0][0], [p[1] for p in pairs]
    for weights in (None, PAIRS_WEIGHTS):
        want = client.score(query, documents, weights=weights).scores
        body = {"model": MODEL, "query": query, "documents": documents, **({"weights": weights} if weights else {})}
        for path in ("/v1/rerank", "/v2/rerank"):
            got = post(m3_gateway, path, body)
            assert got.status_code == 200, got.text
            scores = {r["index"]: r["relevance_score"] for r in got.json()["results"]}
            assert np.allclose([scores[i] for i in range(len(documents))], want, atol=1e-6), path
    bad = post(m3_gateway, "/v1/rerank", {"model": MODEL, "query": query, "documents": documents, "weights": [1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "weights"
