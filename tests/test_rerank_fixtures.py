"""The offline reranker fixtures: tiny random-weight models with real tokenizers, checked against the
model cards' own scoring (tests/rerank_reference.py) so the serving tests can trust them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .rerank_reference import cross_encoder_scores, qwen3_reranker_scores, qwen3_seq_cls_scores

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["qwen3-reranker-tiny", "qwen3-reranker-tiny-seq-cls", "bert-cross-encoder-tiny"]
END_TOKEN_ID = 151643

# (query, documents): Chinese, English and mixed, short to long-ish, so left padding is exercised.
CASES = [
    (
        "中国的首都是哪里？",
        [
            "北京是中华人民共和国的首都。",
            "The capital of China is Beijing.",
            "如何在家里做一杯好喝的咖啡？",
            "深度学习模型在自然语言处理任务中取得了显著进展，尤其是在文本检索、语义搜索和问答系统等方面。"
            " Large language models changed retrieval-augmented generation as well.",
            "x",
            "今天天气真好 ☀️🌈 let's go hiking 🥾",
        ],
    ),
    (
        "What is gravity?",
        [
            "Gravity is a force by which a planet or other body draws objects toward its center.",
            "The quick brown fox jumps over the lazy dog.",
            "万有引力是物体之间相互吸引的力。",
            "Triton 推理服务器 serves embeddings 很快",
            "no",
            "yes",
        ],
    ),
]


@pytest.fixture(scope="module")
def dirs(monkeypatch_module) -> dict[str, Path]:
    from tembed_fixtures.build import build_fixtures

    return build_fixtures(ROOT / "fixtures", only=NAMES)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield mp


@pytest.mark.parametrize("query,documents", CASES, ids=["zh", "en"])
def test_seq_cls_twin_scores_like_the_causal_model(dirs, query, documents):
    causal = qwen3_reranker_scores(dirs["qwen3-reranker-tiny"], query, documents)
    seq_cls = qwen3_seq_cls_scores(dirs["qwen3-reranker-tiny-seq-cls"], query, documents)
    assert causal.shape == seq_cls.shape == (len(documents),)
    assert np.abs(causal - seq_cls).max() <= 1e-5, (causal, seq_cls)


def test_causal_scores_tell_pairs_apart(dirs):
    scores = np.concatenate([qwen3_reranker_scores(dirs["qwen3-reranker-tiny"], q, docs) for q, docs in CASES])
    assert np.all((scores > 0) & (scores < 1)), scores
    assert scores.max() - scores.min() > 0.05, scores


def test_instruction_changes_the_score(dirs):
    query, documents = CASES[1]
    default = qwen3_reranker_scores(dirs["qwen3-reranker-tiny"], query, documents)
    other = qwen3_reranker_scores(dirs["qwen3-reranker-tiny"], query, documents, instruction="Find physics answers")
    assert np.abs(default - other).max() > 1e-4


def test_bert_cross_encoder_loads_and_scores(dirs):
    folder = dirs["bert-cross-encoder-tiny"]
    scores = np.concatenate([cross_encoder_scores(folder, q, docs) for q, docs in CASES])
    assert scores.dtype == np.float32
    assert np.all((scores > 0) & (scores < 1)), scores
    assert scores.max() - scores.min() > 0.05, scores
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 1
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert st_config["model_type"] == "CrossEncoder"
    assert st_config["activation_fn"] == "torch.nn.modules.activation.Sigmoid"
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (folder / name).is_file(), name


@pytest.mark.parametrize("name", ["qwen3-reranker-tiny", "qwen3-reranker-tiny-seq-cls"])
def test_qwen3_layout_and_tokenizer(dirs, name):
    from tokenizers import Tokenizer

    folder = dirs[name]
    assert not (folder / "modules.json").exists()
    assert not (folder / "1_Pooling").exists()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == [
        "Qwen3ForCausalLM" if name == "qwen3-reranker-tiny" else "Qwen3ForSequenceClassification"
    ]
    assert config["pad_token_id"] == END_TOKEN_ID and config["vocab_size"] == 151669
    tok_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_config["padding_side"] == "left" and tok_config.get("chat_template")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.token_to_id("<|endoftext|>") == END_TOKEN_ID
    # The base tokenizer: no <|endoftext|> appended (unlike the Qwen3-Embedding release).
    assert tok.encode("a").ids[-1] != END_TOKEN_ID
    assert END_TOKEN_ID not in tok.encode("query", "document").ids


@pytest.mark.parametrize("name", ["qwen3-reranker-tiny", "qwen3-reranker-tiny-seq-cls"])
def test_yes_and_no_are_single_tokens(dirs, name):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(dirs[name] / "tokenizer.json"))
    for word in ("yes", "no"):
        token_id = tok.token_to_id(word)
        assert token_id is not None, word
        assert tok.encode(word, add_special_tokens=False).ids == [token_id]


def test_seq_cls_classifier_is_yes_minus_no(dirs):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(dirs["qwen3-reranker-tiny"] / "tokenizer.json"))
    lm_head = load_file(str(dirs["qwen3-reranker-tiny"] / "model.safetensors"))["lm_head.weight"]
    score = load_file(str(dirs["qwen3-reranker-tiny-seq-cls"] / "model.safetensors"))["score.weight"]
    assert score.shape == (1, 64)
    np.testing.assert_array_equal(score[0], lm_head[tok.token_to_id("yes")] - lm_head[tok.token_to_id("no")])


def test_builders_are_idempotent(dirs):
    from tembed_fixtures.build import FIXTURES, _builders

    assert set(NAMES) <= set(FIXTURES)  # `make fixtures` builds them
    builders = _builders()
    for name in NAMES:
        weights = dirs[name] / "model.safetensors"
        before = weights.stat().st_mtime_ns
        assert builders[name](dirs[name]) == dirs[name]
        assert weights.stat().st_mtime_ns == before
