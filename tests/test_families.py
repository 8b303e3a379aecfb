"""The reference article's other two families, served by the real tritonserver over gRPC:

- bge-m3 (XLM-RoBERTa, CLS pooling, 8192 positions) as a tiny random-weight twin with the real XLM-R
  tokenizer, up to 8192-token texts;
- custom-architecture models (nomic-embed-text: config.json's ``auto_map``, ``trust_remote_code``)
  as a tiny custom-code twin: refused by default, exported with the flag, served through ONNX (no
  custom code at run time) and through the PyTorch runner (which loads the code).

Parity is against sentence-transformers loading the same folders. The fixtures are built into a
temporary folder (seconds: tiny models).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from .conftest import DOCS, TEXTS

pytestmark = pytest.mark.slow
BGE, NOMIC = "bge-m3-tiny", "nomic-embed-tiny"
NOMIC_TORCH = "nomic-embed-tiny-torch"
QUERY, DOCUMENT = "search_query: ", "search_document: "
MAX_TEXTS = 4


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    from tembed_fixtures.build import build_fixtures

    return build_fixtures(tmp_path_factory.mktemp("families"), only=[BGE, NOMIC])


@pytest.fixture(scope="module")
def st(family_dirs):
    from sentence_transformers import SentenceTransformer

    return {
        BGE: SentenceTransformer(str(family_dirs[BGE]), device="cpu"),
        NOMIC: SentenceTransformer(str(family_dirs[NOMIC]), device="cpu", trust_remote_code=True),
    }


def export_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tembed", "export", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def family_server(family_dirs, tmp_path_factory):
    """bge-m3-tiny and nomic-embed-tiny on ONNX Runtime; nomic-embed-tiny on the PyTorch runner."""
    from tembed.pipeline import ExportOptions, export_model
    from tembed.repository import ServingOptions
    from tembed_serving.supervisor import TritonServer

    repo = tmp_path_factory.mktemp("families-repo")
    result = export_model(family_dirs[BGE], repo, ExportOptions(max_texts=MAX_TEXTS))
    assert result.max_abs_err < 1e-4
    done = export_cli(
        str(family_dirs[NOMIC]), "--repo", str(repo), "--max-texts", str(MAX_TEXTS), "--trust-remote-code"
    )
    assert done.returncode == 0, done.stderr
    assert "validated on 4 fresh shapes" in done.stderr
    torch_cpu = ServingOptions(backend="pytorch", torch_device="cpu", torch_dtype="float32")
    opts = ExportOptions(name=NOMIC_TORCH, max_texts=MAX_TEXTS, trust_remote_code=True, serving=torch_cpu)
    assert export_model(family_dirs[NOMIC], repo, opts).layout.hf_dir.is_dir()
    log = tmp_path_factory.mktemp("families-triton") / "tritonserver.log"
    with TritonServer.on_free_ports(repo, log_file=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def clients(family_server):
    from tembed_client import EmbeddingClient

    made = {n: EmbeddingClient(family_server.grpc_url, n) for n in (BGE, NOMIC, NOMIC_TORCH)}
    yield made
    for c in made.values():
        c.close()


def cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    assert got.shape == ref.shape and got.dtype == np.float32
    return (got * ref).sum(-1)


# --- bge-m3 -----------------------------------------------------------------------------------------


def test_bge_m3_profile_from_its_files(family_dirs):
    from tembed.hf_folder import read_profile

    p = read_profile(family_dirs[BGE])
    assert (p.model_type, p.pooling, p.padding_side, p.max_length) == ("xlm-roberta", "cls", "right", 8192)
    assert p.prompts == {} and p.instruction_template is None and not p.trust_remote_code
    # XLM-R's pad id 1 (positions count from it) and its 250002 ids, which int64 (and int32) carry.
    assert (p.pad_token_id, p.vocab_size, p.ids_dtype, p.dimension) == (1, 250002, "int64", 32)
    config = json.loads((family_dirs[BGE] / "config.json").read_text())
    assert (config["architectures"], config["max_position_embeddings"]) == (["XLMRobertaModel"], 8194)


@pytest.mark.parametrize("input_type", ["query", "document"])
def test_bge_m3_parity_with_sentence_transformers(clients, st, input_type):
    got = clients[BGE].embed(TEXTS, input_type=input_type)
    ref = st[BGE].encode(TEXTS, normalize_embeddings=True)  # bge-m3 has no prompts
    assert cosines(got, ref).min() >= 0.9999


def long_text(tokenizer, tokens: int, sentences: list[str]) -> str:
    """``sentences``, numbered (no window repeats another), to at least ``tokens`` tokens."""
    parts: list[str] = []
    while len(tokenizer(" ".join(parts))["input_ids"]) < tokens:
        parts.extend(f"({i}) {sentences[i % len(sentences)]}" for i in range(len(parts), len(parts) + 50))
    return " ".join(parts)


def test_bge_m3_embeds_8192_token_texts(clients, st):
    """Positions up to XLM-R's last slot (8193) are used: a 5000-token text, and one cut to 8192."""
    tok = st[BGE].tokenizer
    head = long_text(tok, 4100, TEXTS)
    texts = [long_text(tok, 5000, TEXTS), head + " " + long_text(tok, 5000, DOCS)]
    ref = st[BGE].encode(texts, normalize_embeddings=True, batch_size=1)
    # One per request: each pads to the 8192 bucket.
    whole, cut = (clients[BGE].encode([text]) for text in texts)
    assert cosines(whole.embeddings, ref[:1])[0] >= 0.9999 and cosines(cut.embeddings, ref[1:])[0] >= 0.9999
    assert 5000 <= whole.token_counts[0] < 8192 and whole.original_token_counts[0] == whole.token_counts[0]
    assert cut.token_counts.tolist() == [8192] and cut.original_token_counts[0] > 8192
    # What lies past position 4100 changes the vector: the far positions are read, not dropped.
    assert cosines(clients[BGE].embed([head]), ref[1:2])[0] < 0.999


