"""The machine's floor under the latency budget: what gRPC, Triton and Python-backend steps cost on this
machine with none of our code in them.

Two models in a repository of their own, served by the same tritonserver build with the same launcher:

- ``floor-one``: one Python step. It takes the query's text, keeps its stub busy for ``wait_us`` (as the
  encoder's stub is while ONNX Runtime runs) and answers a float vector of the model's size.
- ``floor-two``: an ensemble of two Python steps, as ours (tokenizer, then encoder): the first passes the
  text on, the second waits and answers the vector.

- ``floor-one-batched``: the one-step layout's floor (``tembed export --layout one-step``): one batched Python
  step whose batch row is one request (text ``[1, n]``, ragged; the same batcher delay as ours). Per
  execution it keeps busy for the longest ``wait_us`` of its batch once (a batched encoder runs the batch
  as one call) and answers each request its own row.

- ``floor-one-ort``: the same batched step, but busy running ONNX Runtime itself: the encoder's graph, with our
  runner's session options and threads, on ``tokens`` placeholder ids per request (sent by the client, which
  counts them; no tokenizer in the stub). ONNX Runtime's threads take every core where the busy wait takes
  one, so anything else the server does while the request is computed (its gRPC, the stub's IPC, the
  batcher) competes with it as with our encoder. Its ``wall − ONNX Runtime in-process`` is the floor of a
  one-step model: ours less our own code (parsing, tokenizing, finishing, its outputs).

Sent the same short queries through the same gRPC client, each with ``wait_us`` set to what ONNX Runtime
took in-process, ``wall − wait`` is what serving costs before any of our code runs: the part of the
budget that is the machine (and Triton), not us.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tembed_client.contract import INPUT_TYPE

ONE, TWO, STEP = "floor-one", "floor-two", "floor-step"
ONE_BATCHED = "floor-one-batched"
ONE_ORT = "floor-one-ort"

_MODEL_PY = '''"""A bench fixture (tembed_bench.floor): pass the text on, or keep busy for wait_us and answer zeros."""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.dim = int(json.loads(args["model_config"])["parameters"]["dim"]["string_value"])

    def execute(self, requests):
        out = []
        for r in requests:
            text = pb_utils.get_input_tensor_by_name(r, "text").as_numpy()
            wait = pb_utils.get_input_tensor_by_name(r, "wait_us")
            if wait is None:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("text_out", text)]))
                continue
            end = time.perf_counter() + int(wait.as_numpy()[0]) / 1e6
            while time.perf_counter() < end:  # on the CPU, as a stub running ONNX Runtime is
                pass
            vec = np.zeros((text.shape[0], self.dim), np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("embedding", vec)]))
        return out
'''


_BATCHED_MODEL_PY = '''"""A bench fixture (tembed_bench.floor): one request per batch row; busy once per batch, answer zeros."""
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.dim = int(json.loads(args["model_config"])["parameters"]["dim"]["string_value"])

    def execute(self, requests):
        texts, wait = [], 0
        for r in requests:
            texts.append(pb_utils.get_input_tensor_by_name(r, "text").as_numpy())
            w = pb_utils.get_input_tensor_by_name(r, "wait_us")
            wait = max(wait, 0 if w is None else int(w.as_numpy().reshape(-1)[0]))
        end = time.perf_counter() + wait / 1e6
        while time.perf_counter() < end:
            pass
        out = []
        for text in texts:
            vec = np.zeros((1, text.shape[1], self.dim), np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("embedding", vec)]))
        return out
'''


_ORT_MODEL_PY = '''"""A bench fixture (tembed_bench.floor): one request per batch row; ONNX Runtime once per batch on
placeholder ids of each request's ``tokens``, answering each request its row."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from tembed_serving.runners.ort import OrtEncoder, OrtOptions


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.encoder = OrtEncoder(
            params["onnx"], pad_token_id=0, padding_side="right", options=OrtOptions.from_parameters(params)
        )

    def execute(self, requests):
        ids, masks = [], []
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "tokens").as_numpy().reshape(-1)[0])
            ids.append(np.full((1, n), 1000, np.int64))
            masks.append(np.ones((1, n), np.int64))
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("embedding", np.asarray(v, np.float32)[np.newaxis])])
            for v in self.encoder(ids, masks)
        ]
