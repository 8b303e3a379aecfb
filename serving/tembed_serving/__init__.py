"""tembed's serving runtime: everything a Triton Python stub imports, and the local launcher.

Installable alone (``pip install ./client ./serving[onnx]``): the contract, the profile, text
processing, the encoder runners, the Triton models and the tritonserver launcher. Nothing here
builds models; that is ``tembed`` (``export/``).
"""

__version__ = "0.1.0"
