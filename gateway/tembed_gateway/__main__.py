"""``python -m tembed_gateway --triton localhost:8001 --port 30000``"""

from __future__ import annotations

import argparse
from pathlib import Path

from .settings import API_KEYS_ENV, GatewaySettings, load_api_keys, parse_aliases

DEFAULTS = GatewaySettings()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tembed_gateway", description="OpenAI-compatible /v1/embeddings in front of Triton."
    )
    ap.add_argument(
        "--triton",
        action="append",
        metavar="HOST:PORT",
        help=f"Triton's gRPC address (default {DEFAULTS.triton_url}); repeat for several replicas serving the same"
        " models. One dns:///NAME:PORT resolving to several addresses is balanced per request by itself",
    )
    ap.add_argument("--host", default=DEFAULTS.host)
    ap.add_argument("--port", type=int, default=DEFAULTS.port)
    ap.add_argument(
        "--api-key-file", type=Path, help=f"accepted API keys, one a line; with ${API_KEYS_ENV} set, keys are required"
    )
    ap.add_argument("--alias", action="append", default=[], metavar="A=B", help="serve ensemble B also as model A")
    ap.add_argument("--model-repository", type=Path, help="the served repository: lets token-id input be decoded")
    ap.add_argument("--max-inputs", type=int, default=DEFAULTS.max_inputs, help="most inputs per request")
    ap.add_argument("--max-body-bytes", type=int, default=DEFAULTS.max_body_bytes, help="largest request body")
    ap.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, help="seconds per Triton call")
    ap.add_argument(
        "--max-in-flight", type=int, default=DEFAULTS.max_in_flight, help="requests served at once; more get 429"
    )
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--access-log", action="store_true", help="log every request (costs latency)")
    return ap


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    urls = tuple(args.triton or [DEFAULTS.triton_url])
    return GatewaySettings(
        triton_url=urls[0],
        triton_urls=urls if len(urls) > 1 else (),
        aliases=parse_aliases(args.alias),
        api_keys=load_api_keys(args.api_key_file),
        model_repository=args.model_repository,
        max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes,
        timeout_s=args.timeout,
        max_in_flight=args.max_in_flight,
        host=args.host,
        port=args.port,
    )


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValueError, OSError) as exc:
        ap.error(str(exc))
    from .runner import serve

    serve(settings, log_level=args.log_level, access_log=args.access_log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
