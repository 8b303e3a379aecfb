"""Triton Python-backend models. Imported only inside the backend stub (they need ``triton_python_backend_utils``)."""
