"""The gateway's settings, and where API keys come from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tembed_client.contract import DEFAULT_URL

API_KEYS_ENV = "TEMBED_API_KEYS"


@dataclass(frozen=True)
class GatewaySettings:
    """Every setting of the gateway and its default: the CLIs (``python -m tembed_gateway``, ``tembed
    serve``) take their defaults from here."""

    triton_url: str = DEFAULT_URL  # Triton's gRPC endpoint (one replica)
    host: str = "127.0.0.1"  # where the gateway listens
    port: int = 30000
    aliases: Mapping[str, str] = field(default_factory=dict)  # requested name -> served ensemble
    api_keys: frozenset[str] = frozenset()  # empty: no authentication
    model_repository: Path | None = None  # lets token-id input be decoded with the served tokenizer
    max_inputs: int = 2048  # OpenAI's own limit on inputs per request
    max_body_bytes: int = 32 << 20  # 2048 inputs of ~16 KB each
    timeout_s: float = 60.0  # per Triton call
    # Requests being served at once; more get 429 with Retry-After at once instead of queueing
    # without bound (a caller that gave up would still be computed for).
    max_in_flight: int = 128
    retry_after_s: int = 1
    canary_ttl_s: float = 2.0  # how long a readiness answer (a real inference per model) is reused
    # Several Triton replicas serving the same models; when set, triton_url is not used. Requests go
    # to the least busy ready one (registry.py). One `dns:///NAME:8001` resolving to several pods
    # needs no list: its channel balances over them.
    triton_urls: tuple[str, ...] = ()

    @property
    def replica_urls(self) -> tuple[str, ...]:
        return tuple(self.triton_urls) or (self.triton_url,)

    @property
    def triton_label(self) -> str:
        """The Triton address(es), as error messages name them."""
        return ", ".join(self.replica_urls)


def load_api_keys(key_file: Path | None = None, env: Mapping[str, str] = os.environ) -> frozenset[str]:
    """Keys from ``$TEMBED_API_KEYS`` (comma-separated) and ``key_file`` (one per line, ``#`` comments).

    Giving any key turns authentication on: that is the one setting."""
    keys = {k.strip() for k in env.get(API_KEYS_ENV, "").split(",")}
    if key_file is not None:
        for line in Path(key_file).read_text().splitlines():
            keys.add(line.split("#", 1)[0].strip())
    return frozenset(k for k in keys if k)


def parse_aliases(items: list[str]) -> dict[str, str]:
    """``["A=B", ...]`` (``A`` may contain ``/``) as ``{A: B}``."""
    aliases = {}
    for item in items:
        alias, sep, target = item.rpartition("=")
        if not sep or not alias or not target:
            raise ValueError(f"alias must look like ALIAS=SERVED_MODEL, got {item!r}")
        aliases[alias] = target
    return aliases
