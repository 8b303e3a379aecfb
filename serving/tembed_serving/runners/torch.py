"""The GPU encoder that needs no engine build: PyTorch, bf16, scaled-dot-product attention.

It runs the same ``EmbeddingModel`` that is exported to ONNX and used as the reference, so a served
vector differs from the reference only by dtype and attention kernel. The encoder model (runner
``torch``) and ``bench/gpu_bench.py`` both call this class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..profile import ModelProfile
from ..textproc import pad_batch
from .torch_model import EmbeddingModel, load_embedding_model

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class TorchEncoder:
    """Run several requests' token tensors as one batch and split the embeddings back per request."""

    def __init__(self, model: EmbeddingModel, *, pad_token_id: int, padding_side: str, device: str | torch.device):
        self.model = model.eval()
        self.device = torch.device(device)
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"

    @classmethod
    def load(
        cls, folder: Path, profile: ModelProfile, *, dtype: str = "bfloat16", device: str = "cuda"
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

    def __call__(self, ids: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        # The dynamic batcher merges same-shape requests; a mixed set is padded to the widest.
        all_ids = torch.from_numpy(pad_batch(ids, self.pad_token_id, self.left).astype(np.int64))
        all_mask = torch.from_numpy(pad_batch(masks, 0, self.left).astype(np.int64))
        out = self.encode(all_ids.to(self.device, non_blocking=True), all_mask.to(self.device, non_blocking=True))
        return np.split(out.cpu().numpy(), np.cumsum([a.shape[0] for a in ids])[:-1])
