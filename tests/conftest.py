"""Shared fixtures: offline model folders, one exported model repository, one real tritonserver.

Everything runs on CPU against the tritonserver shipped in nvidia-pytriton. The model folders are
built once into ``<repo>/fixtures`` (``make fixtures``) and reused; the repository is exported per
session into a temporary folder, so a test run always serves what the current code exports.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("TEMBED_FIXTURES", ROOT / "fixtures"))
SERVED = ("multilingual-e5-small", "all-minilm-l6-v2", "qwen3-embedding-tiny")
# Rerankers, served by their own server next to one embedding model (rerank_server).
QWEN, TWIN, BERT = "qwen3-reranker-tiny", "qwen3-reranker-tiny-seq-cls", "bert-cross-encoder-tiny"
RERANKERS = (QWEN, TWIN, BERT)
EMBEDDER = "multilingual-e5-small"
MAX_LENGTH = 512  # small on purpose: the truncation path is reached with short texts on 2 CPU cores
# One question and its candidate passages, in the scripts rerankers meet.
QUERY = "什么是向量检索？"
DOCS = [
    "向量检索把文本编码成向量，再按相似度找最近的段落。",
    "今天天气很好，我们去公园散步吧。",
    "Vector search embeds passages once and finds nearest neighbours at query time.",
    "北京是中华人民共和国的首都。",
    "A reranker reads the query and the passage together and scores how well they match.",
    "短",
]

# Texts in the scripts our users send: Chinese, English, mixed, emoji, one long-ish paragraph.
TEXTS = [
    "北京是中华人民共和国的首都。",
    "如何在家里做一杯好喝的咖啡？",
    "The quick brown fox jumps over the lazy dog.",
    "Triton 推理服务器 serves embeddings 很快",
    "今天天气真好 ☀️🌈 let's go hiking 🥾",
    "深度学习模型在自然语言处理任务中取得了显著进展，尤其是在文本检索、语义搜索和问答系统等方面。"
    " Large language models changed retrieval-augmented generation as well.",
]


def copy_served(model_repository: Path, dest: Path, model: str) -> Path:
    """``model``'s Triton models from ``model_repository`` into ``dest`` (only those it has: a Python
    encoder has no postprocess model)."""
    from tembed_serving.contract import model_names

    for name in model_names(model).values():
        if (model_repository / name).is_dir():
            shutil.copytree(model_repository / name, dest / name)
    return dest


@pytest.fixture(scope="session")
def fixture_dirs() -> dict[str, Path]:
    from tembed_fixtures.build import build_fixtures

    return build_fixtures(FIXTURES)


@pytest.fixture(scope="session")
def profiles(fixture_dirs):
    from tembed.hf_folder import read_profile

    # max_texts 8 keeps the "too many texts" and client chunking paths cheap to reach.
    return {name: read_profile(fixture_dirs[name], max_texts=8) for name in SERVED}


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, fixture_dirs, profiles) -> Path:
    from tembed.calibration import calibrate_repository
    from tembed.onnx_export import export_onnx, validate_onnx
    from tembed.repository import ServingOptions, write_repository
    from tembed_serving.contract import Layout
    from tembed_serving.runners.torch_model import load_embedding_model

    repo = tmp_path_factory.mktemp("model_repository")
    for name in SERVED:
        folder, profile = fixture_dirs[name], profiles[name]
        written = write_repository(
            profile, repo, tokenizer_file=folder / "tokenizer.json", encoder_file=None, opts=ServingOptions()
        )
        model = load_embedding_model(folder, profile)
        validate_onnx(model, profile, export_onnx(model, profile, written["encoder"] / "1" / "model.onnx"))
        calibrate_repository(profile, Layout(repo, name))  # embedding_type int8/uint8, as `tembed export` does
    return repo


@pytest.fixture(scope="session")
def server(model_repository, tmp_path_factory):
    from tembed_serving.supervisor import TritonServer

    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer.on_free_ports(model_repository, log_file=log) as srv:
        yield srv


@pytest.fixture(scope="session")
def clients(server):
    """One gRPC client per served model."""
    from tembed_client import EmbeddingClient

    made = {name: EmbeddingClient(server.grpc_url, name) for name in SERVED}
    yield made
    for c in made.values():
        c.close()


@pytest.fixture(scope="session")
def references(fixture_dirs):
    """sentence-transformers on the same folders: an implementation of pooling, prompts and
    tokenization that shares no code with ours."""
    from sentence_transformers import SentenceTransformer

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = SentenceTransformer(str(fixture_dirs[name]), device="cpu")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def rerank_dirs():
    from tembed_fixtures.build import build_fixtures

    return build_fixtures(FIXTURES, only=list(RERANKERS))


@pytest.fixture(scope="session")
def rerank_server(rerank_dirs, model_repository, tmp_path_factory):
    """One server: three rerankers and an embedding model."""
    from tembed.pipeline import ExportOptions, export_model
    from tembed_serving.supervisor import TritonServer

    repo = tmp_path_factory.mktemp("rerank-repo")
    for name in RERANKERS:
        result = export_model(rerank_dirs[name], repo, ExportOptions(max_length=MAX_LENGTH, max_texts=16))
        assert result.profile.task == "rerank" and result.max_abs_err < 1e-4
    copy_served(model_repository, repo, EMBEDDER)
    log = tmp_path_factory.mktemp("rerank-triton") / "tritonserver.log"
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        yield srv


@pytest.fixture
def replicas(model_repository, tmp_path):
    """Two unsupervised tritonservers (a killed one stays down) serving e5 (EMBEDDER), each on its own copy."""
    from tembed_serving.supervisor import TritonServer

    servers = []
    try:
        for i in range(2):
            repo = tmp_path / f"repo{i}"
            copy_served(model_repository, repo, EMBEDDER)
            log = tmp_path / f"tritonserver{i}.log"
            servers.append(TritonServer.on_free_ports(repo, supervise=False, log_file=log).start())
        yield servers
    finally:
        for srv in servers:
            srv.stop()
