"""bge-m3's scores between two texts, from their served outputs (FlagEmbedding 1.4.2's formulas).

- dense: the dot product of the unit vectors;
- sparse (lexical matching): the sum over the token ids both texts have of the product of their weights
  (``BGEM3FlagModel.compute_lexical_matching_score``);
- colbert: for each of the query's vectors the best dot product with the document's, averaged over the
  query's vectors (``colbert_score``);
- M3: ``(w_dense * dense + w_sparse * sparse + w_colbert * colbert) / (w_dense + w_sparse + w_colbert)``,
  ``compute_score``'s "colbert+sparse+dense", its default weights ``contract.M3_WEIGHTS_DEFAULT``.

A bge-m3 model served for embeddings reranks with this (``EmbeddingClient.score``/``rerank``, the
gateway's ``/v1/rerank`` and ``/v2/rerank``): the query and the documents are embedded in one call with all
three outputs, one forward pass each, and scored here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import contract as c
from .errors import invalid
from .results import SparseEmbedding

WEIGHTS = "weights"  # the rerank option of a bge-m3 model: [w_dense, w_sparse, w_colbert]


def check_weights(weights: Sequence[float] | None) -> tuple[float, float, float]:
    if weights is None:
        return c.M3_WEIGHTS_DEFAULT
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise invalid(f"{WEIGHTS} must be three numbers [dense, sparse, colbert]", WEIGHTS) from None
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) < 0 or sum(values) <= 0:
        raise invalid(
            f"{WEIGHTS} must be three numbers >= 0 [dense, sparse, colbert], sum > 0, got {weights!r}",
            WEIGHTS,
        )
    return values  # type: ignore[return-value]


def dense_score(q: np.ndarray, d: np.ndarray) -> float:
    return float(np.dot(q.astype(np.float64), d.astype(np.float64)))


def sparse_score(q: SparseEmbedding, d: SparseEmbedding) -> float:
    shared, qi, di = np.intersect1d(q.ids, d.ids, assume_unique=True, return_indices=True)
    return float(np.dot(q.weights[qi].astype(np.float64), d.weights[di].astype(np.float64))) if shared.size else 0.0


def colbert_score(q: np.ndarray, d: np.ndarray) -> float:
    if not len(q) or not len(d):
        return 0.0
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum() / len(q))


def m3_scores(
    dense: np.ndarray,
    sparse: Sequence[SparseEmbedding],
    multi: Sequence[np.ndarray],
    weights: tuple[float, float, float] = c.M3_WEIGHTS_DEFAULT,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Row 0 is the query, the others the documents: (M3 score per document, each mode's scores)."""
    modes: dict[str, list[float]] = {c.OUTPUT_DENSE: [], c.OUTPUT_SPARSE: [], c.OUTPUT_COLBERT: []}
    for i in range(1, len(dense)):
        modes[c.OUTPUT_DENSE].append(dense_score(dense[0], dense[i]))
        modes[c.OUTPUT_SPARSE].append(sparse_score(sparse[0], sparse[i]))
        modes[c.OUTPUT_COLBERT].append(colbert_score(multi[0], multi[i]))
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in modes.items()}
    wd, ws, wc = weights
    total = (wd * arrays[c.OUTPUT_DENSE] + ws * arrays[c.OUTPUT_SPARSE] + wc * arrays[c.OUTPUT_COLBERT]) / (
        wd + ws + wc
    )
    return total, arrays


def reranks(info) -> bool:
    """Whether ``info`` (a ModelInfo) is an embedding model with all three outputs: it reranks by M3 score."""
    kinds = c.output_kinds(info.parameters.get(c.PARAM_OUTPUTS, c.OUTPUT_DENSE))
    return info.task == c.TASK_EMBED and set(kinds) == set(c.OUTPUT_KINDS)


def rerank_texts(query, documents) -> list:
    """The texts of one embedding call that scores ``documents`` against ``query``: the query first."""
    if isinstance(documents, (str, bytes)):
        raise invalid("documents must be a list of str, not one str", c.DOCUMENTS)
    return [query, *documents]


def rerank_result(result, weights: tuple[float, float, float]):
    """The RerankResult of an embedding call of :func:`rerank_texts` with all three outputs: the M3 score
    per document, and the tokens of each (query, document) pair (the query's and the document's)."""
    from .results import RerankResult

    scores, _ = m3_scores(result.embeddings, result.sparse, result.multi_vectors, weights)
    tokens = result.token_counts[1:] + result.token_counts[0]
    return RerankResult(scores.astype(np.float32), tokens.astype(np.int32), result.model)
