"""The other vendors' protocol modules and the token-id rule, offline: pure parsing over dicts and the
served tokenizer's file (the same checks run end to end in tests/test_gateway_clients.py)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from tembed_gateway import cohere_embed, nim, tei
from tembed_gateway.errors import ApiError
from tembed_gateway.token_ids import check_ids, request_prefix, strip_prompt, texts_for_ids
from tembed_serving.profile import ModelProfile


@pytest.fixture(scope="module")
def e5(fixture_dirs, profiles):
    name = "multilingual-e5-small"
    profile: ModelProfile = profiles[name]
    return Tokenizer.from_file(str(fixture_dirs[name] / "tokenizer.json")), profile


def test_ids_must_survive_decode_and_reencode(e5):
    tok, profile = e5
    own = tok.encode("passage: Hello world").ids  # as /tokenize answers: prompt and special tokens
    assert check_ids(tok, [own], "e5") == ["passage: Hello world"]
    assert texts_for_ids(tok, profile, [own], {}, "e5") == ["Hello world"]  # the prompt is not added twice
    # the query prompt is not the document's: a query request keeps the text whole and adds "query: "
    assert texts_for_ids(tok, profile, [own], {"input_type": "query"}, "e5") == ["passage: Hello world"]
    bare = tok.encode("Hello world").ids
    assert texts_for_ids(tok, profile, [bare], {}, "e5") == ["Hello world"]
    for foreign in ([72, 101, 108, 108, 111], tok.encode("Hello world", add_special_tokens=False).ids):
        with pytest.raises(ApiError, match="check_embedding_ctx_length=False") as exc:
            check_ids(tok, [own, foreign], "e5")
        assert exc.value.status == 400 and "input[1]" in exc.value.message and exc.value.param == "input"
    with pytest.raises(ApiError, match="outside this model's vocabulary"):
        check_ids(tok, [[0, 10**7, 2]], "e5")


def test_prefix_and_strip(e5):
    _, profile = e5
    assert request_prefix(profile, {}) == "passage: " and request_prefix(profile, {"input_type": "query"}) == "query: "
    assert strip_prompt(["passage: a", "passage:", "other"], "passage: ") == ["a", "passage:", "other"]
    assert strip_prompt(["x"], "") == ["x"]


def test_nim_ranking_parse():
    req, truncate = nim.parse_ranking({"model": "r", "query": {"text": "q"}, "passages": [{"text": "a"}, "b"]}, 8)
    assert (req.query, req.documents, truncate) == ("q", ["a", "b"], "NONE")
    assert nim.parse_ranking({"model": "r", "query": "q", "passages": ["a"], "truncate": "end"}, 8)[1] == "END"
    with pytest.raises(ApiError, match="passages is required"):
        nim.parse_ranking({"model": "r", "query": "q", "passages": {"text": "a"}}, 8)


def test_cohere_parse():
    req = cohere_embed.parse_embed(
        {"model": "m", "texts": ["a"], "input_type": "clustering", "embedding_types": ["int8", "float", "int8"]}, 2, 8
    )
    assert req.options == {"input_type": "query"} and req.types == ["int8", "float"]
    assert cohere_embed.parse_embed({"model": "m", "texts": ["a"]}, 1, 8).types is None  # v1: plain floats
    assert cohere_embed.parse_embed({"model": "m", "texts": ["a"], "input_type": "search_query"}, 2, 8).types == [
        "float"
    ]
    with pytest.raises(ApiError, match="too many inputs"):
        cohere_embed.parse_embed({"model": "m", "texts": ["a"] * 9, "input_type": "search_query"}, 2, 8)


def test_tei_parse():
    assert tei.parse_embed({"inputs": "a"}, 8).options == {}
    left = tei.parse_embed({"inputs": ["a"], "truncate": True, "truncation_direction": "Left"}, 8)
    assert left.options == {"truncate": "START"}
    assert tei.parse_embed({"inputs": "a", "truncate": False}, 8).options == {"truncate": "NONE"}
    assert tei.parse_embed({"inputs": "a", "prompt_name": "passage"}, 8).options == {"input_type": "document"}
    assert tei.is_tei_rerank({"query": "q", "texts": []}) and not tei.is_tei_rerank({"query": "q", "documents": []})
    dec = tei.parse_decode({"ids": [1, 2]})
    assert dec.ids == [[1, 2]] and dec.single and dec.skip_special_tokens
    headers = tei.timing_headers(0, 1_000_000, 2_000_000, 5_000_000)
    assert headers["x-total-time"] == "5.000" and headers["x-queue-time"] == "2.000"
    assert headers["x-compute-time"] == "3.000"
