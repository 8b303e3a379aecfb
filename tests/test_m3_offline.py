"""bge-m3's outputs without a server: the serving side's finishing (tembed_serving.m3), the client's scores
(tembed_client.m3), the option, and the configs an m3 profile renders. The served parity with FlagEmbedding
is tests/test_bge_m3.py."""

from __future__ import annotations

import numpy as np
import pytest

from tembed_client import contract as c
from tembed_client.m3 import check_weights, colbert_score, m3_scores, sparse_score
from tembed_client.results import SparseEmbedding
from tembed_serving import m3
from tembed_serving.errors import RequestError
from tembed_serving.profile import ModelProfile, ProfileError

HIDDEN = 4


def profile(**kw) -> ModelProfile:
    base = dict(
        name="m3", model_type="xlm-roberta", pooling="cls", padding_side="right", max_length=16,
        dimension=HIDDEN, min_dimension=HIDDEN, pad_token_id=1, outputs=list(c.OUTPUT_KINDS),
        special_token_ids=[0, 1, 2, 3],
    )  # fmt: skip
    return ModelProfile(**{**base, **kw})


def test_sparse_pairs_keep_the_max_per_id_in_first_occurrence_order():
    ids = np.array([5, 7, 5, 0, 9, 7, 2])
    weights = np.array([0.1, 0.5, 0.3, 0.9, 0.0, 0.2, 0.8], np.float32)
    got_ids, got_w = m3.sparse_pairs(ids, weights, np.array([0, 1, 2, 3]))
    assert got_ids.tolist() == [5, 7] and np.allclose(got_w, [0.3, 0.5])  # 9: weight 0; 0 and 2: special


def test_finish_request_cuts_padding_and_the_cls_and_pools_windows():
    ids = np.array([[0, 5, 6, 2, 1], [0, 6, 7, 2, 1], [0, 8, 2, 1, 1]])
    mask = (ids != 1).astype(np.int64)
    weights = np.array([[0.9, 0.1, 0.2, 0.7, 0.5], [0.9, 0.4, 0.3, 0.7, 0.5], [0.9, 0.6, 0.7, 0.5, 0.5]], np.float32)
    vectors = np.arange(3 * 5 * HIDDEN, dtype=np.float32).reshape(3, 5, HIDDEN)
    got = {c.EMBEDDING: np.zeros((3, HIDDEN)), m3.GRAPH_OUTPUTS["sparse"]: weights}
    # Rows 0 and 1 are windows of text 0 (sparse only: colbert is refused under chunk).
    out = m3.finish_request(ids, mask, got, np.array([0, 0, 1]), m3.to_bits(["sparse"]), profile())
    assert out[c.SPARSE_COUNT].reshape(-1).tolist() == [3, 1]
    assert out[c.SPARSE_IDS].reshape(-1).tolist() == [5, 6, 7, 8]
    assert np.allclose(out[c.SPARSE_WEIGHTS].reshape(-1), [0.1, 0.4, 0.3, 0.6])  # 6: max(0.2, 0.4) over the windows
    assert out[c.MULTI_VECTORS].shape == (0, HIDDEN) and out[c.MULTI_VECTOR_COUNT].sum() == 0
    got[m3.GRAPH_OUTPUTS["colbert"]] = vectors
    out = m3.finish_request(ids, mask, got, np.array([0, 1, 2]), m3.to_bits(["colbert"]), profile())
    assert out[c.MULTI_VECTOR_COUNT].reshape(-1).tolist() == [3, 3, 2]  # real tokens but the CLS
    assert np.array_equal(out[c.MULTI_VECTORS][:3], vectors[0, 1:4]) and out[c.SPARSE_IDS].size == 0


def test_outputs_are_checked_against_the_model_and_long_text():
    assert m3.check_outputs(None, profile(), None) == 1
    assert m3.check_outputs("dense,sparse,colbert", profile(), None) == 7
    dense_only = profile(outputs=["dense"], special_token_ids=[])
    with pytest.raises(RequestError) as err:
        m3.check_outputs("sparse", dense_only, None)
    assert err.value.reason == c.UNSUPPORTED and err.value.param == c.OUTPUTS
    assert m3.check_outputs("dense,sparse", profile(), c.LONG_TEXT_CHUNK) == 3
    with pytest.raises(RequestError) as err:
        m3.check_outputs("colbert", profile(), c.LONG_TEXT_CHUNK)
    assert err.value.reason == c.INVALID_ARGUMENT and err.value.param == c.LONG_TEXT
    with pytest.raises(RequestError):
        m3.read_row_outputs(np.array([[1], [3]], np.int32), 2)  # one value per request
    with pytest.raises(RequestError):
        m3.read_row_outputs(np.array([[8]], np.int32), 1)
    assert m3.read_row_outputs(None, 4) == 1 and m3.graph_names(4) == [c.EMBEDDING, m3.GRAPH_OUTPUTS["colbert"]]


