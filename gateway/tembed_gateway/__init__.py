"""OpenAI-compatible /v1/embeddings gateway in front of Triton."""
