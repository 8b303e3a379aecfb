"""(query, document) pairs to padded token tensors, exactly as a served reranker expects them.

The whole logic of the rerank tokenizer model; ``triton/pair_tokenizer.py`` only moves tensors.
Two formats, read from the profile:

- ``prompt`` (Qwen3-Reranker): ``prefix + template.format(instruction, query, document) + suffix`` as
  one sequence. Truncation cuts the end of the document only: the prefix, the instruction, the
  query and the suffix (which ends where the model answers "yes" or "no") always stay.
- ``pair`` (BERT / XLM-R cross-encoders): the tokenizer's own pair template
  (``[CLS] query [SEP] document [SEP]``), truncating only the document.

User text is text: a typed ``<|im_end|>`` or ``[SEP]`` never becomes a control token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .contract import (
    CONTEXT_LENGTH_EXCEEDED,
    DOCUMENTS,
    INSTRUCTION,
    LONG_TEXT,
    LONG_TEXT_CHUNK,
    LONG_TEXT_DEFAULT,
    QUERY,
    UNSUPPORTED,
)
from .errors import RequestError
from .profile import ModelProfile
from .textproc import TokenBatch, check_option, pad_rows, window_starts


class PairEncoder:
    def __init__(self, profile: ModelProfile, tokenizer_file: Path):
        self.profile = profile
        tok = Tokenizer.from_file(str(tokenizer_file))
        tok.no_padding()
        tok.no_truncation()
        # The prompt's own control tokens (<|im_start|>, ...) are parsed as such, once, here.
        self.prefix_ids = tok.encode(profile.rerank_prefix, add_special_tokens=False).ids
        self.suffix_ids = tok.encode(profile.rerank_suffix, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        if profile.pair_format == "pair":
            # Pair templates add their specials; only the second sequence (the document) is cut.
            tok.enable_truncation(max_length=profile.max_length, strategy="only_second")
        self.tokenizer = tok
        # A document's own tokens and their character offsets (long_text chunk cuts windows from them).
        plain = Tokenizer.from_file(str(tokenizer_file))
        plain.no_padding()
        plain.no_truncation()
        plain.encode_special_tokens = True
        self.plain = plain
        self.budget = profile.max_length - len(self.prefix_ids) - len(self.suffix_ids)

    def check(self, query: str, documents: list[str], instruction: str | None) -> str | None:
        """Validate a request; returns the instruction to use (the model's default when None)."""
        p = self.profile
        if not query.strip():
            raise RequestError("query is empty", param=QUERY)
        if not documents:
            raise RequestError("no documents in the request", param=DOCUMENTS)
        if len(documents) > p.max_texts:
            raise RequestError(
                f"too many documents: {len(documents)} > {p.max_texts} per request (split the list; the client does this)",
                param=DOCUMENTS,
            )
        for i, doc in enumerate(documents):
            if not doc.strip():
                raise RequestError(f"documents[{i}] is empty", param=DOCUMENTS)
        if instruction is not None:
            if not p.takes_instruction:
                raise RequestError(f"model {p.name!r} takes no instruction", UNSUPPORTED, INSTRUCTION)
            instruction = " ".join(instruction.split())
            if not instruction:
                raise RequestError("instruction is empty", param=INSTRUCTION)
        return instruction if instruction is not None else p.default_instruction

    def _prompt_ids(self, query: str, document: str, instruction: str | None) -> list[int]:
        template = self.profile.pair_template or ""
        text = template.format(instruction=instruction or "", query=query, document=document)
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) > self.budget:
            head = template.format(instruction=instruction or "", query=query, document="")
            need = len(self.tokenizer.encode(head, add_special_tokens=False).ids)
            if need >= self.budget:
                raise RequestError(
                    f"the query and instruction take {need} tokens; with the prompt they leave no room for a"
                    f" document within the model's {self.profile.max_length} tokens",
                    CONTEXT_LENGTH_EXCEEDED,
                    QUERY,
                )
            ids = ids[: self.budget]  # the document's end; the same cut the model card's code makes
        return self.prefix_ids + ids + self.suffix_ids

    def _pair_ids(self, query: str, document: str) -> list[int]:
        try:
            return self.tokenizer.encode(query, document).ids
        except Exception as exc:  # tokenizers: the first sequence alone is over the limit
            raise RequestError(
                f"the query does not fit the model's {self.profile.max_length} tokens with any document ({exc})",
                CONTEXT_LENGTH_EXCEEDED,
                QUERY,
            ) from None

    def _row(self, query: str, document: str, instruction: str | None) -> list[int]:
        if self.profile.pair_format == "prompt":
            return self._prompt_ids(query, document, instruction)
        return self._pair_ids(query, document)

    def window_texts(self, query: str, document: str, instruction: str | None = None) -> list[str]:
        """The document as long_text chunk scores it: itself when its pair fits max_length, else the text
        of each window of its tokens (each a pair of its own with the query, so a window's text scored
        alone as a document gives that window's score)."""
        p = self.profile
        instruction = p.default_instruction if instruction is None else instruction  # as check() resolves it
        if len(self._row(query, document, instruction)) <= p.max_length and not self._cut(query, document, instruction):
            return [document]
        room = p.max_length - len(self._row(query, "", instruction))
        if room < 1:
            raise RequestError(
                f"the query leaves no room for a document within the model's {p.max_length} tokens",
                CONTEXT_LENGTH_EXCEEDED,
                QUERY,
            )
        enc = self.plain.encode(document, add_special_tokens=False)
        offsets = enc.offsets
        starts = window_starts(len(offsets), room, p.chunk_overlap) if len(offsets) > room else [0]
        texts = []
        for start in starts:
            last = min(start + room, len(offsets)) - 1
            texts.append(document[offsets[start][0] : offsets[last][1]])
        return texts

    def _cut(self, query: str, document: str, instruction: str | None) -> bool:
        """Whether the pair as scored holds less than the whole document (truncated to max_length)."""
        if self.profile.pair_format == "prompt":
            template = self.profile.pair_template or ""
            text = template.format(instruction=instruction or "", query=query, document=document)
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids) > self.budget
        return bool(self.tokenizer.encode(query, document).overflowing)

    def encode(
        self, query: str, documents: list[str], instruction: str | None = None, long_text: str | None = None
    ) -> TokenBatch:
        instruction = self.check(query, documents, instruction)
        long_text = check_option(LONG_TEXT, long_text) or LONG_TEXT_DEFAULT
        if long_text != LONG_TEXT_CHUNK:
            return pad_rows([self._row(query, d, instruction) for d in documents], self.profile)
        p = self.profile
        rows: list[list[int]] = []
        owner: list[int] = []
        for i, document in enumerate(documents):
            windows = self.window_texts(query, document, instruction)
            if len(windows) > p.max_windows:
                raise RequestError(
                    f"documents[{i}] needs {len(windows)} windows of {p.max_length} tokens; the limit is"
                    f" {p.max_windows} per document (max_windows)",
                    CONTEXT_LENGTH_EXCEEDED,
                    DOCUMENTS,
                )
            rows += [self._row(query, w, instruction) for w in windows]
            owner += [i] * len(windows)
            if len(rows) > p.max_rows:
                raise RequestError(
                    f"the documents need {len(rows)}+ windows of {p.max_length} tokens; the limit is {p.max_rows}"
                    " per request (max_rows): send fewer documents per request (the client does this)",
                    CONTEXT_LENGTH_EXCEEDED,
                    DOCUMENTS,
                )
        batch = pad_rows(rows, p)
        batch.row_text = np.asarray(owner, dtype=np.int32)
        return batch
