"""The PyTorch encoder with pooling and L2 normalisation in the graph.

One module serves three purposes: it is what gets exported to ONNX (so the engine returns
``[batch, hidden]`` embeddings, not hidden states), it is the in-process reference every served
vector is checked against, and it is the GPU runner that needs no engine build.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..profile import ModelProfile


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden [b, s, h]`` with ``mask [b, s]``; positions come from the mask, never from token ids,
    so the same code is right for left and right padding."""
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "cls":
        first = torch.argmax(mask, dim=1)  # first real token: 0 with right padding
        return hidden[batch, first]
    if pooling == "last":
        last = (mask.shape[1] - 1) - torch.argmax(torch.flip(mask, [1]), dim=1)
        return hidden[batch, last]
    raise ValueError(f"unknown pooling {pooling!r}")


class EmbeddingModel(nn.Module):
    """``(input_ids, attention_mask) -> embedding [batch, hidden]``, float32, unit length."""

    def __init__(self, backbone: nn.Module, pooling: str):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {"use_cache": False} if self.pooling == "last" else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        return nn.functional.normalize(pooled.float(), p=2.0, dim=-1)


def load_embedding_model(
    folder: Path, profile: ModelProfile, *, dtype: torch.dtype = torch.float32, attn: str = "eager", device: str = "cpu"
) -> EmbeddingModel:
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(folder), dtype=dtype, attn_implementation=attn)
    return EmbeddingModel(backbone, profile.pooling).eval().to(device)
