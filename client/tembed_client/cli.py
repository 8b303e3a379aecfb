"""``tembed-client``: embed texts from the command line and print JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from . import __version__
from .contract import DEFAULT_URL, TASK_EMBED, options_for
from .errors import EmbeddingError
from .results import EmbeddingResult
from .sync import EmbeddingClient


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tembed-client",
        description="Embed texts with a Triton text-embedding server and print a JSON object "
        '{"model", "dimension", "token_counts", "embeddings"}.',
    )
    ap.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (default: one per line of stdin)")
    ap.add_argument("--url", default=DEFAULT_URL, help="gRPC address (default: %(default)s)")
    ap.add_argument("--model", help="served model (default: the only ready ensemble)")
    for option in options_for(TASK_EMBED):  # --input-type, --dimensions, ... as the contract declares them
        kind = {"type": int, "metavar": "N"} if option.datatype == "INT32" else {"metavar": "TEXT"}
        ap.add_argument(
            f"--{option.name.replace('_', '-')}", choices=option.values, **(kind if not option.values else {})
        )
    ap.add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="per-request timeout, seconds (default: %(default)s)"
    )
    ap.add_argument("--head", type=int, metavar="K", help="print only the first K numbers of each vector, and its norm")
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return ap


def floats(values: np.ndarray) -> list[float]:
    # Shortest decimal that round-trips the float32, not the float64 noise after it.
    return [float(str(v)) for v in values.astype(np.float32)]


def to_json(result: EmbeddingResult, head: int | None) -> str:
    emb = result.embeddings
    doc: dict[str, object] = {
        "model": result.model,
        "dimension": emb.shape[1],
        "token_counts": result.token_counts.tolist(),
    }
    if head is not None:
        doc["norms"] = [round(float(n), 6) for n in np.linalg.norm(emb, axis=1)]
        emb = emb[:, :head]
    # One vector per line: valid JSON that stays readable.
    rows = ",\n    ".join(json.dumps(floats(row)) for row in emb)
    fields = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()]
    fields.append(f'  "embeddings": [\n    {rows}\n  ]' if rows else '  "embeddings": []')
    return "{\n" + ",\n".join(fields) + "\n}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.head is not None and args.head < 0:
        parser().error("--head must be >= 0")
    # stdin is read as bytes so that the client, not the locale, checks it is UTF-8.
    texts = args.texts or sys.stdin.buffer.read().splitlines()
    try:
        with EmbeddingClient(args.url, args.model, timeout=args.timeout) as client:
            options = {o.name: getattr(args, o.name) for o in options_for(TASK_EMBED)}
            result = client.encode(list(texts), **options)
    except EmbeddingError as err:
        print(f"error: {err.code}: {err.message}", file=sys.stderr)
        return 1
    print(to_json(result, args.head))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
