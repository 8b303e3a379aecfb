"""long_text "chunk": a text over max_length embedded as the token-weighted mean of its windows.

First the window logic without a server (textproc, the profile's caps, the client's splitting),
then a real tritonserver: the served vector against the windows embedded one by one through the
encoder model, ``dimensions`` after pooling, the caps' errors beside untouched requests, the client
splitting a list by windows, and the gateway through the ``openai`` package."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from tembed.repository import ServingOptions, encoder_config
from tembed.trt_profiles import optimization_profiles, select_profile
from tembed_client import AsyncEmbeddingClient, EmbeddingError
from tembed_client._common import Call, chunk_windows, chunked_rows
from tembed_fixtures.qwen3_tiny import base_tokenizer_folder
from tembed_gateway import GatewaySettings, GatewayThread
from tembed_serving.profile import chunk_defaults
from tembed_serving.textproc import RequestError, TextEncoder, window_starts, window_weights

from .conftest import TEXTS

E5, QWEN = "multilingual-e5-small", "qwen3-embedding-tiny"
EOT = 151643
LONG = " ".join(f"w{i}" for i in range(40)) + " the final words"


def real_rows(batch):
    return [ids[mask == 1].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]


# --- windows, without a server ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "room", "overlap"), [(13, 12, 2), (100, 12, 2), (100, 12, 0), (100, 12, 50), (507, 10, 3), (30, 29, 4)]
)
def test_windows_cover_the_text_evenly_with_the_overlap(length, room, overlap):
    starts = window_starts(length, room, overlap)
    stride = room - min(overlap, room // 2)
    assert starts[0] == 0 and starts[-1] == length - room  # every window full, the last ends the text
    gaps = np.diff(starts)
    assert (gaps >= 1).all() and (gaps <= stride).all() and gaps.max() - gaps.min() <= 1  # even spread
    assert (len(starts) - 2) * stride + room < length  # one window fewer could not cover it
    w = window_weights(starts, room, length)
    assert w.sum() == pytest.approx(length)  # each token counted once over all windows
    assert (w > 0).all() and (w <= room).all()


def test_weights_share_overlapping_tokens():
    np.testing.assert_allclose(window_weights([0, 10, 20], 10, 30), [10, 10, 10])  # no overlap: the room
    np.testing.assert_allclose(window_weights([0, 6], 10, 16), [8, 8])  # 4 shared tokens, half each
    np.testing.assert_allclose(window_weights([0, 5, 10], 10, 20), [7.5, 5, 7.5])


@pytest.fixture(scope="module")
def e5_tok(fixture_dirs):
    return Tokenizer.from_file(str(fixture_dirs[E5] / "tokenizer.json"))


@pytest.fixture(scope="module")
def short_e5(profiles, fixture_dirs):
    p = dataclasses.replace(
        profiles[E5], max_length=16, length_buckets=[], max_windows=10, max_rows=20, chunk_overlap=2
    )
    return TextEncoder(p, fixture_dirs[E5] / "tokenizer.json")


def test_a_text_under_the_limit_is_the_unchunked_row(short_e5):
    texts = ["a short text", "北京欢迎你", "w1 w2 w3"]
    a, b = short_e5(texts, input_type="query"), short_e5(texts, input_type="query", long_text="chunk")
    for field in ("input_ids", "attention_mask", "token_count", "token_count_original", "row_text", "row_weight"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_windows_carry_prompt_and_specials_and_cover_the_text(short_e5, e5_tok):
    batch = short_e5(["ok", LONG], input_type="query", long_text="chunk")
    whole = e5_tok.encode("query: " + LONG).ids  # <s> ▁que ry : ...text... </s>
    head = 1 + len(e5_tok.encode("query:").ids) - 2  # <s> and the prompt's tokens
    fixed, body = whole[:head], whole[head:-1]
    rows = real_rows(batch)
    assert batch.row_text.tolist() == [0] + [1] * (len(rows) - 1)
    windows = rows[1:]
    room = 16 - head - 1
    assert all(len(r) == 16 and r[:head] == fixed and r[-1] == whole[-1] for r in windows)
    # Each window's text is a slice of the whole text's tokens, at the starts the rule gives.
    starts = window_starts(len(body), room, 2)
    assert [r[head:-1] for r in windows] == [body[s : s + room] for s in starts]
    np.testing.assert_allclose(batch.row_weight[1:], window_weights(starts, room, len(body)))
    assert batch.token_count.tolist() == [len(rows[0]), 16 * len(windows)]  # every window's tokens
    assert batch.token_count_original.tolist() == [len(rows[0]), len(whole)]


def test_qwen_windows_end_with_the_end_token_once(profiles, fixture_dirs):
    p = dataclasses.replace(profiles[QWEN], max_length=40, length_buckets=[], max_windows=20, chunk_overlap=4)
    for tok in (fixture_dirs[QWEN] / "tokenizer.json", base_tokenizer_folder() / "tokenizer.json"):
        enc = TextEncoder(p, tok)
        rows = real_rows(enc(["word " * 100 + "last"], input_type="query", long_text="chunk"))
        assert len(rows) > 2
        for row in rows:
            assert len(row) == 40 and row[-1] == EOT and row.count(EOT) == 1
            assert enc.tokenizer.decode(row).startswith("Instruct: ")
        assert enc.tokenizer.decode(rows[-1][:-1]).endswith(" word last")


@pytest.mark.parametrize("truncate", [None, "END", "START", "NONE"])
def test_a_text_over_max_windows_is_refused_whatever_truncate_says(short_e5, truncate):
    text = "word " * 103  # 103 text tokens: 11 windows of 12, 10 apart
    with pytest.raises(
        RequestError, match=r"text\[1\] is 107 tokens, 11 windows of 16; the limit is 10 windows per text"
    ):
        short_e5(["ok", text], truncate=truncate, long_text="chunk")


def test_a_request_over_max_rows_is_refused_naming_the_text(short_e5):
    ten, five = "word " * 102, "word " * 52  # 10 and 5 windows of 12 text tokens, 10 apart
    assert len(short_e5([ten], long_text="chunk").row_text) == 10
    assert len(short_e5([five], long_text="chunk").row_text) == 5
    with pytest.raises(
        RequestError, match=r"text\[3\] \(5 windows\) brings the request to 21 windows; the limit is 20"
    ):
        short_e5([ten, "ok", five, five], long_text="chunk")
    assert len(short_e5([ten, five, "ok", "ok", "ok", "ok", "ok"], long_text="chunk").row_text) == 20


def test_chunk_counts_past_the_character_cap(short_e5):
    # Truncation cuts huge texts before tokenizing; chunk must see (and here refuse) all of it.
    huge = "word " * (short_e5.char_cap // 2)
    capped = short_e5([huge]).token_count_original[0]
    with pytest.raises(RequestError, match=r"text\[0\] is (\d+) tokens") as exc:
        short_e5([huge], long_text="chunk")
    assert int(exc.value.args[0].split(" is ")[1].split()[0]) > capped


def test_bad_long_text_value(short_e5):
    with pytest.raises(RequestError, match="long_text must be one of truncate, chunk, got 'CHUNK'"):
        short_e5(["x"], long_text="CHUNK")


def test_caps_and_the_encoder_admit_every_chunked_request(profiles):
    assert chunk_defaults(512, 64) == (64, 64, 32)
    assert chunk_defaults(256, 8) == (128, 128, 16)  # a request holds one text of max_windows
    assert chunk_defaults(8192, 64) == (4, 64, 512)  # or max_texts texts, whichever is more
    p = profiles[E5]
    assert p.max_rows >= p.max_texts and p.max_windows <= p.max_rows
    for backend in ("python-onnx", "onnxruntime", "tensorrt"):
        assert encoder_config(p, ServingOptions(backend=backend)).max_batch_size == p.max_rows
    # A chunked request is padded to max_length: some TensorRT profile takes max_rows rows of it.
    select_profile(optimization_profiles(p.max_length, p.encoder_rows), p.max_rows, p.max_length)


def test_client_splits_a_list_by_windows():
    texts = [b"x" * n for n in (100, 3000, 3000, 50, 9000, 10)]
    rows = [chunk_windows(t, 512, 64) for t in texts]
    assert rows == [1, 12, 12, 1, 36, 1]
    assert chunk_windows(b"x" * 10**6, 512, 64) == 64  # past max_windows the server refuses anyway
    pieces = chunked_rows(texts, 4, None, rows, 40)
    assert [len(p) for p in pieces] == [4, 2] and sum(pieces, []) == texts
    assert [len(p) for p in chunked_rows(texts, 4, None, rows, 25)] == [3, 1, 1, 1]  # 36 > 25 goes alone
    assert [len(p) for p in chunked_rows(texts, 4, 6000, rows, 128)] == [2, 2, 1, 1]  # bytes still count


# --- through a real tritonserver ---------------------------------------------------------------

slow = pytest.mark.slow
TOPICS = ("cats sleeping in the sun", "rockets leaving the launch pad", "bread rising in a warm kitchen")
# 1226 text tokens, three topics in turn: 3 windows of e5's 512 tokens, each about something else.
THREE = " ".join(f"Sentence {i} of this story is about {TOPICS[i * 3 // 80]}." for i in range(80))
# Many bytes, few tokens ("▁understanding" is one token): 2 windows each, but the client, which
# counts bytes, expects up to 29 and puts at most 2 such texts in a request of 64 windows.
WIDE = ["understanding " * 520, "communication " * 520]
OVER_WINDOWS = "word " * 30_900  # 65 windows of 512: over e5's 64 per text
FIFTY = "word " * 23_800  # 50 windows: two of them are over the 64 per request


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def e5(clients):
    return clients[E5]


@pytest.fixture(scope="module")
def grpc(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        yield client


def bytes_input(name: str, values: list[str]) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, [len(values)], "BYTES")
    inp.set_data_from_numpy(np.array([v.encode() for v in values], dtype=np.object_))
    return inp


def windows_by_hand(tok: Tokenizer, text: str, max_length: int, overlap: int) -> tuple[list[list[int]], np.ndarray]:
    """The documented rule, spelled out here rather than imported: windows of the document prompt,
    max_length tokens each, evenly spread with at least ``overlap`` shared; each token weighs 1,
    split among the windows that hold it."""
    whole = tok.encode("passage: " + text).ids
    head = 1 + len(tok.encode("passage:").ids) - 2
    body, room = whole[head:-1], max_length - head - 1
    n = 1 + -(-(len(body) - room) // (room - overlap))
    starts = [k * (len(body) - room) // (n - 1) for k in range(n)]
    held = np.zeros(len(body))
    for s in starts:
        held[s : s + room] += 1
    weights = np.array([(1 / held[s : s + room]).sum() for s in starts])
    return [whole[:head] + body[s : s + room] + whole[-1:] for s in starts], weights


@slow
def test_texts_under_the_limit_are_exactly_the_unchunked_vectors(e5):
    plain, chunked = e5.encode(TEXTS), e5.encode(TEXTS, long_text="chunk")
    np.testing.assert_array_equal(chunked.embeddings, plain.embeddings)
    np.testing.assert_array_equal(chunked.token_counts, plain.token_counts)
    assert not chunked.truncated.any()


@slow
def test_a_three_window_text_is_the_weighted_mean_of_its_windows(e5, grpc, e5_tok, profiles):
    p = profiles[E5]
    windows, weights = windows_by_hand(e5_tok, THREE, p.max_length, p.chunk_overlap)
    assert len(windows) == 3 and all(len(w) == p.max_length for w in windows)
    by_hand = []
    for ids in windows:  # each window alone, straight to the encoder model
        inputs = []
        for name in ("input_ids", "attention_mask"):
            inputs.append(grpcclient.InferInput(name, [1, len(ids)], "INT64"))
        inputs[0].set_data_from_numpy(np.array([ids], dtype=np.int64))
        inputs[1].set_data_from_numpy(np.ones((1, len(ids)), dtype=np.int64))
        by_hand.append(grpc.infer(f"{E5}-encoder", inputs).as_numpy("embedding")[0])
    by_hand = np.array(by_hand, dtype=np.float64)
    expected = unit(weights @ by_hand)
    assert min(float(v @ expected) for v in unit(by_hand)) < 0.99  # the windows do differ
    # 3 windows and 6 short texts: 9 rows, more than the 8 texts a request may hold.
    result = e5.encode([*TEXTS[:3], THREE, *TEXTS[3:]], long_text="chunk")
    assert result.embeddings.shape == (7, p.dimension)
    assert np.abs(result.embeddings[3] - expected).max() <= 1e-5
    assert result.token_counts[3] == 3 * p.max_length  # every window's tokens
    assert result.original_token_counts[3] == len(e5_tok.encode("passage: " + THREE).ids)
    assert not result.truncated.any()
    others = np.delete(result.embeddings, 3, axis=0)
    np.testing.assert_allclose(others, e5.embed(TEXTS), atol=1e-5)  # short texts: their own rows
    # Matryoshka after pooling: the pooled vector's first d components, re-normalised.
    small = e5.embed(THREE, long_text="chunk", dimensions=128)
    assert np.abs(small - unit(expected[:128])).max() <= 1e-5
    pooled_small = unit(weights @ unit(by_hand[:, :128]))  # truncating each window first differs
    assert np.abs(small - pooled_small).max() > 1e-4


@slow
def test_window_caps_refuse_one_request_and_leave_the_others(e5, grpc):
    three = e5.embed(THREE, long_text="chunk")
    short = e5.embed(TEXTS)

    def over_per_request():
        inputs = [bytes_input("text", ["ok", FIFTY, FIFTY]), bytes_input("long_text", ["chunk"])]
        return grpc.infer(E5, inputs)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        bad_text = [pool.submit(e5.embed, ["ok", OVER_WINDOWS], truncate=t, long_text="chunk") for t in ("END", "NONE")]
        bad_request = pool.submit(over_per_request)
        good = [pool.submit(e5.embed, THREE, long_text="chunk"), pool.submit(e5.embed, TEXTS)]
        # The client sends the long text in a request of its own (1 + 64 expected windows > 64) and
        # says where that request lies in the list.
        message = r"text\[0\] is 30904 tokens, 65 windows of 512; the limit is 64 .*\(request for texts\[1:2\]\)"
        for future in bad_text:
            with pytest.raises(EmbeddingError, match=message) as exc:
                future.result()
            assert exc.value.code == "INVALID_ARGUMENT"
        with pytest.raises(
            InferenceServerException,
            match=r"text\[2\] \(50 windows\) brings the request to 101 windows; the limit is 64",
        ):
            bad_request.result()
        np.testing.assert_allclose(good[0].result(), three, atol=1e-6)
        np.testing.assert_allclose(good[1].result(), short, atol=1e-6)


def encoder_call(grpc, ids: list[list[int]], options: list[list[int]] | None = None):
    """Straight to the encoder model: rows of ids (all real tokens), and per-row options if given."""
    arrays = {"input_ids": np.array(ids, dtype=np.int64), "attention_mask": np.ones((len(ids), len(ids[0])), np.int64)}
    if options is not None:
        arrays["row_options"] = np.array(options, dtype=np.int32)
        arrays["row_weight_column"] = np.ones((len(ids), 1), dtype=np.float32)
    inputs = []
    for name, a in arrays.items():
        inputs.append(
            grpcclient.InferInput(
                name, list(a.shape), "INT64" if a.dtype == np.int64 else ("INT32" if a.dtype == np.int32 else "FP32")
            )
        )
        inputs[-1].set_data_from_numpy(a)
    return grpc.infer(f"{E5}-encoder", inputs)


def encoder_counts(grpc) -> tuple[int, int]:
    """(requests served, executions) of the encoder model so far."""
    st = grpc.get_inference_statistics(f"{E5}-encoder", as_json=True)["model_stats"][0]
    return int(st["inference_stats"]["success"].get("count", 0)), int(st.get("execution_count", 0))


@slow
def test_a_merged_encoder_batch_finishes_each_request_as_its_own(e5, grpc, profiles):
    """The Python-backend encoder finishes the vectors (no postprocess step): requests the dynamic
    batcher merged into one execute each get their own windows pooled, dimensions and type, and a
    request the finishing refuses is refused alone."""
    d = profiles[E5].dimension
    calls = {  # same shape ([4, 512] rows) so the batcher may merge them
        "float": {},
        "d128": {"dimensions": 128},
        "binary": {"embedding_type": "binary"},
        "uint8 d256": {"embedding_type": "uint8", "dimensions": 256},
    }
    texts = [THREE, LONG]
    alone = {k: e5.embed(texts, long_text="chunk", **kw) for k, kw in calls.items()}
    assert alone["float"].shape == (2, d) and alone["d128"].shape == (2, 128) and alone["binary"].shape == (2, d // 8)
    ids = [[0, 1000, 2000, 2]] * 3  # rows the encoder takes as they are; finishing refuses 10**6 dimensions
    merged, failures = False, []
    for _ in range(4):
        before = encoder_counts(grpc)
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            # One [4, 512] request of each kind (8k tokens in all: the encoder queue's 10 s holds them on
            # a busy 2-core machine); while the first runs, the others wait and merge.
            good = [(k, pool.submit(e5.embed, texts, long_text="chunk", **kw)) for k, kw in calls.items()]
            refused = [pool.submit(encoder_call, grpc, ids, [[0, 10**6, 0], [1, 10**6, 0], [1, 10**6, 0]])]
            refused.append(pool.submit(encoder_call, grpc, ids, [[0, d, 0], [2, d, 0], [3, d, 0]]))
            plain = [pool.submit(encoder_call, grpc, ids, [[0, d, 0], [1, d, 0], [1, d, 0]]) for _ in (0, 1)]
            for k, f in good:
                got = f.result()
                if got.dtype != alone[k].dtype or got.shape != alone[k].shape:
                    failures.append(f"{k}: {got.dtype}{got.shape}")
                elif np.abs(got.astype(np.float64) - alone[k]).max() > (1e-5 if got.dtype == np.float32 else 1):
                    failures.append(f"{k}: other values")
            for f, message in zip(refused, ("dimensions", "row texts must start at 0 and go up by at most 1")):
                with pytest.raises(InferenceServerException, match=message) as exc:
                    f.result()
                assert "INVALID_ARG" in str(exc.value.status())
            for f in plain:  # rows 1 and 2 are one text: their mean, re-normalised, is the row itself
                assert f.result().as_numpy("embedding").shape == (2, d)
        served, executions = (a - b for a, b in zip(encoder_counts(grpc), before))
        merged |= executions < served
        if merged:
            break
    assert not failures, failures
    assert merged, "the dynamic batcher never merged two requests: nothing was tested"
    # Called directly with ids alone, the encoder answers its rows as they are.
    rows = encoder_call(grpc, ids).as_numpy("embedding")
    assert rows.shape == (3, d)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)


@slow
def test_bad_long_text_values(e5, grpc):
    with pytest.raises(EmbeddingError, match="long_text must be one of truncate, chunk, got 'CHUNK'") as exc:
        e5.embed("x", long_text="CHUNK")
    assert exc.value.code == "INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="long_text must be one of truncate, chunk, got 'windows'"):
        grpc.infer(E5, [bytes_input("text", ["x"]), bytes_input("long_text", ["windows"])])
    with pytest.raises(InferenceServerException, match="unexpected shape for input 'long_text'"):
        grpc.infer(E5, [bytes_input("text", ["x"]), bytes_input("long_text", ["chunk", "chunk"])])


@slow
def test_clients_split_a_list_by_windows(e5, server):
    texts = WIDE * 3
    # The server's caps reach the client: 2 texts of up to 29 windows per request of 64.
    assert [len(c) for c in Call.prepare(e5.model_info(), texts, long_text="chunk").chunks()] == [2, 2, 2]
    alone = e5.embed(WIDE, long_text="chunk")
    np.testing.assert_allclose(e5.embed(texts, long_text="chunk"), np.tile(alone, (3, 1)), atol=1e-6)

    async def concurrently():
        async with AsyncEmbeddingClient(server.grpc_url, E5) as client:
            return await client.embed(texts, long_text="chunk")

    np.testing.assert_allclose(asyncio.run(concurrently()), np.tile(alone, (3, 1)), atol=1e-6)


@pytest.fixture(scope="module")
def gateway(server):
    with GatewayThread(GatewaySettings(server.grpc_url, model_repository=server.model_repository)) as gw:
        yield gw


@slow
def test_gateway_chunks_with_the_openai_package(gateway, e5):
    oai = openai.Client(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    resp = oai.embeddings.create(model=E5, input=["short", THREE], extra_body={"long_text": "chunk"})
    served = np.array([d.embedding for d in resp.data], dtype=np.float32)
    np.testing.assert_allclose(served, e5.embed(["short", THREE], long_text="chunk"), atol=1e-6)
    assert resp.usage.prompt_tokens == int(e5.encode(["short", THREE], long_text="chunk").token_counts.sum())
    with pytest.raises(openai.BadRequestError, match="long_text must be one of truncate, chunk, got 'CHUNK'") as exc:
        oai.embeddings.create(model=E5, input="x", extra_body={"long_text": "CHUNK"})
    assert exc.value.body["param"] == "long_text"
    over = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": E5, "input": OVER_WINDOWS, "long_text": "chunk"})
    assert over.status_code == 400, over.text
    err = over.json()["error"]
    assert err["param"] == "input" and err["code"] == "context_length_exceeded" and "65 windows" in err["message"]
    tok = httpx.post(f"{gateway.url}/tokenize", json={"model": E5, "input": "x", "long_text": "chunk"})
    assert tok.status_code == 400 and tok.json()["error"]["param"] == "long_text"
