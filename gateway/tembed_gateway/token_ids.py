"""When token ids in a request are trusted: the one rule, for /v1/embeddings, /tokenize and every route
that takes ids.

The ensemble takes text, so ids are decoded with the served model's own tokenizer and the text is
sent. That is sound only for ids this tokenizer made: ids of another vocabulary (tiktoken's cl100k, which
langchain-openai's ``OpenAIEmbeddings`` sends unless ``check_embedding_ctx_length=False``) decode to some
other text and would be embedded as that text, with a 200. So:

1. every id must lie in the vocabulary;
2. the ids must survive decode -> re-encode: ``tokenizer.encode(tokenizer.decode(ids)).ids == ids``,
   special tokens included (as ``/tokenize`` answers them, and as a Hugging Face tokenizer's ``encode``
   gives them by default). Ids of another tokenizer fail this (they lack the model's special tokens,
   and their decoded text re-encodes differently); they get a 400 that says so;
3. ids that carry the prompt the request would add (``/tokenize``'s ids do: prompt and special tokens
   included) are embedded as given: the prompt is not added a second time. Other ids are the text's
   tokens and get the model's prompt, as the same text would.

Pure functions over a ``tokenizers.Tokenizer`` and the model's profile; the gateway calls
:func:`texts_for_ids`.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from tembed_client.contract import INPUT_TYPE, INSTRUCTION
from tembed_serving.profile import ModelProfile

from .errors import bad_request

# What a caller whose ids are refused can do instead (LangChain's OpenAIEmbeddings is the usual sender).
REMEDY = (
    "send text instead (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)), or ids this"
    " model's tokenizer made, such as /tokenize returns"
)


def request_prefix(profile: ModelProfile | None, options: dict) -> str:
    """The prompt the server puts before each text of a request with these options (textproc.prepare)."""
    if profile is None:
        return ""
    instruction = options.get(INSTRUCTION)
    if instruction is not None and profile.instruction_template is not None:
        return profile.instruction_template.format(instruction=" ".join(str(instruction).split()))
    return profile.prompt_for(options.get(INPUT_TYPE) or profile.default_input_type)


def check_ids(tok: Tokenizer, ids: list[list[int]], model: str) -> list[str]:
    """Rules 1 and 2: the decoded texts of ``ids``, or a 400 naming the first sequence that fails."""
    vocab = tok.get_vocab_size(with_added_tokens=True)
    for i, seq in enumerate(ids):
        bad = next((t for t in seq if not 0 <= t < vocab), None)
        if bad is not None:
            raise bad_request(
                f"input[{i}] has token id {bad}, outside this model's vocabulary [0, {vocab}) ({model!r}): these"
                f" are not its token ids; {REMEDY}",
                "input",
            )
    texts = tok.decode_batch(ids, skip_special_tokens=True)
    again = tok.encode_batch(texts)
    for i, (seq, text, enc) in enumerate(zip(ids, texts, again)):
        if not text.strip():
            raise bad_request(f"input[{i}] decodes to an empty text", "input")
        if enc.ids != seq:
            at = next((k for k, (a, b) in enumerate(zip(seq, enc.ids)) if a != b), min(len(seq), len(enc.ids)))
            raise bad_request(
                f"input[{i}] is not a sequence of token ids made by the tokenizer of {model!r}: decoded and"
                f" re-encoded they give other ids (from position {at}; special tokens included), so they"
                f" would embed another text than the one they came from (ids of another vocabulary, e.g."
                f" tiktoken's, are refused); {REMEDY}",
                "input",
            )
    return texts


def strip_prompt(texts: list[str], prefix: str) -> list[str]:
    """Rule 3: a text that starts with the request's prompt carries it already; the server adds it
    back, so the ids are embedded as given."""
    head = prefix.rstrip()
    if not head:
        return texts
    return [t[len(head) :].strip() if t.startswith(head) and t[len(head) :].strip() else t for t in texts]


def texts_for_ids(tok: Tokenizer, profile: ModelProfile | None, ids: list[list[int]], options: dict, model: str):
    """The texts to send for token-id input (rules 1-3), or a 400."""
    texts = check_ids(tok, ids, model)
    return strip_prompt(texts, request_prefix(profile, options))
