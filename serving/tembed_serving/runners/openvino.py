"""OpenVINO on CPU for the encoder: the same exported ONNX graph (fp32, or NNCF's int8 QDQ, which
OpenVINO runs on its int8 kernels), read by OpenVINO at load; the padding, length grouping and
splitting are ONNX Runtime's runner's (``GraphEncoder``), so both answer the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract import ATTENTION_MASK, INPUT_IDS
from .ort import GraphEncoder, OrtOptions

# OpenVINO's CPU plugin picks bf16 by itself on CPUs that have it; the graph's own precision is what
# the export validated and the int8 gate scored, so every call runs in f32 (int8 where quantised).
INFERENCE_PRECISION = "f32"


class OpenVinoEncoder(GraphEncoder):
    # OpenVINO prepares its kernels per input shape: length groups cut to their class's width (16, 32,
    # 64, ...) rather than to their longest row keep the shapes few. 200 short queries (8-41 tokens),
    # loaded machine: P50 fp32 15.2 -> 14.0 ms, NNCF int8 10.3 -> 8.4 ms (ORT fp32 12.5 ms, cut to the row).
    group_width = True

    def __init__(
        self,
        onnx_path: Path,
        *,
        pad_token_id: int,
        padding_side: str,
        options: OrtOptions | None = None,
    ):
        import openvino as ov

        o = options or OrtOptions()
        core = ov.Core()
        config = {
            # One request at a time per instance, on all the threads it is given: latency mode, one stream.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION,
            # The tokenizer, the gRPC front end and other instances share these cores: no pinning.
            "ENABLE_CPU_PINNING": False,
        }
        if o.intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = o.intra_op_threads
        model = core.read_model(str(onnx_path))
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.options = o
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"
        self.output_names = [out.get_any_name() for out in self.compiled.outputs]
        self._output = self.output_names[0]
        first = self.compiled.inputs[0].get_element_type()
        self._ids_dtype = np.int32 if first == ov.Type.i32 else np.int64

    def _session_run(self, ids: np.ndarray, mask: np.ndarray, names: list[str] | None = None):
        feeds = {
            INPUT_IDS: np.ascontiguousarray(ids, dtype=self._ids_dtype),
            ATTENTION_MASK: np.ascontiguousarray(mask, dtype=self._ids_dtype),
        }
        got = self.request.infer(feeds)
        # The request's output buffers are reused by the next call: copy what is kept.
        by_name = {out.get_any_name(): np.array(v) for out, v in got.items()}
        if names is not None:
            return [by_name[n] for n in names]
        return by_name[self._output]
