"""Texts to padded token tensors, exactly as the served model expects them.

This is the whole logic of the tokenizer model in the Triton repository; ``model.py`` only moves
tensors in and out. It needs ``tokenizers`` and ``numpy`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, processors

from .contract import INPUT_TYPES
from .profile import ModelProfile


class RequestError(ValueError):
    """A request the model cannot serve; its message goes back to the caller as INVALID_ARG."""


@dataclass
class TokenBatch:
    input_ids: np.ndarray  # [n, bucket] in the profile's ids dtype
    attention_mask: np.ndarray  # [n, bucket], same dtype
    token_count: np.ndarray  # [n] int32, tokens fed to the model per text (after truncation)


def decode_texts(raw: np.ndarray, what: str = "text") -> list[str]:
    """Decode a BYTES tensor element by element; ``astype(str)`` would mangle non-ASCII text."""
    texts = []
    for i, item in enumerate(raw.reshape(-1)):
        if isinstance(item, str):
            texts.append(item)
            continue
        try:
            texts.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RequestError(
                f"{what}[{i}] is not valid UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
            ) from None
    return texts


def check_bytes(raw: np.ndarray, profile: ModelProfile, what: str = "text") -> None:
    """Refuse a text or a request over the profile's byte limits before any decoding or tokenizing."""
    total = 0
    for i, item in enumerate(raw.reshape(-1)):
        n = len(item.encode("utf-8")) if isinstance(item, str) else len(item)
        if n > profile.max_text_bytes:
            raise RequestError(f"{what}[{i}] is {n} bytes; the limit is {profile.max_text_bytes} bytes per text")
        total += n
    if total > profile.max_request_bytes:
        raise RequestError(
            f"the request's texts are {total} bytes; the limit is {profile.max_request_bytes} per request"
        )


def decode_option(raw: np.ndarray | None, name: str) -> str | None:
    if raw is None:
        return None
    values = decode_texts(raw, name)
    if len(values) != 1:
        raise RequestError(f"{name} takes exactly one value, got {len(values)}")
    return values[0]


def pad_batch(arrays: list[np.ndarray], value: int, left: bool) -> np.ndarray:
    """Concatenate ``[n_i, s_i]`` arrays into ``[sum n_i, max s_i]``, padding on the tokenizer's side."""
    width = max(a.shape[1] for a in arrays)
    padded = []
    for a in arrays:
        extra = width - a.shape[1]
        spec = ((0, 0), (extra, 0)) if left else ((0, 0), (0, extra))
        padded.append(np.pad(a, spec, constant_values=value) if extra else a)
    return np.concatenate(padded)


class TextEncoder:
    """Prompting, whitespace clean-up, truncation, end token and bucketed padding for one model."""

    def __init__(self, profile: ModelProfile, tokenizer_file: Path):
        self.profile = profile
        tok = Tokenizer.from_file(str(tokenizer_file))
        # User text is text: "<|endoftext|>" or "[SEP]" typed by a user must not become a control token.
        tok.encode_special_tokens = True
        tok.no_padding()
        # True when the file's tokenizer lacks the end token and we add it (kept for tests and logs).
        self.appended_end_token = profile.end_token_id is not None and not self._appends_end(tok)
        if self.appended_end_token:
            # Base tokenizers (unlike the Qwen3-Embedding release) do not append the end token;
            # appending it in the post-processor keeps truncation aware of it.
            end = processors.TemplateProcessing(
                single=f"$A {profile.end_token}", special_tokens=[(profile.end_token, profile.end_token_id)]
            )
            tok.post_processor = processors.Sequence([tok.post_processor, end]) if tok.post_processor else end
        tok.enable_truncation(max_length=profile.max_length)
        self.tokenizer = tok
        # No token spans more characters than the vocabulary's longest entry, so truncation keeps
        # nothing past max_length x that: longer texts are cut before tokenizing (twice the bound,
        # so the last kept word tokenizes as in the whole text), and a huge text costs no more
        # than a long one.
        longest = max((len(t) for t in tok.get_vocab()), default=16)
        self.char_cap = 2 * profile.max_length * longest
        self._ids_dtype = np.dtype(profile.ids_dtype)
        self._encode = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def _appends_end(self, tok: Tokenizer) -> bool:
        ids = tok.encode("a").ids
        return bool(ids) and ids[-1] == self.profile.end_token_id

    def format(self, texts: list[str], input_type: str | None = None, instruction: str | None = None) -> list[str]:
        """Validate a request's texts and options and apply the model's prompt."""
        p = self.profile
        if not texts:
            raise RequestError("no texts in the request")
        if len(texts) > p.max_texts:
            raise RequestError(
                f"too many texts: {len(texts)} > {p.max_texts} per request (split the list; the client does this)"
            )
        if input_type is not None and input_type not in INPUT_TYPES:
            raise RequestError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}")
        if instruction is not None:
            if input_type == "document":
                raise RequestError("documents never carry an instruction; send it with queries only")
            if p.instruction_template is None:
                raise RequestError(
                    f"model {p.name!r} takes no instruction (its query prompt is {p.prompt_for('query')!r});"
                    " use input_type='query'"
                )
            instruction = " ".join(instruction.split())
            if not instruction:
                raise RequestError("instruction is empty")
            input_type = "query"
            prefix = p.instruction_template.format(instruction=instruction)
        else:
            prefix = p.prompt_for(input_type or p.default_input_type)
        out = []
        for i, text in enumerate(texts):
            clean = " ".join(text.split())
            if not clean:
                raise RequestError(f"text[{i}] is empty")
            out.append(prefix + clean[: self.char_cap])
        return out

    def encode(self, texts: list[str]) -> TokenBatch:
        encodings = self._encode(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int32, count=len(encodings))
        width = self.profile.bucket(int(lengths.max()))
        ids = np.full((len(texts), width), self.profile.pad_token_id, dtype=self._ids_dtype)
        mask = np.zeros((len(texts), width), dtype=self._ids_dtype)
        left = self.profile.padding_side == "left"
        for row, (enc, n) in enumerate(zip(encodings, lengths)):
            span = slice(width - n, width) if left else slice(0, n)
            ids[row, span] = enc.ids
            mask[row, span] = 1
        return TokenBatch(ids, mask, lengths)

    def __call__(self, texts: list[str], input_type: str | None = None, instruction: str | None = None) -> TokenBatch:
        return self.encode(self.format(texts, input_type, instruction))
