"""What the calls return: embeddings, token ids, rerank scores, each with its token counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contract import EMBEDDING_TYPE_DEFAULT


@dataclass(frozen=True, eq=False)
class SparseEmbedding:
    """One text's lexical weights (bge-m3 ``outputs`` sparse): token ids and their weights, in order of
    first occurrence, the special tokens and weights <= 0 left out (FlagEmbedding's ``lexical_weights``)."""

    ids: np.ndarray  # int32 [k]
    weights: np.ndarray  # float32 [k]

    def as_dict(self) -> dict[int, float]:
        return {int(i): float(w) for i, w in zip(self.ids, self.weights)}


@dataclass(frozen=True, eq=False)
class EmbeddingResult:
    """Embeddings (float32, L2-normalised) and token counts (int32), one row per text in order.

    For a list of n texts: ``embeddings`` is [n, d], ``token_counts`` is [n]. For a single
    ``str`` (or ``bytes``): ``embeddings`` is [d] and ``token_counts`` a 0-d array.
    With a compact ``embedding_type`` the rows are its values (``contract.EMBEDDING_DTYPES``):
    int8 or uint8 [n, d], binary (int8) or ubinary (uint8) [n, ceil(d / 8)] sign bits packed 8 per
    byte (``np.unpackbits`` of ubinary, or of binary + 128 as uint8, gives them back).
    """

    embeddings: np.ndarray
    token_counts: np.ndarray
    model: str
    # Tokens per text before truncation, same shape as token_counts; None from a server too old to
    # say. Exact when nothing was cut and under truncate NONE; for a text longer than the window of
    # characters the server tokenizes (twice what max_length tokens can span) a lower bound.
    # ``original_token_counts > token_counts`` is exactly "this text was truncated".
    original_token_counts: np.ndarray | None = None
    embedding_type: str = EMBEDDING_TYPE_DEFAULT  # what ``embeddings`` holds (contract.EMBEDDING_TYPES)
    # bge-m3 (``outputs``): per text its lexical weights and its multi-vectors ([tokens - 1, hidden],
    # unit rows); None when not asked for. ``embeddings`` has no columns when dense was not asked for.
    # For a single str, one of each rather than a list.
    sparse: list[SparseEmbedding] | SparseEmbedding | None = None
    multi_vectors: list[np.ndarray] | np.ndarray | None = None
    # The server's own clock, ns summed over the call's requests (contract.SERVER_TIMES: tokenize_ns,
    # encode_ns), the ones its ensemble answers; None from a server that says none.
    server_ns: dict[str, int] | None = None

    @property
    def truncated(self) -> np.ndarray | None:
        """Which texts were cut to the model's max_length (bool, token_counts' shape)."""
        if self.original_token_counts is None:
            return None
        return self.original_token_counts > self.token_counts


@dataclass(frozen=True, eq=False)
class TokenizeResult:
    """Token ids as the model embeds them: prompt and special tokens included, after truncation.

    For a list of n texts: ``ids`` is a list of n 1-d arrays (lengths differ), ``token_counts`` [n];
    for a single ``str``: ``ids`` is one array and ``token_counts`` 0-d. ``original_token_counts``
    as in :class:`EmbeddingResult`."""

    ids: list[np.ndarray] | np.ndarray
    token_counts: np.ndarray
    original_token_counts: np.ndarray
    model: str


@dataclass(frozen=True, eq=False)
class RerankResult:
    """Scores and token counts in the order the documents were given, and the ranking."""

    scores: np.ndarray  # [n] float32
    token_counts: np.ndarray  # [n] int32: tokens of each (query, document) pair as scored
    model: str

    def ranking(self, top_n: int | None = None) -> list[tuple[int, float]]:
        """``(index, score)`` pairs, best first; ties keep the documents' order."""
        order = np.argsort(-self.scores, kind="stable")
        return [(int(i), float(self.scores[i])) for i in order[:top_n]]
