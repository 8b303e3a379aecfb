"""Bytes per vector on the wire for each ``embedding_type``: the gRPC output tensor, the whole gRPC
response and the gateway's JSON body (float numbers or integers, and base64), per text.

    python bench/compact_wire.py --model-repository .cache/eval_repository   # starts Triton + gateway

Sends the first ``--texts`` MS MARCO passages in one request per type and format; prints a markdown
table (docs/QUALITY.md) and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from tembed_bench.data import DATA
from tembed_client import EmbeddingClient
from tembed_client.contract import EMBEDDING, EMBEDDING_PACKED, EMBEDDING_TYPE, EMBEDDING_TYPES, TEXT, TOKEN_COUNT
from tembed_gateway import GatewaySettings, GatewayThread
from tembed_serving.supervisor import TritonServer


def passages(n: int) -> list[str]:
    out = []
    with open(DATA / "msmarco-5k" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            out.append(" ".join(x for x in (doc.get("title"), doc.get("text")) if x))
            if len(out) == n:
                return out
    return out


def grpc_sizes(url: str, model: str, texts: list[str], kind: str) -> tuple[float, float]:
    """(output tensor bytes, whole ModelInferResponse bytes) per text."""
    inputs = [grpcclient.InferInput(TEXT, [len(texts)], "BYTES"), grpcclient.InferInput(EMBEDDING_TYPE, [1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    inputs[1].set_data_from_numpy(np.array([kind.encode()], dtype=object))
    name = EMBEDDING if kind == EMBEDDING_TYPES[0] else EMBEDDING_PACKED
    outputs = [grpcclient.InferRequestedOutput(n) for n in (name, TOKEN_COUNT)]
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, inputs, outputs=outputs)
    tensor = result.as_numpy(name)
    return tensor.nbytes / len(texts), result.get_response().ByteSize() / len(texts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-repository", type=Path, required=True, help="start tritonserver on this repository")
    ap.add_argument("--model", help="served ensemble (default: the only/first one)")
    ap.add_argument("--texts", type=int, default=64)
    args = ap.parse_args(argv)
    texts = passages(args.texts)
    rows = []
    with contextlib.ExitStack() as stack:
        log = Path(".cache/bench-tritonserver.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        srv = stack.enter_context(TritonServer.on_free_ports(args.model_repository, log_file=log))
        with EmbeddingClient(srv.grpc_url, args.model) as c:
            info = c.model_info()
        texts = texts[: info.max_texts]
        gw = stack.enter_context(GatewayThread(GatewaySettings(srv.grpc_url, model_repository=args.model_repository)))
        for kind in EMBEDDING_TYPES:
            tensor, response = grpc_sizes(srv.grpc_url, info.name, texts, kind)
            row = {"type": kind, "grpc_tensor": tensor, "grpc_response": response}
            for fmt in ("float", "base64"):
                body = {"model": info.name, "input": texts, "encoding_format": fmt, EMBEDDING_TYPE: kind}
                resp = httpx.post(f"{gw.url}/v1/embeddings", json=body, timeout=600)
                resp.raise_for_status()
                item = resp.json()["data"][0]["embedding"]
                row[f"json_{fmt}"] = len(resp.content) / len(texts)
                row[f"value_{fmt}"] = len(json.dumps(item, separators=(",", ":")))
            rows.append(row)
    d = info.dimension
    print(f"{info.name}, d={d}, {len(texts)} MS MARCO passages in one request; bytes per vector")
    print()
    print(
        "| embedding_type | gRPC tensor | gRPC response per text | JSON `embedding` value (float format) "
        "| JSON body per text | base64 `embedding` value | base64 body per text |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['type']} | {r['grpc_tensor']:.0f} | {r['grpc_response']:.0f} | {r['value_float']} "
            f"| {r['json_float']:.0f} | {r['value_base64']} | {r['json_base64']:.0f} |"
        )
    print(json.dumps({"bench": "compact_wire", "model": info.name, "dimension": d, "texts": len(texts), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
