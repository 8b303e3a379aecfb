"""FlagEmbedding's own outputs for bge-m3, written for the main test to compare against.

Run by the interpreter of a venv of its own (FlagEmbedding 1.4.2 needs transformers<5, datasets<4,
sentence-transformers<5; tests/test_bge_m3.py builds it): ``python bgem3_reference.py FOLDER IN.json OUT.npz``.
IN.json: {"texts": [...], "pairs": [[query, document], ...], "weights": [w_dense, w_sparse, w_colbert]}.
OUT.npz: dense [n, d]; for text i ``sparse_ids_i`` / ``sparse_weights_i`` (FlagEmbedding's lexical weights,
in its order) and ``colbert_i`` [tokens - 1, d]; for each pair ``m3_<mode>`` of ``compute_score``, every
pair scored alone (compute_score pads a batch's passages, and the padding's zero vectors take part in
ColBERT's MaxSim), with the default weights and with the given ones (``m3w_<mode>``).
No network: the folder is local.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(folder: str, given: str, out: str) -> None:
    from FlagEmbedding import BGEM3FlagModel

    spec = json.loads(Path(given).read_text(encoding="utf-8"))
    model = BGEM3FlagModel(folder, use_fp16=False, devices="cpu")
    texts = spec["texts"]
    enc = model.encode(
        texts, batch_size=1, max_length=8192, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )
    arrays = {"dense": np.asarray(enc["dense_vecs"], dtype=np.float32)}
    for i, (weights, colbert) in enumerate(zip(enc["lexical_weights"], enc["colbert_vecs"])):
        arrays[f"sparse_ids_{i}"] = np.array([int(k) for k in weights], dtype=np.int64)
        arrays[f"sparse_weights_{i}"] = np.array([float(v) for v in weights.values()], dtype=np.float32)
        arrays[f"colbert_{i}"] = np.asarray(colbert, dtype=np.float32)
    for prefix, weights in (("m3", None), ("m3w", spec.get("weights"))):
        scores: dict[str, list[float]] = {}
        for pair in spec["pairs"]:
            got = model.compute_score(
                [tuple(pair)], max_query_length=8192, max_passage_length=8192, weights_for_different_modes=weights
            )
            for mode, values in got.items():
                scores.setdefault(mode, []).extend(values)
        for mode, values in scores.items():
            arrays[f"{prefix}_{mode}"] = np.asarray(values, dtype=np.float64)
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:4])