'''


def _batched_config(
    dim: int, delay_us: int, wait_when_idle: bool, name: str = ONE_BATCHED, params: dict[str, str] | None = None
) -> str:
    preferred = "" if wait_when_idle else f" preferred_batch_size: [ {', '.join(map(str, range(1, 17)))} ]"
    extra = "".join(f'\nparameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in (params or {}).items())
    return f"""name: "{name}"
backend: "python"
max_batch_size: 16
input {{ name: "text" data_type: TYPE_STRING dims: -1 allow_ragged_batch: true }}
input {{ name: "{INPUT_TYPE}" data_type: TYPE_STRING dims: 1 optional: true }}
input {{ name: "wait_us" data_type: TYPE_INT32 dims: 1 optional: true }}
input {{ name: "tokens" data_type: TYPE_INT32 dims: 1 optional: true }}
output {{ name: "embedding" data_type: TYPE_FP32 dims: [ -1, -1 ] }}
instance_group {{ count: 1 kind: KIND_CPU }}
dynamic_batching {{ max_queue_delay_microseconds: {delay_us}{preferred} }}
parameters {{ key: "dim" value {{ string_value: "{dim}" }} }}{extra}
"""


def _step_config(name: str, dim: int) -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: 0
input {{ name: "text" data_type: TYPE_STRING dims: -1 }}
input {{ name: "{INPUT_TYPE}" data_type: TYPE_STRING dims: 1 optional: true }}
input {{ name: "wait_us" data_type: TYPE_INT32 dims: 1 optional: true }}
output {{ name: "text_out" data_type: TYPE_STRING dims: -1 }}
output {{ name: "embedding" data_type: TYPE_FP32 dims: [ -1, -1 ] }}
instance_group {{ count: 1 kind: KIND_CPU }}
parameters {{ key: "dim" value {{ string_value: "{dim}" }} }}
"""


_ENSEMBLE = f"""name: "{TWO}"
platform: "ensemble"
max_batch_size: 0
input {{ name: "text" data_type: TYPE_STRING dims: -1 }}
input {{ name: "{INPUT_TYPE}" data_type: TYPE_STRING dims: 1 }}
input {{ name: "wait_us" data_type: TYPE_INT32 dims: 1 }}
output {{ name: "embedding" data_type: TYPE_FP32 dims: [ -1, -1 ] }}
ensemble_scheduling {{
  step {{
    model_name: "{STEP}" model_version: -1
    input_map {{ key: "text" value: "text" }} input_map {{ key: "{INPUT_TYPE}" value: "{INPUT_TYPE}" }}
    output_map {{ key: "text_out" value: "passed" }}
  }}
  step {{
    model_name: "{STEP}-2" model_version: -1
    input_map {{ key: "text" value: "passed" }} input_map {{ key: "wait_us" value: "wait_us" }}
    output_map {{ key: "embedding" value: "embedding" }}
  }}
}}
"""


def write_repo(
    dest: Path,
    dim: int,
    delay_us: int = 100,
    wait_when_idle: bool = True,
    onnx: Path | None = None,
    threads: int = 0,
) -> Path:
    """The floor's model repository in ``dest`` (rewritten); ``delay_us`` and ``wait_when_idle``: the batched
    floors' batcher (``ServingOptions.max_queue_delay_us``, ``wait_when_idle``); ``onnx``: the encoder graph of
    ``floor-one-ort`` (run with ``threads`` intra-op threads), which is left out without it."""
    models = {ONE: _step_config(ONE, dim), STEP: _step_config(STEP, dim), f"{STEP}-2": _step_config(f"{STEP}-2", dim)}
    models[ONE_BATCHED] = _batched_config(dim, delay_us, wait_when_idle)
    code = dict.fromkeys(models, _MODEL_PY) | {ONE_BATCHED: _BATCHED_MODEL_PY}
    if onnx is not None:
        params = {"onnx": str(onnx.resolve()), "intra_op_threads": str(threads)}
        models[ONE_ORT] = _batched_config(dim, delay_us, wait_when_idle, ONE_ORT, params)
        code[ONE_ORT] = _ORT_MODEL_PY
    for name, config in models.items():
        (dest / name / "1").mkdir(parents=True, exist_ok=True)
        (dest / name / "config.pbtxt").write_text(config)
        (dest / name / "1" / "model.py").write_text(code[name])
    (dest / TWO / "1").mkdir(parents=True, exist_ok=True)
    (dest / TWO / "config.pbtxt").write_text(_ENSEMBLE)
    return dest


class FloorClient:
    """The floor's models through ``tritonclient.grpc``, as ``EmbeddingClient`` sends a query."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self._g = grpcclient
        self.client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))

    def _input(self, name: str, data: np.ndarray, dtype: str):
        t = self._g.InferInput(name, list(data.shape), dtype)
        t.set_data_from_numpy(data)
        return t

    def call(self, model: str, texts: list[str], input_type: str, wait_s: float, tokens: int = 0) -> float:
        """Wall seconds of one request less the ``wait_s`` the last step spent busy (``floor-one-ort``: what
        ONNX Runtime took in-process on ``tokens`` ids)."""
        t = time.perf_counter()
        inputs = self.inputs(texts, input_type, wait_s, batched=model in (ONE_BATCHED, ONE_ORT), tokens=tokens)
        self.client.infer(model, inputs, outputs=[self._g.InferRequestedOutput("embedding")]).as_numpy("embedding")
        return time.perf_counter() - t - wait_s

    def inputs(self, texts: list[str], input_type: str, wait_s: float, batched: bool = False, tokens: int = 0) -> list:
        arrays = {
            "text": np.array([s.encode() for s in texts], dtype=np.object_),
            INPUT_TYPE: np.array([input_type.encode()], dtype=np.object_),
        }
        if tokens:  # floor-one-ort: ONNX Runtime's work instead of a wait
            arrays["tokens"] = np.array([tokens], dtype=np.int32)
        else:
            arrays["wait_us"] = np.array([round(wait_s * 1e6)], dtype=np.int32)
        return [
            self._input(name, a[np.newaxis] if batched else a, "BYTES" if a.dtype == np.object_ else "INT32")
            for name, a in arrays.items()
        ]

    def close(self) -> None:
        self.client.close()
