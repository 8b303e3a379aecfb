"""The GPU encoder that needs no engine build: PyTorch, bf16, scaled-dot-product attention.

It runs the same ``EmbeddingModel`` (or, for a reranker, ``RerankModel``: one score per pair) that is
exported to ONNX and used as the reference, so a served vector or score differs from the reference only by
dtype and attention kernel. The encoder model (runner ``torch``) and ``python -m tembed_bench gpu`` both
call this class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..contract import TORCH_DTYPES
from ..profile import ModelProfile
from ..textproc import pad_batch
from .batching import plan
from .torch_model import EmbeddingModel, RerankModel, load_model

# Rows x tokens per forward pass: bounds activation memory on long-document batches.
DEFAULT_MAX_BATCH_TOKENS = 65536
DTYPES = {name: getattr(torch, name) for name in TORCH_DTYPES}
log = logging.getLogger("tembed.torch")


class CudaGraphs:
    """Batch-1 forwards of unpadded rows replayed from CUDA graphs: one graph per sequence length up to
    ``max_tokens``, captured the first time that length runs, all in one memory pool.

    A short query at batch 1 is bound by kernel launches, not by the GPU: the Qwen3-0.6B forward of a
    ~30-token query is hundreds of small kernels, each launched from Python. A graph replays them as one
    launch. A lone row is unpadded (``batching.plan`` trims it to its length), so the backbone runs
    without a mask (``EmbeddingModel.forward_unpadded``): no host read of the mask inside the
    capture. Replays run one at a time (the runner is called from one thread), and each output is copied
    before the next replay, so graphs can share the pool. A capture that fails turns graphs off for good:
    the runner goes on eagerly, and ``failed`` says why."""

    def __init__(self, model: EmbeddingModel, device: torch.device, max_tokens: int):
        self.model, self.device, self.max_tokens = model, device, max_tokens
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = None
        self.failed: str | None = None

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor | None:
        """``ids [1, s]`` on the device -> ``[1, d]`` float32 (its own copy), or None where no graph runs it."""
        s = int(ids.shape[1])
        if self.failed is not None or s > self.max_tokens:
            return None
        entry = self.graphs.get(s)
        if entry is None:
            try:
                entry = self._capture(s)
            except Exception as exc:  # noqa: BLE001 - any capture failure: eager from now on
                self.failed = f"{type(exc).__name__}: {exc}"
                log.warning("CUDA graphs off (capture of a 1 x %d forward failed): %s", s, self.failed)
                return None
            self.graphs[s] = entry
        graph, static_ids, out = entry
        static_ids.copy_(ids)
        graph.replay()
        return out.clone()

    def _capture(self, s: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_ids = torch.zeros((1, s), dtype=torch.int64, device=self.device)
        mask = torch.ones_like(static_ids)
        side = torch.cuda.Stream(self.device)  # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model.forward_unpadded(static_ids, mask)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.model.forward_unpadded(static_ids, mask)
        return graph, static_ids, out


class TorchEncoder:
    """Run several requests' token tensors as one batch and split the embeddings back per request."""

    def __init__(
        self,
        model: EmbeddingModel | RerankModel,
        *,
        pad_token_id: int,
        padding_side: str,
        device: str | torch.device,
        trim_padding: bool = True,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        cuda_graph_tokens: int = 0,
    ):
        self.model = model.eval()
        self.device = torch.device(device)
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"
        self.trim_padding = trim_padding
        self.max_batch_tokens = max_batch_tokens
        # Lone rows of up to this many tokens replay CUDA graphs (0: off; embedding models on a GPU only).
        graphs = cuda_graph_tokens > 0 and self.device.type == "cuda" and type(model) is EmbeddingModel
        self.graphs = CudaGraphs(self.model, self.device, cuda_graph_tokens) if graphs else None

    @classmethod
    def load(
        cls,
        folder: Path,
        profile: ModelProfile,
        *,
        dtype: str = TORCH_DTYPES[0],
        device: str = "cuda",
        cuda_graph_tokens: int = 0,
    ) -> TorchEncoder:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        # sdpa dispatches to flash / memory-efficient kernels on GPU: no [heads, s, s] score matrix,
        # which is what makes a 32k-token document fit.
        model = load_model(folder, profile, dtype=DTYPES[dtype], attn="sdpa", device=device)
        return cls(
            model,
            pad_token_id=profile.pad_token_id,
            padding_side=profile.padding_side,
            device=device,
            cuda_graph_tokens=cuda_graph_tokens,
        )

    @torch.inference_mode()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One padded batch already on the device -> ``[b, hidden]`` float32 (a reranker's ``[b, 1]`` scores),
        left on the device."""
        return self.model(input_ids, attention_mask)

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One padded batch (host arrays) -> ``[b, d]`` float32 on the host, run by length group."""
        calls = plan(mask, left=self.left, trim=self.trim_padding, max_batch_tokens=self.max_batch_tokens)
        dev_ids = torch.from_numpy(ids.astype(np.int64, copy=False)).to(self.device, non_blocking=True)
        dev_mask = torch.from_numpy(mask.astype(np.int64, copy=False)).to(self.device, non_blocking=True)
        out = None
        for rows, cols in calls:
            index = torch.from_numpy(rows).to(self.device)
            part = None
            if self.graphs is not None and len(rows) == 1 and mask[rows[0], cols].all():
                part = self.graphs(dev_ids[index, cols])
            if part is None:
                part = self.encode(dev_ids[index, cols], dev_mask[index, cols])
            if out is None:
                out = torch.empty((ids.shape[0], part.shape[1]), dtype=part.dtype, device=part.device)
            out[index] = part
        return out.cpu().numpy()

    def __call__(self, ids: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        # The dynamic batcher merges same-shape requests; a mixed set is padded to the widest.
        out = self.run(pad_batch(ids, self.pad_token_id, self.left), pad_batch(masks, 0, self.left))
        return np.split(out, np.cumsum([a.shape[0] for a in ids])[:-1])
