"""The utilisation count of ``make bench`` (tembed_bench.flops): FLOPs from the model's shape, the MatMul
peak in ONNX Runtime, and the harness table's GFLOP/s column. Offline: no server."""

from __future__ import annotations

import pytest

from tembed_bench import flops, render

E5 = flops.EncoderShape(layers=12, hidden=384, intermediate=1536)


def test_flops_by_hand():
    # One layer, h=2, i=4, one text of 3 tokens: projections 4*3*2*2=48, FFN 2*3*2*4=48, attention 2*9*2=36
    # multiply-adds; x2 FLOPs.
    shape = flops.EncoderShape(layers=1, hidden=2, intermediate=4)
    assert flops.encoder_flops(shape, [3]) == 2 * (48 + 48 + 36)
    assert flops.encoder_flops(flops.EncoderShape(5, 2, 4), [3, 3]) == 10 * 2 * (48 + 48 + 36)
    assert flops.encoder_flops(shape, []) == 0.0


def test_e5_small_b16x128_is_91_8_gflop():
    # The figure docs/BENCHMARKS.md's int8 section counted from the exported graph's MatMuls.
    assert flops.encoder_flops(E5, [128] * 16) / 1e9 == pytest.approx(91.8, abs=0.05)
    # Each text at its own length: attention is quadratic, so two 64-token texts are less than one of 128.
    assert flops.encoder_flops(E5, [64, 64]) < flops.encoder_flops(E5, [128])


def test_shape_from_the_fixture_config(fixture_dirs):
    assert flops.EncoderShape.from_config(fixture_dirs["multilingual-e5-small"]) == E5
    assert flops.EncoderShape.from_config(fixture_dirs["all-minilm-l6-v2"]) == flops.EncoderShape(6, 384, 1536)


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_matmul_peak_runs(kind):
    assert flops.matmul_peak(kind, threads=1, size=128, rounds=2) > 0
    with pytest.raises(ValueError):
        flops.matmul_peak("fp16", size=8)


def test_harness_table_shows_gflops_against_the_peak():
    res = {
        "latency_ms": {"p50": 1.0, "p99": 2.0},
        "concurrency": 1,
        "texts_per_s": 10.0,
        "tokens_per_s": 100.0,
        "cpu_ms_per_request": {"client": 1.0},
        "gflops_per_s": 150.0,
    }
    rec = {
        "bench": "compare",
        "date": "d",
        "commit": "c",
        "machine": {"cores": 2, "cpu": "x", "load_avg_1m": 0.1},
        "args": {"rounds": 2},
        "targets": {"raw": {"system": "raw ORT", "min_cosine": 1.0}},
        "shape": {"layers": 12, "hidden": 384, "intermediate": 1536},
        "peak_gflops": {"onnxruntime": {"fp32": 300.0, "int8": 2400.0}, "threads": 2},
        "workloads": {"mixed": {"throughput": True, "requests": 3, "gflop": 1.0, "results": {"raw": res}}},
    }
    text = render.harness(rec, None)
    assert "GFLOP/s (% of the runtime's MatMul peak)" in text and "| 150 (50 % of ORT fp32) |" in text
    assert "**300 GFLOP/s fp32**" in text and "**2,400 GFLOP/s int8**" in text
    # OpenVINO targets are read against OpenVINO's peak, int8 ones against the int8 peak.
    rec["peak_gflops"]["openvino"] = {"fp32": 200.0, "int8": 600.0}
    rec["targets"]["raw-openvino-int8"] = {"system": "raw OpenVINO int8", "min_cosine": 0.99}
    rec["workloads"]["mixed"]["results"]["raw-openvino-int8"] = {**res, "gflops_per_s": 300.0}
    text = render.harness(rec, None)
    assert "| 300 (50 % of OV int8) |" in text and "in OpenVINO **200 fp32**, **600 int8**" in text
    del rec["peak_gflops"]  # records from before the column render as they were
    assert "GFLOP/s" not in render.harness(rec, None)


CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16
"""


def test_record_says_which_instruction_sets_the_cpu_has():
    # int8 speed hangs on VNNI: a record must say whether the machine had it, and the doc's stamp shows it.
    from tembed_serving.cpu import cpu_model_and_flags, int8_slow_reason

    assert cpu_model_and_flags(CPUINFO) == ("AMD EPYC 9R14", ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"])
    assert cpu_model_and_flags("model name\t: x\nflags\t\t: sse2 avx avx2\n") == ("x", ["avx2"])
    assert int8_slow_reason(["avx2", "avx512f", "avx512_vnni"]) is None
    assert "no int8 dot product" in int8_slow_reason(["avx2"])
    m = {"cores": 2, "cpu": "x86_64", "load_avg_1m": 1.0}
    rec = {"date": "d", "commit": "c", "bench": "b", "machine": {**m, "cpu_model": "AMD EPYC", "isa": ["avx2"]}}
    assert "2 cores (AMD EPYC; avx2)" in render.stamp(rec)
    assert "2 cores (x86_64)" in render.stamp({**rec, "machine": m})  # an older record: no claim either way
