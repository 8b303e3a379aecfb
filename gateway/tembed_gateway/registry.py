"""The served ensembles, found on Triton, each with its client on one shared gRPC channel."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import tritonclient.grpc.aio as grpcaio
from tokenizers import Tokenizer
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

from tembed_client import AsyncEmbeddingClient, ModelInfo, discover_models, gather, loaded_models, triton_errors
from tembed_serving.contract import Layout

from .settings import GatewaySettings

# An unknown model name triggers a re-read of Triton's index, but not more often than this.
REFRESH_INTERVAL_S = 1.0


def channel_args() -> list[tuple[str, int | str]]:
    """tritonclient's own channel defaults, plus round-robin: with a name that resolves to several
    Triton pods (``dns:///tembed-triton-headless:8001``), requests spread over all of them instead of
    gRPC's default of sending everything to the first address."""
    ka = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.lb_policy_name", "round_robin"),
    ]


class ModelClient(AsyncEmbeddingClient):
    """One model's AsyncEmbeddingClient on the gateway's shared channel (its chunking, concurrent
    sends and reassembly are what the gateway needs), with the config already read."""

    def __init__(self, triton: grpcaio.InferenceServerClient, url: str, info: ModelInfo, timeout: float) -> None:
        super().__init__(url, timeout=timeout, triton=triton, info=info)

    @property
    def info(self) -> ModelInfo:
        assert self._info is not None
        return self._info


class ModelRegistry:
    """Created in the server's event loop: grpc.aio channels belong to the loop that made them."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.triton = grpcaio.InferenceServerClient(settings.triton_url, channel_args=channel_args())
        self.clients: dict[str, ModelClient] = {}
        self._tokenizers: dict[str, Tokenizer] = {}
        self._lock = asyncio.Lock()
        self._refreshed_at = -math.inf
        # Model discovery reads Triton's repository index, an admin protocol: it needs the key.
        headers = dict(settings.triton_headers) or None
        self._rpc = {"client_timeout": min(settings.timeout_s, 10.0), "headers": headers}

    async def close(self) -> None:
        await self.triton.close()

    async def ready(self) -> bool:
        try:
            return bool(await self.triton.is_server_ready(client_timeout=2.0))
        except Exception:  # any failure to reach Triton means "not ready", which is the answer
            return False

    async def refresh(self, min_interval: float = 0.0) -> None:
        """Re-read Triton's READY text-embedding ensembles; raises EmbeddingError if Triton is unreachable."""
        async with self._lock:
            if time.monotonic() - self._refreshed_at < min_interval:
                return
            with triton_errors():
                stats = await self.triton.get_inference_statistics(as_json=True, **self._rpc)
                names = loaded_models(stats)
                configs = await gather(self.triton.get_model_config(n, as_json=True, **self._rpc) for n in names)
            found = {}
            by_name = dict(zip(names, configs))
            for name, info in discover_models(by_name).items():
                old = self.clients.get(name)
                found[name] = old if old is not None and old.info == info else self._client(info)
            self.clients = found
            self._refreshed_at = time.monotonic()

    def _client(self, info: ModelInfo) -> ModelClient:
        return ModelClient(self.triton, self.settings.triton_url, info, self.settings.timeout_s)

    async def resolve(self, model: str) -> ModelClient | None:
        name = self.settings.aliases.get(model, model)
        client = self.clients.get(name)
        if client is None:
            await self.refresh(REFRESH_INTERVAL_S)
            client = self.clients.get(name)
        return client

    def tokenizer(self, name: str) -> Tokenizer | None:
        """The served tokenizer's ``tokenizer.json``, if the gateway was given the repository."""
        if name not in self._tokenizers:
            repo = self.settings.model_repository
            path = Layout(Path(repo), name).tokenizer_file if repo else None
            if path is None or not path.is_file():
                return None
            self._tokenizers[name] = Tokenizer.from_file(str(path))
        return self._tokenizers[name]
