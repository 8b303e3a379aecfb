"""The int8 export gate: an int8 encoder is kept only if retrieval on the shipped sets stays within
0.5 points of fp32, and refused otherwise, saying by how much and on which metric."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tembed.quantize import (
    MAX_DROP,
    GateReport,
    Int8Refused,
    Method,
    gate,
    load_scorer,
    nodes_kept_fp32,
    quantize_gated,
)

# Small slices: a few seconds of encoder time each on 2 cores (the export's own slices are larger).
SMALL = {"cmrc2018": 30, "tatoeba": 150, "msmarco_docs": 120}


def test_gate_report_says_by_how_much():
    fp32 = {"tatoeba zh→en": {"acc@1": 0.900, "MRR@10": 0.930}, "msmarco-5k": {"nDCG@10": 0.870, "MRR@10": 1.0}}
    ok = GateReport(
        "static", fp32, {"tatoeba zh→en": {"acc@1": 0.897, "MRR@10": 0.931}, "msmarco-5k": fp32["msmarco-5k"]}
    )
    assert ok.passed and ok.worst == ("tatoeba zh→en acc@1", -0.003)
    bad = GateReport("dynamic", fp32, {**ok.int8, "msmarco-5k": {"nDCG@10": 0.843, "MRR@10": 1.0}})
    assert not bad.passed and bad.worst == ("msmarco-5k nDCG@10", -0.027)
    assert "msmarco-5k nDCG@10 -2.7 points (0.870 -> 0.843)" in bad.summary()
    assert MAX_DROP == 0.005


@pytest.fixture(scope="module")
def e5_onnx(fixture_dirs, tmp_path_factory):
    from tembed.hf_folder import read_profile
    from tembed.onnx_export import export_onnx
    from tembed_serving.runners.torch_model import load_embedding_model

    folder = fixture_dirs["multilingual-e5-small"]
    profile = read_profile(folder)
    path = export_onnx(load_embedding_model(folder, profile), profile, tmp_path_factory.mktemp("e5") / "model.onnx")
    return path, profile, folder / "tokenizer.json"


def _spoiled(src, dest, scale: float) -> None:
    """``src`` with noise of ``scale`` x each weight's spread added to every FFN down projection:
    a graph that is measurably worse at retrieval, as a bad quantisation would be."""
    model = onnx.load(str(src))
    rng = np.random.default_rng(0)
    names = {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and "/output/dense/" in n.name}
    for init in model.graph.initializer:
        if init.name in names:
            w = numpy_helper.to_array(init)
            init.CopyFrom(
                numpy_helper.from_array(w + rng.normal(0, scale * w.std(), w.shape).astype(w.dtype), init.name)
            )
    onnx.save(model, str(dest))


@pytest.mark.slow
def test_gate_passes_the_same_graph_and_refuses_a_spoiled_one(e5_onnx, tmp_path):
    fp32, profile, tok = e5_onnx
    spoiled = tmp_path / "spoiled.onnx"
    _spoiled(fp32, spoiled, 0.6)
    scorer = load_scorer(profile, tok, None, SMALL)  # the entry point `tembed export` uses
    assert "tatoeba zh→en 150 q / 150 docs" in scorer.sizes
    same, worse = gate(fp32, {"same": fp32, "spoiled": spoiled}, scorer)
    assert same.passed and set(same.deltas.values()) == {0.0}
    assert not worse.passed and worse.worst[1] < -MAX_DROP


@pytest.mark.slow
def test_static_keeps_sensitive_nodes_fp32(e5_onnx):
    fp32, _, _ = e5_onnx
    quantised, kept = nodes_kept_fp32(fp32, Method("static", "static"))
    assert len(quantised) == 11 * 6  # q, k, v, attention output, FFN in and out of layers 0-10
    assert not any("layer.11/" in n for n in quantised)
    assert any(n.endswith("attention/self/MatMul") for n in kept)  # activation x activation stays fp32
    ffn = nodes_kept_fp32(fp32, Method("f", "static", fp32_ffn_out=True))[0]
    assert len(ffn) == 11 * 5 and not any("/layer.3/output/dense/" in n for n in ffn)


@pytest.mark.slow
def test_quantize_gated_keeps_the_graph_fp32_when_refused(e5_onnx, tmp_path):
    """A gate no int8 graph can pass (every metric must rise): refused with the reason, fp32 untouched."""
    fp32, profile, tok = e5_onnx
    path = tmp_path / "model.onnx"
    path.write_bytes(fp32.read_bytes())
    before = path.read_bytes()
    with pytest.raises(
        Int8Refused, match=r"no int8 method keeps retrieval .* slices \(cmrc2018 .* static: worst .* points"
    ):
        quantize_gated(path, profile, tok, (Method("static", "static"),), slices=SMALL, max_drop=-1.0)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.slow
def test_dynamic_7bit_ffn_fp32_keeps_what_it_says(e5_onnx, tmp_path):
    """ONNX Runtime's dynamic int8 as an experiment variant: per-channel 7-bit weights (its advice for CPUs
    without VNNI), the FFN down projections left fp32; the default ``dynamic`` stays per-tensor 8-bit."""
    from tembed.quantize import METHODS_BY_NAME, quantize

    fp32, profile, tok = e5_onnx
    method = Method("d", "dynamic", fp32_last_layers=0, fp32_ffn_out=True, reduce_range=True)
    out = quantize(fp32, tmp_path / "d.onnx", method, profile, tok)
    model = onnx.load(str(out))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    int8 = [w for w in weights.values() if w.dtype == np.int8 and w.ndim == 2]
    assert len(int8) == 12 * 5  # q, k, v, attention output, FFN in of every layer
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in int8) <= 64  # 7 bits
    ffn_out = [n for n in model.graph.node if "/output/dense/MatMul" in n.name and "attention" not in n.name]
    assert len(ffn_out) == 12 and {n.op_type for n in ffn_out} == {"MatMul"}  # left fp32
    plain = METHODS_BY_NAME["dynamic"]
    assert (plain.per_channel, plain.reduce_range, plain.fp32_last_layers) == (False, False, 0)
