"""tembed's serving runtime: everything a Triton Python stub imports, and the tritonserver supervisor.

Installable alone (``pip install ./client ./serving``; the ``torch`` extra adds the PyTorch runner,
``triton`` the pip-installed tritonserver): the contract, the profile, text processing, the encoder
runners (ONNX Runtime, PyTorch), the Triton models and the supervisor
(``python -m tembed_serving.supervisor``). Nothing here builds models; that is ``tembed`` (``export/``).
"""

__version__ = "0.1.0"
