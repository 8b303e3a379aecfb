"""Model profiles come from the model's own files; flags override; contradictions fail loudly."""

from __future__ import annotations

import json
import shutil

import pytest

from tembed.hf_folder import read_profile
from tembed_serving.profile import ModelProfile, ProfileError, default_buckets


def test_fixture_profiles(profiles):
    e5, minilm, qwen = (profiles[n] for n in ("multilingual-e5-small", "all-minilm-l6-v2", "qwen3-embedding-tiny"))
    assert (e5.pooling, e5.padding_side, e5.max_length, e5.dimension) == ("mean", "right", 512, 384)
    assert e5.prompts == {"query": "query: ", "document": "passage: "}
    assert e5.pad_token_id == 1 and e5.instruction_template is None
    assert (minilm.pooling, minilm.max_length, minilm.prompts) == ("mean", 256, {})
    assert (qwen.pooling, qwen.padding_side, qwen.end_token, qwen.end_token_id) == (
        "last",
        "left",
        "<|endoftext|>",
        151643,
    )
    assert qwen.instruction_template == "Instruct: {instruction}\nQuery:"
    assert qwen.default_instruction.startswith("Given a web search query")
    assert qwen.prompts["document"] == ""


def test_roundtrip(profiles, tmp_path):
    p = profiles["qwen3-embedding-tiny"]
    p.save(tmp_path)
    assert ModelProfile.load(tmp_path) == p


@pytest.fixture
def minilm_copy(fixture_dirs, tmp_path):
    dst = tmp_path / "model"
    src = fixture_dirs["all-minilm-l6-v2"]
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, dst / f.name)
    shutil.copytree(src / "1_Pooling", dst / "1_Pooling")
    return dst


def test_cls_pooling_and_prompts_from_files(minilm_copy):
    """A bge-style CLS model and nomic-style prompts are read from the files, not the name."""
    pool = minilm_copy / "1_Pooling" / "config.json"
    cfg = json.loads(pool.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pool.write_text(json.dumps(cfg))
    (minilm_copy / "config_sentence_transformers.json").write_text(
        json.dumps(
            {"prompts": {"query": "search_query: ", "document": "search_document: "}, "matryoshka_dims": [64, 128]}
        )
    )
    p = read_profile(minilm_copy)
    assert p.pooling == "cls" and p.prompts["query"] == "search_query: " and p.min_dimension == 64
    assert p.instruction_template is None


def test_no_sentence_transformers_files_falls_back_to_architecture(minilm_copy):
    (minilm_copy / "modules.json").unlink()
    assert read_profile(minilm_copy).pooling == "mean"
    cfg = json.loads((minilm_copy / "config.json").read_text())
    cfg["model_type"] = "qwen3"
    cfg["eos_token_id"] = 100
    (minilm_copy / "config.json").write_text(json.dumps(cfg))
    p = read_profile(minilm_copy)
    # The tokenizer's own template ("[CLS] $A [SEP]") names the end token before config.json does.
    assert (p.pooling, p.padding_side, p.end_token, p.end_token_id) == ("last", "left", "[SEP]", 102)
    tok = json.loads((minilm_copy / "tokenizer.json").read_text())
    tok["post_processor"] = None
    (minilm_copy / "tokenizer.json").write_text(json.dumps(tok))
    assert read_profile(minilm_copy).end_token_id == 100


def test_overrides_win(minilm_copy):
    p = read_profile(minilm_copy, name="mini", pooling="cls", max_length=128, min_dimension=64, max_texts=4)
    assert (p.name, p.pooling, p.max_length, p.min_dimension, p.max_texts) == ("mini", "cls", 128, 64, 4)
    assert p.length_buckets == [16, 32, 64, 128]


def test_contradictions_fail(minilm_copy, tmp_path):
    pool = minilm_copy / "1_Pooling" / "config.json"
    cfg = json.loads(pool.read_text())
    cfg["pooling_mode_cls_token"] = True
    pool.write_text(json.dumps(cfg))
    with pytest.raises(ProfileError, match="exactly one"):
        read_profile(minilm_copy)
    with pytest.raises(ProfileError, match="no config.json"):
        read_profile(tmp_path / "missing")
    with pytest.raises(ProfileError, match="min_dimension"):
        read_profile(minilm_copy, pooling="mean", min_dimension=1000)


def test_buckets():
    assert default_buckets(512) == [16, 32, 64, 128, 256, 512]
    assert default_buckets(300) == [16, 32, 64, 128, 256, 300]
