"""Unit tests of the pure parts of the client; no server needed."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from tembed_client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError
from tembed_client.aio import gather
from tembed_client.calls import Call, encode_texts
from tembed_client.chunking import chunked
from tembed_client.cli import to_json
from tembed_client.discovery import ModelInfo, parse_model_config, pick_model, ready_models
from tembed_client.errors import triton_errors

INFO = ModelInfo(name="ens", dimension=8, min_dimension=2, max_texts=4)


def config(name: str = "ens", platform: str = "ensemble", **params: str) -> dict:
    return {
        "config": {
            "name": name,
            "platform": platform,
            "parameters": {k: {"string_value": v} for k, v in params.items()},
        }
    }


class FakeResult:
    """Stands in for ``InferResult``: one row per text, its first number the text's length."""

    def __init__(self, chunk, width, rows=None):
        rows = len(chunk) if rows is None else rows
        self.outputs = {
            "embedding": np.array([[len(t)] * width for t in chunk][:rows], np.float32).reshape(rows, width),
            "token_count": np.array([len(t) for t in chunk][:rows], np.int32),
        }

    def as_numpy(self, name):
        return self.outputs.get(name)


def input_values(inp) -> list:
    data = inp._get_content()
    if inp.datatype() == "BYTES":
        return list(deserialize_bytes_tensor(data))
    return np.frombuffer(data, np.int32).tolist()


# chunking


@pytest.mark.parametrize(("n", "size", "sizes"), [(0, 4, []), (3, 4, [3]), (4, 4, [4]), (11, 4, [4, 4, 3])])
def test_chunked(n, size, sizes):
    items = list(range(n))
    parts = chunked(items, size)
    assert [len(p) for p in parts] == sizes
    assert [x for p in parts for x in p] == items


def test_chunked_rejects_zero():
    with pytest.raises(ValueError):
        chunked([1], 0)


# config parsing and model choice


def test_parse_model_config():
    info = parse_model_config(
        config(max_texts="32", dimension="1024", min_dimension="64", model_type="bert", pooling="cls")
    )
    assert (info.name, info.dimension, info.min_dimension, info.max_texts) == ("ens", 1024, 64, 32)
    assert (info.model_type, info.pooling, info.platform) == ("bert", "cls", "ensemble")
    assert info.parameters["dimension"] == "1024"


def test_parse_model_config_defaults_min_dimension_to_dimension():
    info = parse_model_config(config(max_texts="8", dimension="384")["config"])  # unwrapped also works
    assert info.min_dimension == 384 and info.model_type is None


@pytest.mark.parametrize("params", [{"max_texts": "8"}, {"dimension": "8"}, {"dimension": "x", "max_texts": "8"}])
def test_parse_model_config_rejects_missing_or_bad(params):
    with pytest.raises(EmbeddingError) as exc:
        parse_model_config(config(**params))
    assert exc.value.code == "FAILED_PRECONDITION" and exc.value.status is None


def test_ready_models():
    index = {
        "models": [
            {"name": "b", "version": "1", "state": "READY"},
            {"name": "a", "version": "1", "state": "READY"},
            {"name": "a", "version": "2", "state": "READY"},
            {"name": "c", "state": "UNAVAILABLE"},
            {"name": "d"},
        ]
    }
    assert ready_models(index) == ["a", "b"]
    assert ready_models({}) == []


def test_pick_model_single_ensemble():
    configs = {"tok": config("tok", "python"), "ens": config(max_texts="4", dimension="8")}
    assert pick_model(configs).name == "ens"


@pytest.mark.parametrize(
    ("names", "listed"), [([], "ready models: tok"), (["e1", "e2"], "several ready ensemble models: e1, e2")]
)
def test_pick_model_needs_exactly_one(names, listed):
    configs = {"tok": config("tok", "python"), **{n: config(n, max_texts="4", dimension="8") for n in names}}
    with pytest.raises(EmbeddingError, match=listed):
        pick_model(configs)


