"""ONNX Runtime on CPU for the encoder, with the padding rules the tokenizer used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import ATTENTION_MASK, INPUT_IDS
from ..textproc import pad_batch
from .batching import plan

# graph_optimization value -> onnxruntime.GraphOptimizationLevel member
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass(frozen=True)
class OrtOptions:
    """Knobs measured in bench/ (docs/BENCHMARKS.md); the defaults are the fastest measured on CPU."""

    intra_op_threads: int = 0  # 0: ONNX Runtime picks (all cores)
    # Spinning threads burn the cores the tokenizer, the gRPC front end and other instances need.
    allow_spinning: bool = False
    graph_optimization: str = "all"
    # Sort rows by length and run each length group cut to its own longest row (see OrtEncoder.run).
    trim_padding: bool = True
    # Rows x tokens per ONNX Runtime call: activations (attention is rows x heads x len^2) and the
    # CPU arena, which keeps its peak for the life of the process, stay bounded however large the
    # merged batch. e5-small, 64 CMRC paragraphs in one request: unbounded +1844 MiB RSS in 11.7 s;
    # 16384 +1136 MiB, 8192 +498 MiB, 4096 +296 MiB in 10.1 s (no slower: rows x 512 is still a big GEMM).
    max_batch_tokens: int = 4096

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> OrtOptions:
        """From a Triton config's ``parameters``; absent keys keep the defaults."""
        d = cls()
        return cls(
            intra_op_threads=int(params.get("intra_op_threads", d.intra_op_threads)),
            allow_spinning=params.get("allow_spinning", str(int(d.allow_spinning))) in ("1", "true"),
            graph_optimization=params.get("graph_optimization", d.graph_optimization),
            trim_padding=params.get("trim_padding", str(int(d.trim_padding))) in ("1", "true"),
            max_batch_tokens=int(params.get("max_batch_tokens", d.max_batch_tokens)),
        )


class GraphEncoder:
    """Run several requests' token tensors as one batch and split the embeddings back per request:
    the padding, length grouping and splitting every graph runner shares. A subclass sets
    ``options``, ``pad_token_id``, ``left``, ``_output`` (the task's output name), ``output_names``
    and runs one call in ``_session_run``."""

    options: OrtOptions
    pad_token_id: int
    left: bool
    _output: str
    output_names: list[str]

    # Cut each length group to the group's width rather than its longest row (batching.plan).
    group_width = False

    def _session_run(self, ids: np.ndarray, mask: np.ndarray, names: list[str] | None = None):
        raise NotImplementedError

    def _plan(self, mask: np.ndarray):
        o = self.options
        return plan(
            mask, left=self.left, trim=o.trim_padding, max_batch_tokens=o.max_batch_tokens, group_width=self.group_width
        )

    def run_outputs(self, ids: np.ndarray, mask: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """:meth:`run` for several graph outputs (bge-m3): per-sequence ones ``[b, ...]``, per-token ones
        ``[b, s, ...]`` laid back at the batch's full width (zeros where a length group was cut)."""
        out: dict[str, np.ndarray] = {}
        for rows, cols in self._plan(mask):
            parts = self._session_run(ids[rows, cols], mask[rows, cols], names)
            for name, part in zip(names, parts):
                if name not in out:
                    per_token = name != self._output
                    shape = (
                        (ids.shape[0], ids.shape[1], *part.shape[2:]) if per_token else (ids.shape[0], *part.shape[1:])
                    )
                    out[name] = np.zeros(shape, dtype=part.dtype)
                if name == self._output:
                    out[name][rows] = part
                else:
                    out[name][rows, cols] = part
        return out

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Embeddings (or scores) of one padded batch, run by length group (``batching.plan``)."""
        out: np.ndarray | None = None
        for rows, cols in self._plan(mask):
            emb = self._session_run(ids[rows, cols], mask[rows, cols])
            if out is None:
                out = np.empty((ids.shape[0], emb.shape[1]), dtype=emb.dtype)
            out[rows] = emb
        return out

    def __call__(
        self, ids: list[np.ndarray], masks: list[np.ndarray], outputs: list[str] | None = None
    ) -> list[np.ndarray] | list[dict[str, np.ndarray]]:
        """One array per request; with ``outputs`` (graph output names) one dict of them per request,
        the per-token ones cut back to the request's own width."""
        # The dynamic batcher merges same-shape requests; a mixed set is padded to the widest.
        all_ids = pad_batch(ids, self.pad_token_id, self.left)
        all_mask = pad_batch(masks, 0, self.left)
        cuts = np.cumsum([a.shape[0] for a in ids])[:-1]
        if outputs is None:
            return np.split(self.run(all_ids, all_mask), cuts)
        got = self.run_outputs(all_ids, all_mask, outputs)
        split = {name: np.split(arr, cuts) for name, arr in got.items()}
        answers = []
        for i, a in enumerate(ids):
            width = slice(all_ids.shape[1] - a.shape[1], None) if self.left else slice(0, a.shape[1])
            answers.append(
                {name: parts[i] if name == self._output else parts[i][:, width] for name, parts in split.items()}
            )
        return answers


class OrtEncoder(GraphEncoder):
    """ONNX Runtime on CPU (the exported graph, fp32 or int8 QDQ)."""

    def __init__(
        self,
        onnx_path: Path,
        *,
        pad_token_id: int,
        padding_side: str,
        options: OrtOptions | None = None,
    ):
        import onnxruntime as ort

        o = options or OrtOptions()
        if o.graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {tuple(_OPT_LEVELS)}, got {o.graph_optimization!r}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = o.intra_op_threads
        opts.inter_op_num_threads = 1  # sequential execution: one graph at a time per instance
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[o.graph_optimization])
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if o.allow_spinning else "0")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.options = o
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"
        # The task's output (embedding or score), as the export named it; bge-m3's graph has its per-token
        # outputs after it (run only when a request asks: ``outputs``).
        self._output = self.session.get_outputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # The exported graph takes the ids dtype it was exported with (--ids-dtype).
        self._ids_dtype = np.int32 if "int32" in self.session.get_inputs()[0].type else np.int64

    def _session_run(self, ids: np.ndarray, mask: np.ndarray, names: list[str] | None = None):
        feeds = {
            INPUT_IDS: ids.astype(self._ids_dtype, copy=False),
            ATTENTION_MASK: mask.astype(self._ids_dtype, copy=False),
        }
        if names is not None:
            return self.session.run(names, feeds)
        return self.session.run([self._output], feeds)[0]
