"""Long documents reranked whole: ``long_text="chunk"`` on a reranker scores each window of a document over
the model's max_length (the query repeated in each) and keeps the best window's score, on the shared
rerank server (max_length 512)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from .conftest import BERT, DOCS, QUERY, QWEN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rclients(rerank_server):
    from tembed_client import EmbeddingClient

    made = {name: EmbeddingClient(rerank_server.grpc_url, name) for name in (BERT, QWEN)}
    yield made
    for c in made.values():
        c.close()


def pair_encoder(rerank_server, name):
    from tembed_serving.contract import Layout
    from tembed_serving.pairs import PairEncoder
    from tembed_serving.profile import ModelProfile

    layout = Layout(rerank_server.model_repository, name)
    return PairEncoder(ModelProfile.load(layout.profile_file), layout.tokenizer_file)


def long_document(encoder, windows: int) -> str:
    """Numbered sentences (no window repeats another) until the document takes ``windows`` windows."""
    parts: list[str] = []
    step = 20 * max(1, windows // 8)
    while len(encoder.window_texts(QUERY, " ".join(parts))) < windows:
        parts.extend(f"({i}) {DOCS[i % len(DOCS)]}" for i in range(len(parts), len(parts) + step))
    return " ".join(parts)


@pytest.mark.parametrize("name", [BERT, QWEN])
def test_a_document_under_the_window_scores_exactly_as_before(rclients, name):
    plain = rclients[name].score(QUERY, DOCS)
    chunked = rclients[name].score(QUERY, DOCS, long_text="chunk")
    assert np.array_equal(plain.scores, chunked.scores) and np.array_equal(plain.token_counts, chunked.token_counts)


@pytest.mark.parametrize("name", [BERT, QWEN])
def test_a_three_window_document_scores_its_best_window(rclients, rerank_server, name):
    encoder = pair_encoder(rerank_server, name)
    document = long_document(encoder, 3)
    windows = encoder.window_texts(QUERY, document)
    assert len(windows) == 3
    alone = rclients[name].score(QUERY, windows).scores  # each window's text as a document of its own
    got = rclients[name].score(QUERY, [DOCS[0], document, DOCS[1]], long_text="chunk")
    assert abs(float(got.scores[1]) - float(alone.max())) <= 1e-5, (got.scores, alone)
    assert got.token_counts[1] > encoder.profile.max_length  # every window's tokens


def test_over_the_cap_is_refused_clearly_while_good_requests_come_back_unchanged(rclients, rerank_server):
    from tembed_client import EmbeddingError

    client = rclients[BERT]
    encoder = pair_encoder(rerank_server, BERT)
    too_long = long_document(encoder, encoder.profile.max_windows + 1)
    want = client.score(QUERY, DOCS, long_text="chunk").scores

    def good(_):
        return client.score(QUERY, DOCS, long_text="chunk").scores

    def bad(_):
        try:
            client.score(QUERY, [DOCS[0], too_long], long_text="chunk")
        except EmbeddingError as exc:
            return exc
        return None

    with ThreadPoolExecutor(6) as pool:
        goods = [pool.submit(good, i) for i in range(4)]
        bads = [pool.submit(bad, i) for i in range(2)]
        for f in goods:
            assert np.array_equal(f.result(), want)
        for f in bads:
            exc = f.result()
            assert exc is not None and exc.reason == "context_length_exceeded" and exc.param == "documents"
            assert f"limit is {encoder.profile.max_windows} per document" in exc.message
