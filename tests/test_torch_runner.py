"""The PyTorch runner behind the shared encoder model, served by the real tritonserver on CPU.

On a GPU the same repository runs with ``KIND_GPU`` instances (docs/GPU.md, measured on an H200);
here ``torch_device="cpu"`` puts the instance on the CPU so every line of that path runs in CI.
"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import TEXTS

pytestmark = pytest.mark.slow
MODEL = "qwen3-embedding-tiny"


@pytest.fixture(scope="module")
def torch_server(fixture_dirs, tmp_path_factory):
    from tembed.pipeline import ExportOptions, export_model
    from tembed.repository import ServingOptions
    from tembed_serving.supervisor import TritonServer

    repo = tmp_path_factory.mktemp("torch-repo")
    serving = ServingOptions(backend="pytorch", torch_device="cpu", torch_dtype="float32")
    result = export_model(fixture_dirs[MODEL], repo, ExportOptions(name="qwen3-torch", max_texts=8, serving=serving))
    assert result.onnx is None and result.layout.hf_dir.is_dir()
    log = tmp_path_factory.mktemp("torch-triton") / "tritonserver.log"
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        yield srv


def test_torch_runner_matches_sentence_transformers(torch_server, references):
    from tembed_client import EmbeddingClient

    with EmbeddingClient(torch_server.grpc_url, "qwen3-torch") as client:
        served = client.embed(TEXTS, input_type="query")
        alone = np.stack([client.embed([t], input_type="query")[0] for t in TEXTS])
    expected = references(MODEL).encode(TEXTS, prompt_name="query", normalize_embeddings=True)
    assert (served * expected).sum(-1).min() >= 0.9999
    assert np.abs(served - alone).max() <= 1e-5  # left padding in a batch changes nothing


def test_torch_runner_config_names_its_runner(torch_server):
    from tembed.repository import parse
    from tembed_serving.contract import Layout

    cfg = parse(
        (Layout(torch_server.model_repository, "qwen3-torch").model_dir("encoder") / "config.pbtxt").read_text()
    )
    assert cfg.backend == "python" and cfg.parameters["runner"].string_value == "torch"
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
