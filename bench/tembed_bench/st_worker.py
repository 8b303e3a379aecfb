"""sentence-transformers with a chosen backend, in a process of its own: run by another interpreter
(the peers' venv, ``.venv-infinity``, whose optimum and transformers the ONNX backend needs), so it
imports nothing from tembed. One JSON request a line on stdin, one JSON answer a line on stdout:

    {"texts": [...], "prompt_name": "query", "vectors": false}
    -> {"seconds": 0.0123, "vectors": "<base64 float32 [n, d]>" | null, "shape": [n, d]}

``seconds`` is the encode call's own time in this process, so the caller's latency is the in-process
one, without the pipe. ``python st_worker.py FOLDER --backend onnx --threads 2``
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time


def load(folder: str, backend: str, threads: int):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    kwargs: dict = {}
    if backend == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # the same thread budget as every other system
        kwargs["model_kwargs"] = {"provider": "CPUExecutionProvider", "session_options": opts}
    return SentenceTransformer(folder, device="cpu", backend=backend, local_files_only=True, **kwargs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--backend", default="onnx", choices=("torch", "onnx"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    model = load(args.folder, args.backend, args.threads)
    import sentence_transformers

    print(json.dumps({"ready": True, "version": sentence_transformers.__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t = time.perf_counter()
        emb = model.encode(req["texts"], prompt_name=req.get("prompt_name"), batch_size=len(req["texts"]))
        took = time.perf_counter() - t
        vectors = base64.b64encode(emb.astype("<f4").tobytes()).decode() if req.get("vectors") else None
        print(json.dumps({"seconds": took, "vectors": vectors, "shape": list(emb.shape)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
