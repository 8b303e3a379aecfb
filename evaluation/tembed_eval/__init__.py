"""Retrieval-quality evaluation of served embedding models through the gRPC client."""