def test_profile_outputs_need_dense():
    with pytest.raises(ProfileError):
        profile(outputs=["sparse"])
    with pytest.raises(ProfileError):
        profile(outputs=["dense", "splade"])


def test_option_values_and_the_clients_scores():
    assert len(c.OUTPUTS_VALUES) == 7 and c.OUTPUTS_DEFAULT in c.OUTPUTS_VALUES
    assert c.outputs_value(["colbert", "dense"]) == "dense,colbert" and c.outputs_value("sparse") == "sparse"
    assert c.OPTIONS[c.OUTPUTS].check(c.outputs_value(["splade"])) is not None
    q = SparseEmbedding(np.array([5, 7], np.int32), np.array([0.5, 0.25], np.float32))
    d = SparseEmbedding(np.array([7, 9, 5], np.int32), np.array([0.5, 1.0, 0.1], np.float32))
    assert sparse_score(q, d) == pytest.approx(0.5 * 0.1 + 0.25 * 0.5)
    rng = np.random.default_rng(0)
    qv, dv = rng.normal(size=(3, HIDDEN)), rng.normal(size=(5, HIDDEN))
    brute = np.mean([max(float(a @ b) for b in dv) for a in qv])
    assert colbert_score(qv, dv) == pytest.approx(brute)
    dense = rng.normal(size=(2, HIDDEN))
    total, modes = m3_scores(dense, [q, d], [qv, dv], (1.0, 2.0, 3.0))
    expected = (float(dense[0] @ dense[1]) + 2 * sparse_score(q, d) + 3 * brute) / 6
    assert total[0] == pytest.approx(expected) and set(modes) == set(c.OUTPUT_KINDS)
    assert check_weights(None) == c.M3_WEIGHTS_DEFAULT
    for bad in ([1, 1], [1, -1, 1], [0, 0, 0], "abc"):
        with pytest.raises(Exception) as err:
            check_weights(bad)
        assert getattr(err.value, "param", None) == "weights"


def test_client_refuses_an_output_the_model_has_not():
    from tembed_client import EmbeddingError
    from tembed_client.calls import Call
    from tembed_client.discovery import ModelInfo

    info = ModelInfo("e5", 384, 32, 8, parameters={c.PARAM_OUTPUTS: "dense"})
    with pytest.raises(EmbeddingError) as err:
        Call.prepare(info, ["a"], outputs=["sparse"])
    assert err.value.reason == c.UNSUPPORTED and err.value.param == c.OUTPUTS
    # Dense, the default, is not sent: a repository exported before the option serves it.
    assert c.OUTPUTS not in Call.prepare(info, ["a"], outputs=["dense"]).options
    m3_info = ModelInfo("m3", HIDDEN, HIDDEN, 8, parameters={c.PARAM_OUTPUTS: "dense,sparse,colbert"})
    call = Call.prepare(m3_info, ["a"], outputs=["colbert", "sparse"])
    assert call.outputs == ("sparse", "colbert") and call.columns == 0
    assert set(call.extra_outputs) == set(c.M3_TENSORS)


def test_configs_of_an_m3_profile(tmp_path):
    from tembed.repository import ServingOptions, encoder_config, ensemble_config, serves_m3, tokenizer_config

    p = profile()
    onnx = ServingOptions()
    enc, ens, tok = encoder_config(p, onnx), ensemble_config(p, onnx), tokenizer_config(p, onnx)
    assert serves_m3(p, onnx)
    assert {t.name for t in enc.input} >= {m3.ROW_OUTPUTS} and {t.name for t in enc.output} >= set(c.M3_TENSORS)
    assert {t.name for t in ens.output} >= set(c.M3_TENSORS) and m3.ROW_OUTPUTS in {t.name for t in tok.output}
    assert ens.parameters[c.PARAM_OUTPUTS].string_value == "dense,sparse,colbert"
    native = ServingOptions(backend="onnxruntime")
    assert not serves_m3(p, native)
    assert ensemble_config(p, native).parameters[c.PARAM_OUTPUTS].string_value == "dense"
    assert not set(c.M3_TENSORS) & {t.name for t in ensemble_config(p, native).output}
