"""Compact vectors (``embedding_type``): int8 / uint8 from the ranges calibrated at export, binary /
ubinary sign bits; the quantisation against sentence-transformers, the calibration, and the served
results through both clients, raw gRPC and the gateway (with the real ``openai`` package)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tembed.calibration import calibrated_dimensions, calibration_texts, ranges
from tembed_client import AsyncEmbeddingClient, EmbeddingClient, EmbeddingError
from tembed_client.contract import EMBEDDING_TYPES
from tembed_eval.data import DEFAULT_DATA
from tembed_gateway import GatewaySettings, GatewayThread
from tembed_serving.contract import PROFILE_FILE, Layout
from tembed_serving.profile import ModelProfile
from tembed_serving.textproc import RequestError
from tembed_serving.vectors import from_rows, quantize

from .conftest import TEXTS

E5, QWEN = "multilingual-e5-small", "qwen3-embedding-tiny"
slow = pytest.mark.slow


def profile_with(ranges_by_size: dict, dimension: int = 384, min_dimension: int = 32) -> ModelProfile:
    return ModelProfile(
        name="unit",
        model_type="bert",
        pooling="mean",
        padding_side="right",
        max_length=512,
        dimension=dimension,
        min_dimension=min_dimension,
        pad_token_id=0,
        int8_ranges=ranges_by_size,
    )


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32) + np.linspace(-0.5, 0.5, d, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def as_values(packed: np.ndarray, kind: str) -> np.ndarray:
    return packed.view(np.int8) if kind in ("int8", "binary") else packed


def signs(binary: np.ndarray, d: int) -> np.ndarray:
    """The bits of served binary (int8 = bits - 128) vectors, d per row."""
    return np.unpackbits((binary.astype(np.int16) + 128).astype(np.uint8), axis=-1)[..., :d].astype(bool)


def served_profile(server, name: str) -> ModelProfile:
    return ModelProfile.load(Layout(server.model_repository, name).version_dir("tokenizer") / PROFILE_FILE)


def levels(vectors: np.ndarray, lo_hi: list) -> tuple[np.ndarray, np.ndarray]:
    """0..255 levels of float vectors with the profile's ranges, and where a level is within float
    rounding of its boundary (a float32 result of a separate request may land on either side)."""
    lo, hi = np.asarray(lo_hi, dtype=np.float32)
    step = (hi - lo) / np.float32(255)
    frac = (vectors - lo) / step
    return np.clip(np.floor(frac), 0, 255), np.abs(frac - np.rint(frac)) < 1e-3


# quantize against sentence-transformers (the convention the wire follows)


@pytest.mark.parametrize("d", [384, 64, 36])
@pytest.mark.parametrize("kind", EMBEDDING_TYPES[1:])
def test_quantize_equals_sentence_transformers(kind, d):
    from sentence_transformers.util.quantization import quantize_embeddings

    rng = np.random.default_rng(d)
    calibration, vectors = unit_rows(rng, 200, d), unit_rows(rng, 50, d)  # some fall outside the ranges
    lo_hi = ranges(calibration, [d])[str(d)]
    want = quantize_embeddings(vectors, kind, ranges=np.asarray(lo_hi, dtype=np.float32))
    got = as_values(quantize(vectors, kind, profile_with({str(d): lo_hi}, d, min(d, 32))), kind)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    if kind.endswith("int8"):
        assert ((vectors < np.asarray(lo_hi)[0]) | (vectors > np.asarray(lo_hi)[1])).any()  # clipping reached


def test_quantize_refuses_what_it_cannot_do():
    vectors = unit_rows(np.random.default_rng(0), 2, 100)
    with pytest.raises(RequestError, match=r"calibrated for dimensions 32, 384, not 100"):
        quantize(vectors, "int8", profile_with({"32": [[0.0] * 32] * 2, "384": [[0.0] * 384] * 2}))
    with pytest.raises(RequestError, match="embedding_type must be one of int8, uint8, binary, ubinary"):
        quantize(vectors, "float", profile_with({}))


# calibration at export


def test_calibrated_dimensions():
    assert calibrated_dimensions(profile_with({}, 384, 32)) == [32, 64, 128, 256, 384]
    assert calibrated_dimensions(profile_with({}, 1024, 1024)) == [1024]
    assert calibrated_dimensions(profile_with({}, 768, 64)) == [64, 128, 256, 512, 768]
    assert calibrated_dimensions(profile_with({}, 64, 20)) == [32, 64]


def test_ranges_are_the_min_and_max_of_the_cut_vectors():
    vectors = unit_rows(np.random.default_rng(1), 300, 384)
    out = ranges(vectors, [64, 384])
    cut = vectors[:, :64] / np.linalg.norm(vectors[:, :64], axis=1, keepdims=True)
    for size, v in (("64", cut), ("384", vectors)):
        lo, hi = np.asarray(out[size], dtype=np.float32)
        np.testing.assert_array_equal(lo, v.min(axis=0))
        np.testing.assert_array_equal(hi, v.max(axis=0))
    json.dumps(out)  # goes into profile.json as it is


def test_calibration_texts_ship_with_the_package():
    texts = calibration_texts()
    assert 250 <= len(texts) <= 1000 and len(set(texts)) == len(texts)
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts)
    assert chinese >= 100 and len(texts) - chinese >= 100
    assert max(map(len, texts)) < 200  # short: calibration stays a few seconds


# served through the gRPC clients


@slow
def test_every_served_model_has_ranges_for_its_sizes(server):
    for name, sizes in ((E5, ["32", "64", "128", "256", "384"]), (QWEN, ["32", "64"])):
        profile = served_profile(server, name)
        assert sorted(profile.int8_ranges, key=int) == sizes
        for size, (lo, hi) in profile.int8_ranges.items():
            assert len(lo) == len(hi) == int(size) and all(a < b for a, b in zip(lo, hi))


@slow
@pytest.mark.parametrize("name", [E5, QWEN])
def test_binary_round_trips_to_the_signs_of_the_float_vector(clients, name):
    client = clients[name]
    d = client.model_info().dimension
    floats = client.embed(TEXTS)
    binary = client.encode(TEXTS, embedding_type="binary")
    assert binary.embedding_type == "binary" and binary.embeddings.dtype == np.int8
    assert binary.embeddings.shape == (len(TEXTS), d // 8)
    np.testing.assert_array_equal(signs(binary.embeddings, d), floats > 0)
    ubinary = client.embed(TEXTS, embedding_type="ubinary")
    assert ubinary.dtype == np.uint8
    np.testing.assert_array_equal(ubinary.astype(np.int16), binary.embeddings.astype(np.int16) + 128)
    np.testing.assert_array_equal(np.unpackbits(ubinary, axis=1).astype(bool), floats > 0)
    np.testing.assert_array_equal(binary.token_counts, client.encode(TEXTS).token_counts)


@slow
@pytest.mark.parametrize("name", [E5, QWEN])
def test_int8_and_uint8_use_the_profiles_ranges(server, clients, name):
    client = clients[name]
    d = client.model_info().dimension
    lo_hi = served_profile(server, name).int8_ranges[str(d)]
    want, boundary = levels(client.embed(TEXTS), lo_hi)
    int8 = client.embed(TEXTS, embedding_type="int8")
    uint8 = client.embed(TEXTS, embedding_type="uint8")
    assert int8.dtype == np.int8 and uint8.dtype == np.uint8 and int8.shape == uint8.shape == (len(TEXTS), d)
    assert np.all((uint8 == want) | boundary), "uint8 is not floor((x - min) / step) with the profile's ranges"
    np.testing.assert_array_equal(int8.astype(np.int16), uint8.astype(np.int16) - 128)
    # Calibrated on real text: the levels of real text spread over most of the byte.
    assert int(uint8.max()) - int(uint8.min()) > 128


@slow
def test_dimensions_apply_before_quantization(server, clients):
    client, profile = clients[E5], served_profile(server, E5)
    cut = client.embed(TEXTS, dimensions=64)
    binary = client.embed(TEXTS, dimensions=64, embedding_type="binary")
    assert binary.shape == (len(TEXTS), 8)
    np.testing.assert_array_equal(signs(binary, 64), cut > 0)
    want, boundary = levels(client.embed(TEXTS, dimensions=128), profile.int8_ranges["128"])
    got = client.embed(TEXTS, dimensions=128, embedding_type="uint8")
    assert got.shape == (len(TEXTS), 128) and np.all((got == want) | boundary)
    # Binary packs any size (the last byte padded with zeros); int8 only the calibrated ones.
    odd = client.embed(TEXTS, dimensions=100, embedding_type="ubinary")
    assert odd.shape == (len(TEXTS), 13)
    np.testing.assert_array_equal(
        np.unpackbits(odd, axis=1)[:, :100].astype(bool), client.embed(TEXTS, dimensions=100) > 0
    )
    assert not np.unpackbits(odd, axis=1)[:, 100:].any()
    with pytest.raises(EmbeddingError, match=r"calibrated for dimensions 32, 64, 128, 256, 384, not 100") as exc:
        client.embed(TEXTS, dimensions=100, embedding_type="int8")
    assert exc.value.code == "INVALID_ARGUMENT"


@slow
def test_float_is_the_default_and_a_single_text_gives_one_row(clients):
    client = clients[E5]
    floats = client.encode(TEXTS)
    explicit = client.encode(TEXTS, embedding_type="float")
    assert floats.embedding_type == explicit.embedding_type == "float"
    np.testing.assert_array_equal(explicit.embeddings, floats.embeddings)
    one = client.embed(TEXTS[0], embedding_type="binary")
    assert one.shape == (48,) and one.dtype == np.int8
    np.testing.assert_array_equal(signs(one, 384), floats.embeddings[0] > 0)


@slow
def test_async_client_matches_the_sync_one(server, clients):
    async def run():
        async with AsyncEmbeddingClient(server.grpc_url, E5) as client:
            return await client.encode(TEXTS, embedding_type="int8"), await client.embed(TEXTS, embedding_type="binary")

    int8, binary = asyncio.run(run())
    assert int8.embedding_type == "int8" and int8.embeddings.dtype == np.int8
    np.testing.assert_array_equal(binary, clients[E5].embed(TEXTS, embedding_type="binary"))
    assert np.abs(int8.embeddings.astype(int) - clients[E5].embed(TEXTS, embedding_type="int8")).max() <= 1


@slow
def test_chunked_calls_reassemble_compact_rows(clients):
    texts = [f"{t} ({i})" for i in range(3) for t in TEXTS]  # 18 texts, max_texts 8: three requests
    client = clients[E5]
    np.testing.assert_array_equal(signs(client.embed(texts, embedding_type="binary"), 384), client.embed(texts) > 0)


@slow
def test_bad_values_error_clearly_and_leave_other_requests_untouched(server, clients):
    client = clients[E5]
    for bad in ("int4", "INT8", "", 8):
        with pytest.raises(EmbeddingError, match="embedding_type must be one of float, int8, uint8, binary, ubinary"):
            client.embed(TEXTS, embedding_type=bad)
    expected = client.embed(TEXTS, embedding_type="binary")
    failures: list[str] = []

    def good():
        with EmbeddingClient(server.grpc_url, E5) as c:
            for _ in range(4):
                if not np.array_equal(c.embed(TEXTS, embedding_type="binary"), expected):
                    failures.append("wrong vector")

    def refused():
        # Past the client: the tokenizer model refuses it per request.
        with grpcclient.InferenceServerClient(server.grpc_url) as raw:
            inputs = []
            for name, value in (("text", b"x"), ("embedding_type", b"Binary")):
                inp = grpcclient.InferInput(name, [1], "BYTES")
                inp.set_data_from_numpy(np.array([value], dtype=object))
                inputs.append(inp)
            for _ in range(4):
                try:
                    raw.infer(E5, inputs)
                    failures.append("a bad embedding_type was served")
                except InferenceServerException as exc:
                    if "INVALID_ARG" not in str(exc.status()) or "embedding_type must be one of" not in str(exc):
                        failures.append(str(exc))

    threads = [threading.Thread(target=f) for f in (good, refused, good, refused)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# the gateway


@pytest.fixture(scope="module")
def gateway(server):
    with GatewayThread(GatewaySettings(server.grpc_url, model_repository=server.model_repository)) as gw:
        yield gw


@slow
@pytest.mark.parametrize("kind", ["binary", "int8", "ubinary"])
def test_openai_package_gets_integers_and_base64(gateway, clients, kind):
    oai = openai.Client(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    want = clients[E5].embed(TEXTS, embedding_type=kind)
    raw_ints = oai.embeddings.with_raw_response.create(
        model=E5, input=TEXTS, encoding_format="float", extra_body={"embedding_type": kind}
    )
    assert all(type(x) is int for x in raw_ints.http_response.json()["data"][0]["embedding"])  # JSON integers
    ints = raw_ints.parse()  # the package types the list as floats: -59 arrives as -59.0
    got = np.array([d.embedding for d in ints.data])
    tolerance = 1 if kind == "int8" else 0  # int8 levels: float rounding of separate requests
    assert got.shape == want.shape and np.abs(got - want.astype(int)).max() <= tolerance
    assert ints.model_extra["embedding_type"] == kind
    # With encoding_format given, the package leaves base64 as it came: the packed bytes.
    b64 = oai.embeddings.create(model=E5, input=TEXTS, encoding_format="base64", extra_body={"embedding_type": kind})
    raw = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype=want.dtype) for d in b64.data])
    assert raw.shape == want.shape and np.abs(raw.astype(int) - want.astype(int)).max() <= tolerance


@slow
def test_gateway_base64_with_httpx_and_dimensions(gateway, clients):
    body = {"model": E5, "input": TEXTS, "embedding_type": "binary", "encoding_format": "base64", "dimensions": 64}
    resp = httpx.post(f"{gateway.url}/v1/embeddings", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    rows = [base64.b64decode(d["embedding"]) for d in resp.json()["data"]]
    assert {len(r) for r in rows} == {8}  # 64 bits: 8 bytes per vector on the wire (12 in base64)
    got = np.stack([np.frombuffer(r, dtype=np.int8) for r in rows])
    np.testing.assert_array_equal(got, clients[E5].embed(TEXTS, dimensions=64, embedding_type="binary"))
    floats = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": E5, "input": TEXTS}, timeout=60).json()
    assert "embedding_type" not in floats and isinstance(floats["data"][0]["embedding"][0], float)


@slow
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"embedding_type": "int4"}, "embedding_type must be one of float, int8, uint8, binary, ubinary, got 'int4'"),
        ({"embedding_type": ["int8"]}, "embedding_type must be one of"),
        ({"embedding_type": "int8", "dimensions": 100}, "calibrated for dimensions 32, 64, 128, 256, 384, not 100"),
    ],
)
def test_gateway_bad_embedding_type(gateway, body, message):
    resp = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": E5, "input": TEXTS, **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == "embedding_type" and message in err["message"], err


# tembed eval --embedding-types


def test_hamming_scores_count_agreeing_bits():
    from tembed_eval.compact import bits, hamming_scores

    rng = np.random.default_rng(2)
    q, d = unit_rows(rng, 5, 36), unit_rows(rng, 7, 36)
    qb = as_values(quantize(q, "binary", None), "binary")
    db = as_values(quantize(d, "ubinary", None), "ubinary")
    got = hamming_scores(bits(qb, "binary", 36), bits(db, "ubinary", 36))
    agree = ((q > 0)[:, None, :] == (d > 0)[None, :, :]).sum(-1)
    np.testing.assert_array_equal(got, 2 * agree - 36)


@slow
@pytest.mark.skipif(not (DEFAULT_DATA / "cmrc2018").is_dir(), reason=f"no evaluation data in {DEFAULT_DATA}")
def test_eval_cli_writes_and_replaces_its_section(server, tmp_path, capsys):
    from tembed_eval.cli import main
    from tembed_eval.compact import BEGIN, kept_section
    from tembed_eval.report import INT8_BEGIN, INT8_END, kept_region

    out = tmp_path / "QUALITY.md"
    int8 = f"{INT8_BEGIN}\n## int8 encoder\n\n| fp32 | int8 |\n{INT8_END}"  # a hand-run comparison
    out.write_text(f"# Retrieval quality\n\n| table |\n\n{int8}\n\n## How it is measured\n\n- notes\n", "utf-8")
    args = ["--url", server.grpc_url, "--models", QWEN, "--limit", "12", "--max-docs", "30", "--out", str(out)]
    for _ in range(2):  # the second run replaces the section
        assert main([*args, "--embedding-types", "binary,int8"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["compact"]
    assert summary["types"] == ["float", "binary", "int8"]
    task = summary["tasks"]["msmarco-5k"]
    assert task["signs_match_float"] == {"binary": True}
    assert set(task["rows"]) == {"float", "binary", "binary → float rescoring", "int8"}
    text = out.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.index(BEGIN) < text.index("## How it is measured")
    assert "| table |" in text and "--embedding-types binary,int8" in text
    assert "| float32, Qdrant exact cosine (256 B) |" in text and "| binary, Hamming (8 B) |" in text
    assert "first 12 queries per task" in text and "first 30 documents" in text
    section = kept_section(out)
    assert section[0] == BEGIN
    # A full report written over it keeps the section.
    full = ["--url", server.grpc_url, "--models", QWEN, "--tasks", "tatoeba", "--limit", "5", "--out", str(out)]
    assert main([*full, "--check-queries", "2", "--no-compare-prompt"]) == 0
    assert kept_section(out) == section and "# Retrieval quality of the served models" in out.read_text()
    assert kept_region(out, INT8_BEGIN, INT8_END) == int8.splitlines()  # and the int8 comparison


@pytest.mark.parametrize(
    ("options", "weights", "message"),
    [
        ([[1, 384, 0]], [[1.0]], "row texts must start at 0"),
        ([[0, 384, 0], [2, 384, 0]], [[1.0], [1.0]], "go up by at most 1"),
        ([[0, 384, 0], [0, 128, 0]], [[0.5], [0.5]], "the same on every row"),
        ([[0, 384, 0]], [[float("nan")]], "finite and not negative"),
        ([[0, 384, 0], [0, 384, 0]], [[0.5], [-0.5]], "finite and not negative"),
        ([[0, 384, 0]], [[float("inf")]], "finite and not negative"),
    ],
)
def test_row_tensors_are_checked(options, weights, message):
    """The encoder's row tensors come from anyone who reaches Triton's ports: checked per request."""
    with pytest.raises(RequestError, match=message):
        from_rows(np.array(options, np.int32), np.array(weights, np.float32), len(options))