# validation


def test_encode_texts():
    assert encode_texts("héllo") == (["héllo".encode()], True)
    assert encode_texts(b"abc") == ([b"abc"], True)
    assert encode_texts(["a", b"b", np.str_("c")]) == ([b"a", b"b", b"c"], False)
    assert encode_texts(t for t in ("x", "y")) == ([b"x", b"y"], False)
    assert encode_texts([]) == ([], False)
    assert encode_texts([""]) == ([b""], False)  # empty text is the server's call


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        (["a", 3], r"texts\[1\] must be str or bytes, not int"),
        ([b"ok", b"\xff"], r"texts\[1\] is not valid UTF-8"),
        ("\ud800", "text is not valid UTF-8"),
        (None, "texts must be a str or an iterable"),
    ],
)
def test_encode_texts_rejects(texts, match):
    with pytest.raises(EmbeddingError, match=match) as exc:
        encode_texts(texts)
    assert exc.value.code == "INVALID_ARGUMENT" and exc.value.status is None


def test_check_dimensions():
    assert Call.prepare(INFO, ["a"], dimensions=2).width == 2
    assert Call.prepare(INFO, ["a"], dimensions=np.int64(8)).width == 8
    for bad in (1, 9, True, 4.0, "4"):
        with pytest.raises(EmbeddingError) as exc:
            Call.prepare(INFO, ["a"], dimensions=bad)
        assert (exc.value.reason, exc.value.param) == ("invalid_argument", "dimensions")


def test_an_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected option 'dimension'"):
        Call.prepare(INFO, ["a"], dimension=4)


def test_prepare_rejects_bad_input_type():
    with pytest.raises(EmbeddingError, match="input_type must be one of query, document"):
        Call.prepare(INFO, ["a"], input_type="passages")


# request building


def test_requests_send_only_given_options():
    ((where, request),) = Call.prepare(INFO, ["a", "b"]).requests()
    assert where == ""
    assert request["model_name"] == "ens"
    (text,) = request["inputs"]
    assert (text.name(), text.datatype(), text.shape(), input_values(text)) == ("text", "BYTES", [2], [b"a", b"b"])
    assert [o.name() for o in request["outputs"]] == ["embedding", "token_count"]


def test_requests_with_options():
    call = Call.prepare(INFO, "a", instruction="Represent: ", input_type="query", dimensions=4)
    ((_, request),) = call.requests()
    got = {i.name(): (i.datatype(), i.shape(), input_values(i)) for i in request["inputs"]}
    assert got == {
        "text": ("BYTES", [1], [b"a"]),
        "instruction": ("BYTES", [1], [b"Represent: "]),
        "input_type": ("BYTES", [1], [b"query"]),
        "dimensions": ("INT32", [1], [4]),
    }


def test_requests_are_chunked_in_order():
    texts = [f"t{i}" for i in range(11)]
    requests = list(Call.prepare(INFO, texts, dimensions=3).requests())
    assert [w for w, _ in requests] == [
        "request for texts[0:4]",
        "request for texts[4:8]",
        "request for texts[8:11]",
    ]
    sent = [input_values(r["inputs"][0]) for _, r in requests]
    assert [x for chunk in sent for x in chunk] == [t.encode() for t in texts]
    assert all(input_values(r["inputs"][1]) == [3] for _, r in requests)


# reassembly


def test_finish_reassembles_in_order():
    texts = ["a" * i for i in range(1, 12)]
    call = Call.prepare(INFO, texts)
    result = call.finish([FakeResult(c, 8) for c in call.chunks()])
    assert result.embeddings.shape == (11, 8) and result.embeddings.dtype == np.float32
    assert result.embeddings[:, 0].tolist() == list(range(1, 12))
    assert result.token_counts.tolist() == list(range(1, 12)) and result.model == "ens"


