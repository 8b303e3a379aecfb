"""The OpenVINO runner (``--backend python-openvino``): the same exported ONNX graph as ONNX Runtime's
runner, so the same vectors (offline, against OrtEncoder), and served by the real tritonserver through
the shared encoder model. The int8 method it serves (NNCF) is gated on retrieval like the others."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import TEXTS

MODEL = "all-minilm-l6-v2"


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.slow
def test_nncf_ffn_fp32_leaves_only_the_down_projections_fp32(minilm_onnx, tmp_path):
    """``nncf-ffn-fp32`` quantises every linear layer but the FFN down projections (``output.dense``), whose
    inputs carry the activation outliers; ``nncf`` quantises those too."""
    import onnx

    from tembed.calibration import calibration_texts
    from tembed.quantize import METHODS_BY_NAME, _weight_matmuls, quantize

    path, profile, tok = minilm_onnx

    def fp32_linears(method: str) -> set[str]:
        out = quantize(
            path, tmp_path / f"{method}.onnx", METHODS_BY_NAME[method], profile, tok, calibration_texts()[:8]
        )
        graph = onnx.load(str(out)).graph
        dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        return {n.name for n in _weight_matmuls(onnx.load(str(out))) if not set(n.input) & dequantized}

    kept, every = fp32_linears("nncf-ffn-fp32"), fp32_linears("nncf")
    assert every == set()
    assert len(kept) == 6 and all("/output/dense/" in n and "attention" not in n for n in kept), kept


@pytest.fixture(scope="module")
def minilm_onnx(fixture_dirs, profiles, tmp_path_factory):
    from tembed.onnx_export import export_onnx
    from tembed_serving.runners.torch_model import load_embedding_model

    folder, profile = fixture_dirs[MODEL], profiles[MODEL]
    path = export_onnx(load_embedding_model(folder, profile), profile, tmp_path_factory.mktemp("ov") / "model.onnx")
    return path, profile, folder / "tokenizer.json"


def _requests(profile, tokenizer_file):
    """Three requests of different widths and sizes, as the batcher hands them to a runner."""
    from tembed_serving.textproc import TextEncoder

    enc = TextEncoder(profile, tokenizer_file)
    batches = [enc(TEXTS[:1], "query"), enc(TEXTS, "document"), enc([" ".join(TEXTS) * 8, TEXTS[2]], "document")]
    return [b.input_ids for b in batches], [b.attention_mask for b in batches]


def test_openvino_matches_onnxruntime_fp32(minilm_onnx):
    from tembed_serving.runners import load_runner

    path, profile, tok = minilm_onnx
    ids, masks = _requests(profile, tok)
    params = {"intra_op_threads": "2"}
    ort = load_runner("onnxruntime", path.parent, profile, params)(ids, masks)
    ov = load_runner("openvino", path.parent, profile, params)(ids, masks)
    assert [a.shape for a in ov] == [a.shape for a in ort] == [(1, 384), (len(TEXTS), 384), (2, 384)]
    assert all(v.dtype == np.float32 for v in ov)
    assert min(float(_cos(a, b).min()) for a, b in zip(ort, ov)) >= 0.9999


def test_int8_methods_per_runner():
    from tembed.quantize import DEFAULT_METHODS, methods_for

    assert [m.name for m in methods_for("openvino")] == ["nncf", "nncf-ffn-fp32", "nncf-7bit"]
    assert [m.name for m in methods_for("onnxruntime")] == list(DEFAULT_METHODS["onnxruntime"])
    assert [m.name for m in methods_for("onnxruntime", ["nncf", "dynamic"])] == ["nncf", "dynamic"]
    with pytest.raises(ValueError, match="unknown int8 method"):
        methods_for("openvino", ["fp4"])
    with pytest.raises(ValueError, match="no methods for the torch runner"):
        methods_for("torch")


@pytest.mark.slow
def test_nncf_int8_runs_in_both_runtimes(minilm_onnx, tmp_path):
    """NNCF's QDQ graph (a few calibration texts: a smoke of the method, not its quality) is int8, and
    OpenVINO's int8 kernels answer what ONNX Runtime's QDQ path does."""
    import onnx

    from tembed.calibration import calibration_texts
    from tembed.quantize import METHODS_BY_NAME, quantize
    from tembed_serving.cpu import int8_slow_reason
    from tembed_serving.runners.openvino import OpenVinoEncoder
    from tembed_serving.runners.ort import OrtEncoder

    path, profile, tok = minilm_onnx
    # Without VNNI, OpenVINO's u8 x s8 kernels saturate int16 pair sums on 8-bit weights where ONNX Runtime's
    # QDQ path does not (MiniLM here, AVX2-only CPU: cosine 0.9980 between the two): compare the 7-bit graph there.
    method = "nncf" if int8_slow_reason() is None else "nncf-7bit"
    out = quantize(path, tmp_path / "int8.onnx", METHODS_BY_NAME[method], profile, tok, calibration_texts()[:8])
    graph = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.graph.initializer)
    ids, masks = _requests(profile, tok)
    kw = {"pad_token_id": profile.pad_token_id, "padding_side": profile.padding_side}
    fp32 = OrtEncoder(path, **kw)(ids, masks)
    ort = OrtEncoder(out, **kw)(ids, masks)
    ov = OpenVinoEncoder(out, **kw)(ids, masks)
    assert min(float(_cos(a, b).min()) for a, b in zip(ort, ov)) >= 0.999
    # Near fp32, not equal: MiniLM's activation outliers (8 calibration texts: 0.87 for nncf, 0.79 for nncf-7bit
    # on an AVX2-only CPU); what that costs in retrieval is the gate's to say (it refuses MiniLM: docs/BENCHMARKS.md).
    assert min(float(_cos(a, b).min()) for a, b in zip(fp32, ov)) >= (0.8 if method == "nncf" else 0.75)


@pytest.mark.slow
def test_nncf_7bit_weights_cannot_saturate_without_vnni(minilm_onnx, tmp_path):
    """``nncf-7bit`` (OverflowFix ENABLE) keeps the int8 weights of every linear layer within 7 bits, so AVX2's
    u8 x s8 pair sums stay inside int16; plain ``nncf`` uses the full 8 bits past the first layer."""
    import onnx
    from onnx import numpy_helper

    from tembed.calibration import calibration_texts
    from tembed.quantize import METHODS_BY_NAME, quantize

    path, profile, tok = minilm_onnx

    def linear_weights(method: str) -> list[np.ndarray]:
        out = quantize(
            path, tmp_path / f"{method}.onnx", METHODS_BY_NAME[method], profile, tok, calibration_texts()[:8]
        )
        graph = onnx.load(str(out)).graph
        feeds = {i for n in graph.node if n.op_type == "MatMul" for i in n.input}
        # int8 initializers dequantized straight into a MatMul: the linear layers' weights (not the embedding
        # tables, which feed a Gather, nor the activations' zero points)
        dq = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] in feeds}
        return [
            numpy_helper.to_array(t) for t in graph.initializer if t.name in dq and t.data_type == onnx.TensorProto.INT8
        ]

    seven, eight = linear_weights("nncf-7bit"), linear_weights("nncf")
    assert len(seven) == len(eight) >= 6 * 6  # MiniLM-L6: Q, K, V, O, FFN in and out in each layer
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in seven) <= 64
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in eight) > 64


@pytest.fixture(scope="module")
def ov_server(fixture_dirs, tmp_path_factory):
    from tembed.pipeline import ExportOptions, export_model
    from tembed.repository import ServingOptions
    from tembed_serving.supervisor import TritonServer

    repo = tmp_path_factory.mktemp("ov-repo")
    serving = ServingOptions(backend="python-openvino", priority_lanes=False)
    opts = ExportOptions(name="minilm-ov", max_texts=8, serving=serving, validate=False)
    result = export_model(fixture_dirs[MODEL], repo, opts)
    assert result.profile.runner == "openvino"
    log = tmp_path_factory.mktemp("ov-triton") / "tritonserver.log"
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        yield srv


@pytest.mark.isolated  # its own tritonserver (ov_server)
def test_openvino_served_matches_onnxruntime(ov_server, minilm_onnx):
    from tembed.repository import parse
    from tembed_client import EmbeddingClient
    from tembed_serving.contract import Layout
    from tembed_serving.runners.ort import OrtEncoder
    from tembed_serving.textproc import TextEncoder

    path, profile, tok = minilm_onnx
    with EmbeddingClient(ov_server.grpc_url, "minilm-ov") as client:
        served = client.embed(TEXTS, input_type="document")
        alone = np.stack([client.embed([t], input_type="document")[0] for t in TEXTS])
    b = TextEncoder(profile, tok)(TEXTS, "document")
    expected = OrtEncoder(path, pad_token_id=profile.pad_token_id, padding_side=profile.padding_side)(
        [b.input_ids], [b.attention_mask]
    )[0]
    assert float(_cos(served, expected).min()) >= 0.9999
    assert float(_cos(served, alone).min()) >= 0.9999  # batched with others or alone: the same vector
    layout = Layout(ov_server.model_repository, "minilm-ov")
    cfg = parse((layout.model_dir("encoder") / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.parameters["runner"].string_value == "openvino"


def test_group_width_keeps_call_shapes_few():
    """OpenVINO's calls are cut to the length class's width (16, 32, ...), not the longest row."""
    from tembed_serving.runners.batching import plan

    mask = np.zeros((4, 40), dtype=np.int64)
    for row, n in enumerate((9, 13, 20, 40)):
        mask[row, :n] = 1
    widths = sorted(c.stop - c.start for _, c in plan(mask, left=False, group_width=True))
    assert widths == [16, 32, 40]  # 9 and 13 share class 16; 20 -> 32; 40 capped at the batch's width
    assert sorted(c.stop - c.start for _, c in plan(mask, left=False)) == [13, 20, 40]
