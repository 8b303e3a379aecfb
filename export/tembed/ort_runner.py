"""ONNX Runtime on CPU for the encoder, with the padding rules the tokenizer used."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OrtEncoder:
    """Run several requests' token tensors as one batch and split the embeddings back per request."""

    def __init__(self, onnx_path: Path, *, pad_token_id: int, padding_side: str, intra_op_threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"

    def _pad(self, arr: np.ndarray, width: int, value: int) -> np.ndarray:
        extra = width - arr.shape[1]
        if extra == 0:
            return arr
        spec = ((0, 0), (extra, 0)) if self.left else ((0, 0), (0, extra))
        return np.pad(arr, spec, constant_values=value)

    def __call__(self, ids: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        # The dynamic batcher merges same-shape requests; a mixed set is padded to the widest.
        width = max(a.shape[1] for a in ids)
        all_ids = np.concatenate([self._pad(a, width, self.pad_token_id) for a in ids])
        all_mask = np.concatenate([self._pad(m, width, 0) for m in masks])
        out = self.session.run(["embedding"], {"input_ids": all_ids, "attention_mask": all_mask})[0]
        return np.split(out, np.cumsum([a.shape[0] for a in ids])[:-1])