def test_finish_single_text_is_one_vector():
    call = Call.prepare(INFO, "abc", dimensions=4)
    result = call.finish([FakeResult(c, 4) for c in call.chunks()])
    assert result.embeddings.shape == (4,)
    assert result.token_counts.shape == () and int(result.token_counts) == 3


@pytest.mark.parametrize(("kwargs", "shape"), [({}, (0, 8)), ({"dimensions": 3}, (0, 3))])
def test_finish_empty_list(kwargs, shape):
    call = Call.prepare(INFO, [], **kwargs)
    assert list(call.requests()) == []
    result = call.finish([])
    assert result.embeddings.shape == shape and result.embeddings.dtype == np.float32
    assert result.token_counts.shape == (0,) and result.token_counts.dtype == np.int32


@pytest.mark.parametrize("fake", [lambda c: FakeResult(c, 7), lambda c: FakeResult(c, 8, rows=1)])
def test_finish_rejects_wrong_shape(fake):
    call = Call.prepare(INFO, ["a", "b"])
    with pytest.raises(EmbeddingError, match="expected embedding") as exc:
        call.finish([fake(c) for c in call.chunks()])
    assert exc.value.code == "INTERNAL"


def test_finish_rejects_missing_output():
    call = Call.prepare(INFO, ["a"])
    fake = FakeResult(["a"], 8)
    del fake.outputs["token_count"]
    with pytest.raises(EmbeddingError, match="lacks"):
        call.finish([fake])


# errors


