"""The tokenizer model's logic, without a server: prompts, end token, truncation, padding, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tembed_fixtures.qwen3_tiny import base_tokenizer_folder
from tembed_serving.textproc import RequestError, TextEncoder, decode_option, decode_texts

EOT = 151643


@pytest.fixture(scope="module")
def qwen(profiles, fixture_dirs):
    p = profiles["qwen3-embedding-tiny"]
    return TextEncoder(p, fixture_dirs["qwen3-embedding-tiny"] / "tokenizer.json")


@pytest.fixture(scope="module")
def qwen_base(profiles):
    """The base Qwen3 tokenizer: it does not append <|endoftext|>, so the encoder must."""
    return TextEncoder(profiles["qwen3-embedding-tiny"], base_tokenizer_folder() / "tokenizer.json")


def real_rows(batch):
    return [ids[mask == 1].tolist() for ids, mask in zip(batch.input_ids, batch.attention_mask)]


def test_end_token_exactly_once_with_either_tokenizer(qwen, qwen_base):
    texts = ["hello", "北京欢迎你", "ends with the token itself <|endoftext|>", "<|endoftext|>"]
    assert not qwen.appended_end_token and qwen_base.appended_end_token
    a, b = qwen(texts), qwen_base(texts)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    for row in real_rows(a):
        assert row[-1] == EOT and row.count(EOT) == 1  # typed "<|endoftext|>" stays text


def test_left_padding_and_buckets(qwen):
    batch = qwen(["a", "a much longer text that needs more tokens than the first one"])
    assert batch.input_ids.shape[1] == 16  # bucket, not the longest length
    assert batch.attention_mask[0, -1] == 1 and batch.attention_mask[0, 0] == 0  # left padded
    assert (batch.input_ids[batch.attention_mask == 0] == qwen.profile.pad_token_id).all()
    np.testing.assert_array_equal(batch.token_count, batch.attention_mask.sum(1))


def test_truncation_keeps_the_end_token(profiles, fixture_dirs):
    p = dataclasses.replace(profiles["qwen3-embedding-tiny"], max_length=20, length_buckets=[])
    for tok in (fixture_dirs["qwen3-embedding-tiny"] / "tokenizer.json", base_tokenizer_folder() / "tokenizer.json"):
        enc = TextEncoder(p, tok)
        row = real_rows(enc(["word " * 100]))[0]
        assert len(row) == 20 and row[-1] == EOT and row.count(EOT) == 1


def test_instruction_only_on_queries(qwen):
    p = qwen.profile
    doc = qwen.format(["text"], input_type="document")[0]
    default_query = qwen.format(["text"], input_type="query")[0]
    custom = qwen.format(["text"], instruction="Find the  answer")[0]
    assert doc == "text"
    assert default_query == f"Instruct: {p.default_instruction}\nQuery:text"
    assert custom == "Instruct: Find the answer\nQuery:text"
    with pytest.raises(RequestError, match="documents never carry an instruction"):
        qwen.format(["text"], input_type="document", instruction="x")


def test_e5_prompts_and_right_padding(profiles, fixture_dirs):
    enc = TextEncoder(profiles["multilingual-e5-small"], fixture_dirs["multilingual-e5-small"] / "tokenizer.json")
    assert enc.format(["北京"], input_type="query") == ["query: 北京"]
    assert enc.format(["北京"]) == ["passage: 北京"]  # documents by default
    assert enc.format(["北京"], input_type="passage") == ["passage: 北京"]  # NIM's name for document
    batch = enc(["a", "a b c d e f g"])
    assert batch.attention_mask[0, 0] == 1 and batch.attention_mask[0, -1] == 0
    assert (batch.input_ids[batch.attention_mask == 0] == 1).all()  # XLM-R pad id, not 0
    with pytest.raises(RequestError, match="takes no instruction"):
        enc.format(["x"], instruction="retrieve")


def test_whitespace_runs_collapse(qwen):
    assert qwen.format(["  a \n\n b\t c  "]) == ["a b c"]


@pytest.mark.parametrize(
    ("texts", "kwargs", "message"),
    [
        ([], {}, "no texts"),
        (["ok", ""], {}, r"text\[1\] is empty"),
        (["ok", " \n\t "], {}, r"text\[1\] is empty"),
        (["x"] * 9, {}, "too many texts: 9 > 8"),
        (["x"], {"input_type": "passages"}, "input_type must be one of"),
        (["x"], {"instruction": "   "}, "instruction is empty"),
    ],
)
def test_request_errors(qwen, texts, kwargs, message):
    with pytest.raises(RequestError, match=message):
        qwen.format(texts, **kwargs)


def test_decode_bytes():
    raw = np.array(["北京".encode(), b"plain", "😀".encode()], dtype=object)
    assert decode_texts(raw) == ["北京", "plain", "😀"]
    with pytest.raises(RequestError, match=r"text\[1\] is not valid UTF-8: byte 0xff at offset 2"):
        decode_texts(np.array([b"ok", b"ab\xffcd"], dtype=object))
    assert decode_option(None, "instruction") is None
    with pytest.raises(RequestError, match="exactly one"):
        decode_option(np.array([b"a", b"b"], dtype=object), "input_type")


# truncate: END (default), START, NONE


@pytest.fixture(scope="module")
def short_e5(profiles, fixture_dirs):
    p = dataclasses.replace(profiles["multilingual-e5-small"], max_length=16, length_buckets=[])
    return TextEncoder(p, fixture_dirs["multilingual-e5-small"] / "tokenizer.json")


LONG = " ".join(f"w{i}" for i in range(40)) + " the final words"


def test_end_equals_the_tokenizers_own_truncation(short_e5, fixture_dirs):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(fixture_dirs["multilingual-e5-small"] / "tokenizer.json"))
    whole = len(tok.encode("query: " + LONG).ids)
    tok.enable_truncation(max_length=16)
    batch = short_e5([LONG, "short"], input_type="query")
    assert real_rows(batch)[0] == tok.encode("query: " + LONG).ids
    assert batch.token_count[0] == 16 and batch.token_count_original[0] == whole > 16
    assert batch.token_count[1] == batch.token_count_original[1]  # not cut: the same count


def test_start_keeps_prompt_specials_and_the_end(short_e5):
    row = real_rows(short_e5([LONG], input_type="query", truncate="START"))[0]
    text = short_e5.tokenizer.decode(row, skip_special_tokens=False)
    assert len(row) == 16 and text.startswith("<s> query: ") and text.endswith("the final words</s>")
    assert "w0 " not in text
    # under the limit START and END are the same tokens (any case is accepted)
    assert real_rows(short_e5(["a short text"], truncate="start")) == real_rows(short_e5(["a short text"]))


def test_qwen_end_token_once_in_every_mode(profiles, fixture_dirs):
    p = dataclasses.replace(profiles["qwen3-embedding-tiny"], max_length=40, length_buckets=[])
    for tok in (fixture_dirs["qwen3-embedding-tiny"] / "tokenizer.json", base_tokenizer_folder() / "tokenizer.json"):
        enc = TextEncoder(p, tok)
        for truncate in ("END", "START"):
            row = real_rows(enc(["word " * 100 + "last"], input_type="query", truncate=truncate))[0]
            assert len(row) == 40 and row[-1] == EOT and row.count(EOT) == 1
            if truncate == "START":
                assert enc.tokenizer.decode(row[:-1]).endswith(" word last")
                assert enc.tokenizer.decode(row).startswith("Instruct: ")


def test_none_refuses_with_the_numbers(short_e5):
    with pytest.raises(RequestError, match=r"text\[1\] is \d+ tokens; the limit is 16 tokens"):
        short_e5(["ok", LONG], truncate="NONE")
    assert short_e5(["ok"], truncate="NONE").token_count.tolist() == [5]


def test_none_counts_past_the_character_cap(short_e5):
    huge = "word " * (short_e5.char_cap // 2)
    capped = short_e5([huge]).token_count_original[0]
    with pytest.raises(RequestError, match=r"text\[0\] is (\d+) tokens") as exc:
        short_e5([huge], truncate="NONE")
    assert int(exc.value.args[0].split(" is ")[1].split()[0]) > capped  # END's count is a lower bound


def test_bad_truncate_value(short_e5):
    with pytest.raises(RequestError, match="truncate must be one of END, START, NONE, got 'MIDDLE'"):
        short_e5.format(["x"], truncate="MIDDLE")
