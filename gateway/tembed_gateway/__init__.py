"""OpenAI-compatible /v1/embeddings gateway in front of Triton."""

from .app import create_app
from .runner import GatewayThread, serve
from .settings import GatewaySettings, load_api_keys, parse_aliases

__all__ = ["GatewaySettings", "GatewayThread", "create_app", "load_api_keys", "parse_aliases", "serve"]
