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

from tokenizers import Tokenizer

from .contract import CONTEXT_LENGTH_EXCEEDED, DOCUMENTS, INSTRUCTION, QUERY, UNSUPPORTED
from .errors import RequestError
from .profile import ModelProfile
from .textproc import TokenBatch, pad_rows


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

    def encode(self, query: str, documents: list[str], instruction: str | None = None) -> TokenBatch:
        instruction = self.check(query, documents, instruction)
        if self.profile.pair_format == "prompt":
            rows = [self._prompt_ids(query, d, instruction) for d in documents]
        else:
            rows = [self._pair_ids(query, d) for d in documents]
        return pad_rows(rows, self.profile)
