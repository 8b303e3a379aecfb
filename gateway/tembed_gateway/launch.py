"""``tembed serve``: tritonserver on a model repository, the gateway in front of it, and a demo.

Composes the runtime's launcher (:mod:`tembed_serving.supervisor`) with this package's gateway.
"""

from __future__ import annotations

import argparse
import signal
import threading
import urllib.request

from tembed_client.contract import INPUT_TYPE, INPUT_TYPES, TASK_EMBED
from tembed_serving.supervisor import ServerError, TritonServer, add_server_args, server_from_args


def demo_model(url: str, wanted: str | None) -> str:
    """The embedding model the demo embeds with: ``wanted`` (``--demo-model``), else the first served one
    (a repository may hold rerankers and several embedders)."""
    import tritonclient.grpc as grpcclient

    from tembed_client.discovery import discover_models, loaded_models

    triton = grpcclient.InferenceServerClient(url)
    try:
        names = loaded_models(triton.get_inference_statistics(as_json=True))
        served = discover_models({n: triton.get_model_config(n, as_json=True) for n in names})
    finally:
        triton.close()
    embedders = sorted(n for n, info in served.items() if info.task == TASK_EMBED)
    if wanted is not None:
        if wanted not in embedders:
            raise ServerError(
                f"--demo-model {wanted!r} is not a served embedding model (served: {', '.join(embedders) or 'none'})"
            )
        return wanted
    if not embedders:
        raise ServerError(f"--demo needs an embedding model; served: {', '.join(sorted(served)) or 'none'}")
    return embedders[0]


def show_embedding(url: str, text: str, model: str | None = None) -> None:
    """What a user wants to see first: one real embedding from the running server."""
    from tembed_client import EmbeddingClient

    with EmbeddingClient(url, model) as client:
        info = client.model_info()
        result = client.encode([text], input_type=INPUT_TYPES[0])
    vec = result.embeddings[0]
    head = ", ".join(f"{x:+.4f}" for x in vec[:8])
    print(
        f"model {info.name}: {text!r} -> {vec.shape[0]}-dim embedding, {int(result.token_counts[0])} tokens,"
        f" norm {float((vec * vec).sum()) ** 0.5:.4f}\n  [{head}, ...]",
        flush=True,
    )


def show_openai_embedding(base_url: str, text: str, api_key: str, model: str) -> None:
    """The same text through the gateway, the way existing OpenAI client code calls it."""
    try:
        import openai
    except ImportError:  # the test extra brings it; plain HTTP shows the same
        openai = None
    extra = {INPUT_TYPE: INPUT_TYPES[0]}  # a query, as the gRPC demo, so the numbers match
    if openai is not None:
        client = openai.Client(base_url=f"{base_url}/v1", api_key=api_key)
        resp = client.embeddings.create(model=model, input=text, extra_body=extra)
        vec, tokens = resp.data[0].embedding, resp.usage.total_tokens
    else:
        import json

        def call(path: str, body: dict | None = None) -> dict:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
            with urllib.request.urlopen(urllib.request.Request(base_url + path, data, headers), timeout=60) as r:
                return json.load(r)

        resp = call("/v1/embeddings", {"model": model, "input": text, **extra})
        vec, tokens = resp["data"][0]["embedding"], resp["usage"]["total_tokens"]
    head = ", ".join(f"{x:+.4f}" for x in vec[:8])
    print(f"{base_url}/v1/embeddings model {model}: {len(vec)}-dim, {tokens} tokens\n  [{head}, ...]", flush=True)


def start_gateway(args: argparse.Namespace, srv: TritonServer):  # -> (GatewayThread, api key)
    """The OpenAI-compatible gateway on Triton, in a thread of this process."""
    from . import GatewaySettings, GatewayThread, load_api_keys

    keys = load_api_keys()  # $TEMBED_API_KEYS turns authentication on
    settings = GatewaySettings(srv.grpc_url, api_keys=keys, model_repository=args.model_repository)
    try:
        gw = GatewayThread(settings, args.gateway_host, args.gateway_port).start()
    except (OSError, RuntimeError) as exc:
        msg = f"gateway could not start on {args.gateway_host}:{args.gateway_port} ({exc}); use --gateway-port or --no-gateway"
        raise ServerError(msg) from None
    auth = "API key required" if keys else "no API key needed"
    print(f"OpenAI-compatible gateway ready: {gw.url}/v1 ({auth})", flush=True)
    return gw, min(keys, default="EMPTY")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="tembed serve", description="Serve a model repository with the pip-installed tritonserver."
    )
    add_server_args(ap)
    ap.add_argument("--demo", metavar="TEXT", help="once ready, embed TEXT through the gRPC client and print it")
    ap.add_argument("--exit-after-demo", action="store_true", help="stop the server after the demo")
    ap.add_argument("--demo-model", metavar="NAME", help="the embedding model --demo uses (default: the first served)")
    from . import GatewaySettings

    ap.add_argument(
        "--gateway-port", type=int, default=GatewaySettings.port, help="OpenAI-compatible /v1/embeddings port"
    )
    ap.add_argument("--gateway-host", default=GatewaySettings.host)
    ap.add_argument("--no-gateway", action="store_true", help="serve gRPC/HTTP only, no OpenAI-compatible gateway")
    ap.add_argument(
        "--grace", type=float, default=30.0, help="seconds in-flight requests get to finish on SIGTERM/SIGINT"
    )
    args = ap.parse_args(argv)
    srv = server_from_args(args)
    srv.exit_timeout_s = int(args.grace)
    gateway, api_key = None, ""
    stop = threading.Event()

    def on_signal(signum, _frame):  # SIGTERM is what Docker, Kubernetes and systemd send
        print(f"{signal.Signals(signum).name}: draining (up to {args.grace:.0f}s), then stopping", flush=True)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        srv.start()
        print(f"tritonserver ready (log: {args.log_file}): gRPC {srv.grpc_url}, HTTP {srv.http_url}", flush=True)
        if not args.no_gateway:
            gateway, api_key = start_gateway(args, srv)
        if args.demo:
            model = demo_model(srv.grpc_url, args.demo_model)
            show_embedding(srv.grpc_url, args.demo, model)
            if gateway is not None:
                show_openai_embedding(gateway.url, args.demo, api_key, model)
        if not args.exit_after_demo:
            print("serving; Ctrl-C or SIGTERM stops it", flush=True)
            while not stop.wait(0.5):  # the supervisor keeps Triton up meanwhile
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if gateway is not None:  # first: it stops taking requests and lets its in-flight ones finish
            left = gateway.drain(args.grace)
            if left:
                print(f"{left} gateway requests still running after {args.grace:.0f}s", flush=True)
            gateway.stop()
        if srv.proc is not None:
            left = srv.drain(args.grace)  # gRPC callers' requests too, not only the gateway's
            if left:
                print(f"{left} requests still in Triton after {args.grace:.0f}s", flush=True)
        srv.stop()  # then Triton exits and every stub is gone
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
