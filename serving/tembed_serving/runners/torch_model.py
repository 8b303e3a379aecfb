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

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._embed(input_ids, attention_mask, attention_mask)

    def forward_unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rows without padding (``attention_mask`` all ones): the backbone gets no mask, the same attention
        without the mask checks that read the mask on the host (which a CUDA graph capture refuses:
        ``runners.torch.CudaGraphs``). Not ``forward``'s keyword: the ONNX tracer passes every parameter."""
        return self._embed(input_ids, attention_mask, None)

    def _embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, backbone_mask: torch.Tensor | None
    ) -> torch.Tensor:
        kwargs = {"use_cache": False} if self.pooling == "last" else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=backbone_mask, **kwargs).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        return nn.functional.normalize(pooled.float(), p=2.0, dim=-1)


class M3Model(EmbeddingModel):
    """bge-m3 as FlagEmbedding computes it, from one forward pass: ``(input_ids, attention_mask) ->
    (embedding [b, hidden], token_weights [b, s], token_vectors [b, s, hidden])``.

    The dense vector is the pooled state (CLS), normalised; ``token_weights`` is
    ``relu(sparse_linear(h))`` per position and ``token_vectors`` ``normalize(colbert_linear(h) * mask)``
    per position (FlagEmbedding takes ``h[:, 1:]``; the serving side drops the first position and the
    padding, and keeps the ids' maximum weight, ``m3.finish_request``)."""

    def __init__(self, backbone: nn.Module, pooling: str, sparse: nn.Linear, colbert: nn.Linear):
        super().__init__(backbone, pooling)
        self.sparse_linear, self.colbert_linear = sparse, colbert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        dense = nn.functional.normalize(pool(hidden, attention_mask, self.pooling).float(), p=2.0, dim=-1)
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1) * mask.squeeze(-1)
        vectors = nn.functional.normalize((self.colbert_linear(hidden) * mask).float(), p=2.0, dim=-1)
        return dense, weights.float(), vectors


# FlagEmbedding's head files beside the weights (FlagEmbedding/finetune/embedder/encoder_only/m3/runner.py).
M3_HEAD_FILES = {"sparse": "sparse_linear.pt", "colbert": "colbert_linear.pt"}


def load_m3_heads(folder: Path, dtype: torch.dtype = torch.float32) -> dict[str, nn.Linear]:
    """The two ``nn.Linear`` heads bge-m3 ships (state dicts of ``weight`` [out, hidden] and ``bias``)."""
    heads = {}
    for kind, name in M3_HEAD_FILES.items():
        state = torch.load(Path(folder) / name, map_location="cpu", weights_only=True)
        out_features, in_features = state["weight"].shape
        linear = nn.Linear(in_features, out_features, dtype=dtype)
        linear.load_state_dict(state)
        heads[kind] = linear
    return heads


def load_embedding_model(
    folder: Path, profile: ModelProfile, *, dtype: torch.dtype = torch.float32, attn: str = "eager", device: str = "cpu"
) -> EmbeddingModel:
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(folder), dtype=dtype, **_code_kwargs(profile, attn))
    if profile.multi_output:
        heads = load_m3_heads(folder, dtype)
        return M3Model(backbone, profile.pooling, heads["sparse"], heads["colbert"]).eval().to(device)
    return EmbeddingModel(backbone, profile.pooling).eval().to(device)


def _code_kwargs(profile: ModelProfile, attn: str) -> dict:
    """A model with its own code (trusted at export) attends the way that code does: transformers'
    ``attn_implementation`` switch refuses classes that do not declare it."""
    if profile.trust_remote_code:
        return {"trust_remote_code": True}
    return {"attn_implementation": attn}


def _token_type_ids(input_ids: torch.Tensor, sep_id: int) -> torch.Tensor:
    """BERT's segment ids from the ids: 1 after the first [SEP] (the document and its [SEP]), else 0.

    Computed in the graph so the encoder keeps two inputs; padding after the last [SEP] gets 1,
    which the attention mask hides."""
    sep = (input_ids == sep_id).to(torch.int64)
    return ((torch.cumsum(sep, dim=1) - sep) > 0).to(input_ids.dtype)


class RerankModel(nn.Module):
    """``(input_ids, attention_mask) -> score [batch, 1]``, float32.

    ``lm_yes_no`` (Qwen3-Reranker as released, a causal LM): the hidden state at the last real
    position, then only the "yes" and "no" rows of the LM head (not 151k logits per pair), and
    sigmoid(yes - no), which is the softmax over the two. ``seq_cls``: the classifier's logit
    (a converted Qwen3 twin, or a BERT / XLM-R cross-encoder) through the activation.
    """

    def __init__(
        self,
        model: nn.Module,
        head: str,
        *,
        yes_id: int | None = None,
        no_id: int | None = None,
        activation: str = "sigmoid",
        sep_id: int | None = None,
    ):
        super().__init__()
        self.head, self.activation, self.sep_id = head, activation, sep_id
        if head == "lm_yes_no":
            self.backbone = model.model
            rows = model.get_output_embeddings().weight[[yes_id, no_id]].detach().clone()
            self.register_buffer("yes_no", rows, persistent=False)
        elif head == "seq_cls":
            self.model = model
        else:
            raise ValueError(f"unknown rerank head {head!r}")

    @property
    def config(self):
        return (self.backbone if self.head == "lm_yes_no" else self.model).config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.head == "lm_yes_no":
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
            last = pool(hidden, attention_mask, "last")
            logits = last.float() @ self.yes_no.float().T  # [b, 2]: yes, no
            logit = logits[:, :1] - logits[:, 1:]
        else:
            kwargs = {}
            if self.sep_id is not None:
                kwargs["token_type_ids"] = _token_type_ids(input_ids, self.sep_id)
            logit = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits.float()[:, :1]
        return torch.sigmoid(logit) if self.activation == "sigmoid" else logit


def load_rerank_model(
    folder: Path, profile: ModelProfile, *, dtype: torch.dtype = torch.float32, attn: str = "eager", device: str = "cpu"
) -> RerankModel:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if profile.rerank_head == "lm_yes_no" else AutoModelForSequenceClassification
    model = auto.from_pretrained(str(folder), dtype=dtype, **_code_kwargs(profile, attn))
    sep_id = None
    if profile.pair_format == "pair" and getattr(model.config, "type_vocab_size", 1) > 1:
        sep_id = profile.sep_token_id
    rerank = RerankModel(
        model,
        profile.rerank_head,
        yes_id=profile.yes_token_id,
        no_id=profile.no_token_id,
        activation=profile.activation,
        sep_id=sep_id,
    )
    return rerank.eval().to(device)


def load_model(folder: Path, profile: ModelProfile, **kwargs) -> nn.Module:
    """The task's PyTorch model: what is exported to ONNX, and the reference it is checked against."""
    if profile.task == "rerank":
        return load_rerank_model(folder, profile, **kwargs)
    return load_embedding_model(folder, profile, **kwargs)