# --- custom code (nomic-embed-text) ------------------------------------------------------------------


def test_custom_code_refused_by_default_api(family_dirs, tmp_path):
    from tembed.pipeline import ExportOptions, export_model
    from tembed_serving.profile import ProfileError

    with pytest.raises(ProfileError, match=r"--trust-remote-code") as err:
        export_model(family_dirs[NOMIC], tmp_path / "repo", ExportOptions())
    assert "modeling_tinynomic.TinyNomicModel" in str(err.value) and "runs that code" in str(err.value)
    assert not (tmp_path / "repo").exists()  # refused before anything is written


def test_custom_code_refused_by_default_cli(family_dirs, tmp_path):
    done = export_cli(str(family_dirs[NOMIC]), "--repo", str(tmp_path / "repo"))
    assert done.returncode != 0
    assert "--trust-remote-code" in done.stderr and "auto_map" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "repo").exists()


def test_the_flag_is_what_runs_the_code(family_dirs, tmp_path):
    """A copy whose code fails on import: refused without the flag (the code never runs), and the
    code's own error with it (the flag is what makes the export run it)."""
    from tembed.pipeline import ExportOptions, export_model
    from tembed_serving.profile import ProfileError

    folder = tmp_path / "nomic-embed-tiny-broken"
    shutil.copytree(family_dirs[NOMIC], folder)
    modeling = folder / "modeling_tinynomic.py"
    modeling.write_text('raise RuntimeError("custom code ran")\n' + modeling.read_text())
    with pytest.raises(ProfileError, match="--trust-remote-code"):
        export_model(folder, tmp_path / "repo", ExportOptions())
    with pytest.raises(RuntimeError, match="custom code ran"):
        export_model(folder, tmp_path / "repo", ExportOptions(trust_remote_code=True))


def test_nomic_profile_reads_prompts_and_pooling(family_dirs):
    from tembed.hf_folder import read_profile

    p = read_profile(family_dirs[NOMIC], trust_remote_code=True)
    assert p.prompts == {"query": QUERY, "document": DOCUMENT}  # from "query" and "passage"
    assert (p.pooling, p.padding_side, p.max_length, p.dimension) == ("mean", "right", 8192, 64)
    assert p.trust_remote_code


def test_onnx_serving_needs_no_custom_code(family_server):
    repo = family_server.model_repository
    onnx_models = [repo / n for n in (NOMIC, f"{NOMIC}-tokenizer", f"{NOMIC}-encoder")]
    assert all(m.is_dir() for m in onnx_models)
    assert not [p for m in onnx_models for p in m.rglob("*tinynomic*")]
    # The PyTorch runner builds the model from the folder's code, copied next to its weights.
    assert list((repo / f"{NOMIC_TORCH}-encoder").rglob("modeling_tinynomic.py"))


@pytest.mark.parametrize("name", [NOMIC, NOMIC_TORCH])
def test_nomic_query_and_document_prompts(clients, st, name):
    queries = clients[name].embed(TEXTS, input_type="query")
    documents = clients[name].embed(TEXTS, input_type="document")
    ref_q = st[NOMIC].encode(TEXTS, prompt_name="query", normalize_embeddings=True)
    ref_d = st[NOMIC].encode(TEXTS, prompt_name="passage", normalize_embeddings=True)
    assert cosines(queries, ref_q).min() >= 0.9999
    assert cosines(documents, ref_d).min() >= 0.9999
    # The prompts are applied: a query is not its document, and both differ from the bare text.
    bare = st[NOMIC].encode(TEXTS, prompt="", normalize_embeddings=True)
    assert cosines(queries, documents).max() < 0.9999 and cosines(documents, bare).max() < 0.9999
