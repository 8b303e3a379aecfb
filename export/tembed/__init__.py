"""Serve text-embedding models on NVIDIA Triton: profile, export, model repository, local server."""

__version__ = "0.1.0"
