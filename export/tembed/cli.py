"""``tembed``: export a Hugging Face embedding model into a Triton model repository, build fixtures, serve."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from tembed_serving.contract import IDS_DTYPES, LAYOUTS, TASKS, TORCH_DTYPES
from tembed_serving.profile import ModelProfile

from .repository import ENCODER_BACKENDS
from .tensorrt_build import register as register_engine

log = logging.getLogger("tembed")


def resolve_model(ref: str) -> Path:
    """A local folder, or a hub id downloaded once when a hub is reachable (never in tests)."""
    path = Path(ref)
    if path.is_dir():
        return path
    if path.exists() or ref.startswith((".", "/")) or ref.count("/") != 1:
        raise SystemExit(f"error: {ref} is not a model folder")
    from huggingface_hub import snapshot_download

    log.info("downloading %s from the hub", ref)
    return Path(snapshot_download(ref))


def cmd_export(args: argparse.Namespace) -> int:
    from .pipeline import ExportOptions, export_model
    from .repository import ServingOptions

    serving = ServingOptions(
        backend=args.backend,
        encoder_instances=args.encoder_instances,
        intra_op_threads=args.threads,
        max_queue_delay_us=args.max_queue_delay_us,
        wait_when_idle=args.wait_when_idle,
        queue_timeout_s=args.queue_timeout_s,
        queue_tokens=args.queue_tokens,
        priority_lanes=args.priority_lanes,
        torch_dtype=args.torch_dtype,
        torch_device=args.torch_device,
        torch_cuda_graph_tokens=args.torch_cuda_graphs,
    )
    options = ExportOptions(
        name=args.name,
        pooling=args.pooling,
        padding_side=args.padding_side,
        max_length=args.max_length,
        min_dimension=args.min_dimension,
        max_texts=args.max_texts,
        query_prompt=args.query_prompt,
        document_prompt=args.document_prompt,
        end_token=args.end_token,
        ids_dtype=args.ids_dtype,
        task=args.task,
        trust_remote_code=args.trust_remote_code,
        serving=serving,
        layout=args.layout,
        opset=args.opset,
        quantize=args.quantize,
        int8_methods=tuple(args.int8_method.split(",")) if args.int8_method else None,
        validate=not args.skip_validation,
        calibrate=not args.skip_calibration,
    )
    try:
        result = export_model(resolve_model(args.model), args.repo, options)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"served model {result.profile.name!r} written to {Path(args.repo).resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .repository import ServingOptions

    ap = argparse.ArgumentParser(prog="tembed", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export", help="export a model folder to ONNX and write its Triton models")
    ex.add_argument("model", help="Hugging Face model folder (or hub id when a hub is reachable)")
    ex.add_argument("--repo", type=Path, default=Path("model_repository"), help="model repository to write into")
    ex.add_argument("--name", help="served model name (default: folder name, lower case)")
    ex.add_argument("--task", choices=TASKS, help="override what the model's files say it does (embed, rerank)")
    ex.add_argument("--pooling", choices=("mean", "cls", "last"), help="override the model files' pooling")
    ex.add_argument("--padding-side", choices=("left", "right"))
    ex.add_argument("--max-length", type=int, help="truncate texts to this many tokens")
    ex.add_argument("--min-dimension", type=int, help="smallest Matryoshka dimension a request may ask for")
    ex.add_argument(
        "--max-texts", type=int, default=ModelProfile.max_texts, help="texts per request and encoder batch size"
    )
    ex.add_argument("--query-prompt", help="override the model's query prompt")
    ex.add_argument("--document-prompt", help="override the model's document prompt")
    ex.add_argument("--end-token", help="token that must end every sequence (last-token pooling)")
    ex.add_argument("--ids-dtype", choices=IDS_DTYPES, default=ModelProfile.ids_dtype)
    ex.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="export a model that brings its own Python code (config.json's auto_map, e.g. nomic-embed-text):"
        " the export imports and runs it",
    )
    ex.add_argument(
        "--backend",
        choices=ENCODER_BACKENDS,
        default="python-onnx",
        help="encoder: ONNX Runtime in the Python backend (CPU; python-openvino: OpenVINO, serving[openvino]);"
        " onnxruntime/tensorrt backends or the PyTorch runner (pytorch) in the GPU container",
    )
    ex.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=ModelProfile.layout,
        help="two-step: an ensemble of tokenizer and encoder models (every backend); one-step: one batched Python"
        " model tokenizes and runs the encoder (embeddings on python-onnx or pytorch: one stub hop per query)",
    )
    ex.add_argument("--encoder-instances", type=int, default=1)
    ex.add_argument("--torch-dtype", choices=TORCH_DTYPES, default=ServingOptions.torch_dtype)
    ex.add_argument(
        "--torch-device", choices=("cuda", "cpu"), default="cuda", help="pytorch backend: GPU instances, or CPU"
    )
    ex.add_argument(
        "--torch-cuda-graphs",
        type=int,
        default=ServingOptions.torch_cuda_graph_tokens,
        metavar="TOKENS",
        help="pytorch backend on a GPU: a lone text of up to TOKENS tokens replays a CUDA graph of its length"
        " (captured at first use) instead of launching each kernel from Python (0: off)",
    )
    ex.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    ex.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=ServingOptions.max_queue_delay_us,
        help="longest wait of a lone request for company in the encoder's batcher (0 makes tritonserver 2.51's"
        " batcher thread spin while the encoder works)",
    )
    ex.add_argument(
        "--wait-when-idle",
        action=argparse.BooleanOptionalAction,
        default=ServingOptions.wait_when_idle,
        help="a request reaching an idle encoder waits --max-queue-delay-us for company (--no-wait-when-idle:"
        " it runs at once; batches still form while the encoder is busy). Default: two-step waits, one-step not",
    )
    ex.add_argument(
        "--queue-timeout-s",
        type=float,
        default=0.0,
        help="refuse a request that waited this long in the encoder's queue (0: off; a caller's deadline still"
        " frees it). Any queue policy stalls tritonserver 2.51's batcher ~0.5 s at times: see docs/RELIABILITY.md",
    )
    ex.add_argument(
        "--queue-tokens",
        type=int,
        default=0,
        help="bound the encoder's queue to this many tokens of full-length requests (0: unbounded); same caveat",
    )
    ex.add_argument(
        "--priority-lanes",
        action=argparse.BooleanOptionalAction,
        default=ServingOptions.priority_lanes,
        help="a bulk lane (requests with priority low) with an encoder of its own over the same weights, so"
        " queries never queue behind bulk indexing (costs a second encoder process)",
    )
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument(
        "--quantize",
        choices=("int8",),
        help="CPU: an int8 encoder, kept only if retrieval on slices of the shipped evaluation sets stays within "
        "0.5 points of fp32 (tembed.quantize; docs/BENCHMARKS.md 'int8 encoder'), refused otherwise",
    )
    ex.add_argument(
        "--int8-method",
        default=None,
        help="comma-separated int8 methods to try in order (static, static-ffn-fp32, dynamic, nncf; default: the"
        " runner's: static,static-ffn-fp32,dynamic for ONNX Runtime, nncf for OpenVINO)",
    )
    ex.add_argument("--skip-validation", action="store_true")
    ex.add_argument(
        "--skip-calibration",
        action="store_true",
        help="do not measure the int8/uint8 ranges of embedding_type (those two are then refused; a few seconds "
        "for small models, longer for billion-parameter ones on CPU)",
    )
    ex.set_defaults(func=cmd_export)

    sub.add_parser("serve", help="run tritonserver and the gateway on a model repository (tembed serve --help)")
    register_engine(sub)
    # Commands other packages add (tembed eval from evaluation/, tembed fixtures from devtools/), found without importing them here.
    for ep in entry_points(group="tembed.commands"):
        try:
            ep.load()(sub)
        except ImportError:  # its extra is not installed
            continue
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # its own parser: argparse's REMAINDER drops leading options
        from tembed_gateway.launch import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
