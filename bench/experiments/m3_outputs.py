"""The cost of each of bge-m3's outputs: ms per request and bytes per text of a 512-token text.

    python bench/experiments/m3_outputs.py [--folder fixtures/bge-m3-tiny] [--requests 30]

Exports the folder (the tiny random-weight fixture by default: hidden 32, 2 layers) into a temporary
repository, starts Triton, and sends one 512-token text per request, ``--requests`` times per output set,
one request at a time. Bytes per text are the response's tensors for that output (what crosses gRPC, before
framing); the bytes real bge-m3 (hidden 1024) would send are derived from the counts. Prints a markdown
table and one JSON line. Timings on a loaded 2-core machine are indicative only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tembed_client import EmbeddingClient

SETS = (["dense"], ["sparse"], ["colbert"], ["dense", "sparse"], ["dense", "sparse", "colbert"])
REAL_HIDDEN = 1024  # BAAI/bge-m3


def text_of(tokens: int, count) -> str:
    words = [
        "retrieval",
        "dense",
        "sparse",
        "colbert",
        "multilingual",
        "passages",
        "检索",
        "向量",
        "段落",
        "Triton",
        "serves",
        "embeddings",
    ]
    parts: list[str] = []
    while count(" ".join(parts)) < tokens:
        parts.append(f"{words[len(parts) % len(words)]}{len(parts)}")
    while count(" ".join(parts)) > tokens:
        parts.pop()
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="fixtures/bge-m3-tiny")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    from tokenizers import Tokenizer

    from tembed.pipeline import ExportOptions, export_model
    from tembed_serving.supervisor import TritonServer

    folder = Path(args.folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = text_of(args.tokens, lambda t: len(tok.encode(t).ids))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        result = export_model(folder, Path(tmp) / "repo", ExportOptions(calibrate=False))
        name = result.profile.name
        srv = TritonServer.on_free_ports(Path(tmp) / "repo", log_file=Path(tmp) / "triton.log")
        with srv, EmbeddingClient(srv.grpc_url, name) as client:
            for kinds in SETS:
                client.encode([text], outputs=kinds)  # warm
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    r = client.encode([text], outputs=kinds)
                    times.append((time.perf_counter() - t0) * 1e3)
                pairs = len(r.sparse[0].ids) if r.sparse is not None else 0
                vectors = r.multi_vectors[0].shape[0] if r.multi_vectors is not None else 0
                hidden = result.profile.dimension
                dense_bytes = r.embeddings.nbytes
                # sparse: int32 id + float32 weight per pair, + the count; colbert: vectors x hidden float32, + count
                sparse_bytes = 8 * pairs + 4 if "sparse" in kinds else 0
                multi_bytes = 4 * vectors * hidden + 4 if "colbert" in kinds else 0
                real = (
                    (4 * REAL_HIDDEN if "dense" in kinds else 0)
                    + sparse_bytes
                    + (4 * vectors * REAL_HIDDEN + 4 if "colbert" in kinds else 0)
                )
                rows.append(
                    {
                        "outputs": ",".join(kinds),
                        "tokens": int(r.token_counts[0]),
                        "ms_median": statistics.median(times),
                        "ms_p90": sorted(times)[int(0.9 * len(times)) - 1],
                        "bytes_per_text": dense_bytes + sparse_bytes + multi_bytes,
                        "bytes_per_text_hidden_1024": real,
                        "sparse_pairs": pairs,
                        "multi_vectors": vectors,
                    }
                )
    print(
        "| outputs | tokens | ms/request (median, p90) | bytes/text (fixture, hidden 32) | bytes/text at hidden 1024 |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['outputs']} | {row['tokens']} | {row['ms_median']:.1f}, {row['ms_p90']:.1f} |"
            f" {row['bytes_per_text']:,} | {row['bytes_per_text_hidden_1024']:,} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
