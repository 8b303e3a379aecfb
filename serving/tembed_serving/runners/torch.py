"""The GPU encoder that needs no engine build: PyTorch, bf16, scaled-dot-product attention.

It runs the same ``EmbeddingModel`` that is exported to ONNX and used as the reference, so a served
vector differs from the reference only by dtype and attention kernel. The encoder model (runner
``torch``) and ``python -m tembed_bench gpu`` both call this class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..contract import TORCH_DTYPES
from ..profile import ModelProfile
from ..textproc import pad_batch
from .batching import plan
from .torch_model import EmbeddingModel, load_embedding_model

# Rows x tokens per forward pass: bounds activation memory on long-document batches.
DEFAULT_MAX_BATCH_TOKENS = 65536
DTYPES = {name: getattr(torch, name) for name in TORCH_DTYPES}


class TorchEncoder:
    """Run several requests' token tensors as one batch and split the embeddings back per request."""

    def __init__(
        self,
        model: EmbeddingModel,
        *,
        pad_token_id: int,
        padding_side: str,
        device: str | torch.device,
        trim_padding: bool = True,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    ):
        self.model = model.eval()
        self.device = torch.device(device)
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"
        self.trim_padding = trim_padding
        self.max_batch_tokens = max_batch_tokens

    @classmethod
    def load(
        cls, folder: Path, profile: ModelProfile, *, dtype: str = TORCH_DTYPES[0], device: str = "cuda"
    ) -> TorchEncoder:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        # sdpa dispatches to flash / memory-efficient kernels on GPU: no [heads, s, s] score matrix,
        # which is what makes a 32k-token document fit.
        model = load_embedding_model(folder, profile, dtype=DTYPES[dtype], attn="sdpa", device=device)
        return cls(model, pad_token_id=profile.pad_token_id, padding_side=profile.padding_side, device=device)

    @torch.inference_mode()
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One padded batch already on the device -> ``[b, hidden]`` float32 (left on the device)."""
        return self.model(input_ids, attention_mask)

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One padded batch (host arrays) -> ``[b, d]`` float32 on the host, run by length group."""
        calls = plan(mask, left=self.left, trim=self.trim_padding, max_batch_tokens=self.max_batch_tokens)
        dev_ids = torch.from_numpy(ids.astype(np.int64, copy=False)).to(self.device, non_blocking=True)
        dev_mask = torch.from_numpy(mask.astype(np.int64, copy=False)).to(self.device, non_blocking=True)
        out = None
        for rows, cols in calls:
            index = torch.from_numpy(rows).to(self.device)
            part = self.encode(dev_ids[index, cols], dev_mask[index, cols])
            if out is None:
                out = torch.empty((ids.shape[0], part.shape[1]), dtype=part.dtype, device=part.device)
            out[index] = part
        return out.cpu().numpy()

    def __call__(self, ids: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        # The dynamic batcher merges same-shape requests; a mixed set is padded to the widest.
        out = self.run(pad_batch(ids, self.pad_token_id, self.left), pad_batch(masks, 0, self.left))
        return np.split(out, np.cumsum([a.shape[0] for a in ids])[:-1])