def test_triton_errors_are_converted():
    with pytest.raises(EmbeddingError) as exc, triton_errors("request for texts[4:8]"):
        raise InferenceServerException("text 1 is empty", status="StatusCode.INVALID_ARGUMENT")
    err = exc.value
    assert (err.status, err.code) == ("StatusCode.INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert err.message == "text 1 is empty (request for texts[4:8])"
    assert str(err) == "INVALID_ARGUMENT: text 1 is empty (request for texts[4:8])"
    assert err.__cause__ is None and err.__suppress_context__


def test_error_without_status():
    assert EmbeddingError("boom").code == "UNKNOWN"
    assert EmbeddingError.from_triton(InferenceServerException("boom")).code == "UNKNOWN"


# clients: construction needs no server


def test_clients_construct_without_server():
    with EmbeddingClient("localhost:1", "ens", headers={"a": "b"}, compression="gzip") as client:
        assert repr(client) == "EmbeddingClient(url='localhost:1', model='ens')"

    async def run():
        async with AsyncEmbeddingClient("localhost:1", "ens"):
            pass

    asyncio.run(run())


def test_client_rejects_unknown_compression():
    with pytest.raises(EmbeddingError, match="compression"):
        EmbeddingClient("localhost:1", compression="zstd")


def test_gather_keeps_order_and_cancels_on_error():
    cancelled = []

    async def value(x, delay):
        await asyncio.sleep(delay)
        return x

    async def slow():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def fail():
        raise EmbeddingError("boom")

    async def run():
        assert await gather(value(i, 0.01 * (5 - i)) for i in range(5)) == [0, 1, 2, 3, 4]
        with pytest.raises(EmbeddingError):
            await gather([slow(), fail()])
        await asyncio.sleep(0)

    asyncio.run(run())
    assert cancelled == [True]


# CLI output


def test_cli_json():
    result = Call.prepare(INFO, ["ab", "c"], dimensions=2).finish([FakeResult(["ab", "c"], 2)])
    doc = json.loads(to_json(result, None))
    assert doc == {"model": "ens", "dimension": 2, "token_counts": [2, 1], "embeddings": [[2.0, 2.0], [1.0, 1.0]]}
    doc = json.loads(to_json(result, 1))
    assert doc["embeddings"] == [[2.0], [1.0]]
    assert doc["norms"] == pytest.approx([2 * 2**0.5, 2**0.5], abs=1e-6)


# retries


def test_retry_policy_stays_within_the_deadline():
    import time

    from tembed_client import RetryPolicy

    policy = RetryPolicy(attempts=3, base_s=0.1, max_s=0.1)
    start = time.monotonic()
    assert 0 <= policy.again(0, start, timeout=10) <= 0.1
    assert policy.again(2, start, timeout=10) is None  # attempts used up
    assert policy.again(0, start - 10, timeout=10) is None  # the deadline has passed
    assert RetryPolicy(attempts=1).again(0, start, None) is None


@pytest.mark.parametrize(
    ("status", "message", "retryable"),
    [
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", True),
        ("StatusCode.RESOURCE_EXHAUSTED", "overloaded", True),
        ("StatusCode.UNAVAILABLE", "Request timeout expired", False),  # it already waited its turn
        ("StatusCode.INVALID_ARGUMENT", "text[0] is empty", False),
        ("StatusCode.INTERNAL", "Stub process 'm-encoder_0_0' is not healthy.", True),  # being reloaded
    ],
)
def test_which_errors_are_retried(status, message, retryable):
    from tritonclient.utils import InferenceServerException

    err = EmbeddingError.from_triton(InferenceServerException(message, status=status))
    assert err.retryable is retryable


# the one-step layout: one batched model, one request per batch row


def one_step_config(name: str = "one", **params: str) -> dict:
    """A one-step model's config as ``get_model_config(as_json=True)`` gives it: a batched Python model."""
    params = {"task": "embed", "dimension": "8", "min_dimension": "2", "max_texts": "4", "layout": "one-step"} | params
    cfg = config(name, platform="", **params)
    cfg["config"] |= {
        "backend": "python",
        "max_batch_size": 16,
        "input": [{"name": "text", "dims": ["-1"], "allow_ragged_batch": True}, {"name": "dimensions", "dims": ["1"]}],
        "output": [{"name": "embedding"}, {"name": "token_count"}],
    }
    return cfg


class BatchedFakeResult(FakeResult):
    """A batched model's answer: each output one leading batch row more."""

    def as_numpy(self, name):
        data = super().as_numpy(name)
        return None if data is None else data[np.newaxis]


def test_a_one_step_model_is_found_and_its_requests_are_batch_rows():
    info = parse_model_config(one_step_config())
    assert info.batched and not parse_model_config(config(max_texts="4", dimension="8")).batched
    lane = one_step_config("one-lane-low", lane_of="one")
    tokenizer = config("one-tokenizer", platform="", max_texts="4", dimension="8")  # no layout: not served
    assert pick_model({"one": one_step_config(), "one-lane-low": lane, "one-tokenizer": tokenizer}).name == "one"
    texts = [f"t{i}" for i in range(6)]
    call = Call.prepare(info, texts, dimensions=3)
    requests = [r for _, r in call.requests()]
    shapes = [{i.name(): i.shape() for i in r["inputs"]} for r in requests]
    assert shapes == [{"text": [1, 4], "dimensions": [1, 1]}, {"text": [1, 2], "dimensions": [1, 1]}]
    assert [x for r in requests for x in input_values(r["inputs"][0])] == [t.encode() for t in texts]
    result = call.finish([BatchedFakeResult(c, 3) for c in call.chunks()])
    assert result.embeddings.shape == (6, 3) and result.token_counts.tolist() == [2] * 6
    single = Call.prepare(info, "abc")
    assert single.finish([BatchedFakeResult(c, 8) for c in single.chunks()]).embeddings.shape == (8,)
    with pytest.raises(EmbeddingError, match="one batch row"):  # an answer without its row is refused
        call.finish([FakeResult(c, 3) for c in call.chunks()])


def test_tokenize_on_a_one_step_model_calls_its_tokenizer_unbatched():
    from tembed_client.calls import TokenizeCall

    info = parse_model_config(one_step_config(tokenizer="one-tokenizer", tokenizer_outputs="input_ids,attention_mask"))
    ((_, request),) = TokenizeCall.prepare(info, ["a", "b"]).requests()
    assert request["model_name"] == "one-tokenizer" and request["inputs"][0].shape() == [2]
