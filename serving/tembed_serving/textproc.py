"""Texts to padded token tensors, exactly as the served model expects them.

This is the whole logic of the tokenizer model in the Triton repository; ``model.py`` only moves
tensors in and out. It needs ``tokenizers`` and ``numpy`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, processors

from .contract import (
    CONTEXT_LENGTH_EXCEEDED,
    INPUT_TYPE,
    INSTRUCTION,
    LONG_TEXT,
    LONG_TEXT_CHUNK,
    LONG_TEXT_DEFAULT,
    OPTIONS,
    TEXT,
    TOO_LARGE,
    TRUNCATE,
    TRUNCATE_DEFAULT,
    TRUNCATE_END,
    TRUNCATE_NONE,
    TRUNCATE_START,
    UNSUPPORTED,
    input_options,
)
from .errors import RequestError
from .profile import ModelProfile


@dataclass
class TokenBatch:
    input_ids: np.ndarray  # [n, bucket] in the profile's ids dtype
    attention_mask: np.ndarray  # [n, bucket], same dtype
    token_count: np.ndarray  # [n] int32, tokens fed to the model per text (after truncation)
    # [n] int32, tokens per text before truncation (contract.TOKEN_COUNT_ORIGINAL says what it means)
    token_count_original: np.ndarray | None = None
    # Which text each row belongs to and its weight in that text's mean (contract.ROW_TEXT); one row
    # per text (the identity) unless long_text chunk split a text into windows.
    row_text: np.ndarray | None = None  # [rows] int32
    row_weight: np.ndarray | None = None  # [rows] float32

    def __post_init__(self) -> None:
        if self.row_text is None:
            self.row_text = np.arange(len(self.token_count), dtype=np.int32)
        if self.row_weight is None:
            self.row_weight = np.asarray(self.token_count, dtype=np.float32)


@dataclass
class Prompted:
    """A request's texts with the prompt applied, and how to truncate them."""

    texts: list[str]
    prompt_chars: int  # characters of the prompt at the start of each text (the prompt ends there)
    truncate: str = TRUNCATE_DEFAULT
    long_text: str = LONG_TEXT_DEFAULT


def check_option(name: str, value: object) -> object:
    """A request option checked against its declaration (``contract.OPTIONS``) and normalised
    (truncate upper-cased); None stays None: the default applies."""
    if value is None:
        return None
    option = OPTIONS[name]
    error = option.check(value)
    if error:
        raise RequestError(error, param=name)
    return option.normalize(value)


def read_options(given: dict[str, np.ndarray], task: str) -> dict[str, object]:
    """The options of ``task`` a request carries (``given``: its inputs by name), one value each,
    decoded and checked (a dimensions' range is the model's: ``matryoshka.check_dimensions``)."""
    found: dict[str, object] = {}
    for option in input_options(task):
        raw = given.get(option.name)
        if raw is None:
            continue
        if option.datatype == "BYTES":
            found[option.name] = check_option(option.name, decode_option(raw, option.name))
            continue
        flat = np.asarray(raw).reshape(-1)
        if flat.size != 1:
            raise RequestError(f"{option.name} takes exactly one value, got {flat.size}", param=option.name)
        found[option.name] = int(flat[0])
    return found


def decode_texts(raw: np.ndarray, what: str = TEXT) -> list[str]:
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
                f"{what}[{i}] is not valid UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}",
                param=what,
            ) from None
    return texts


def check_bytes(raw: np.ndarray, profile: ModelProfile, what: str = TEXT) -> None:
    """Refuse a text or a request over the profile's byte limits before any decoding or tokenizing."""
    total = 0
    for i, item in enumerate(raw.reshape(-1)):
        n = len(item.encode("utf-8")) if isinstance(item, str) else len(item)
        if n > profile.max_text_bytes:
            raise RequestError(
                f"{what}[{i}] is {n} bytes; the limit is {profile.max_text_bytes} bytes per text", TOO_LARGE, what
            )
        total += n
    if total > profile.max_request_bytes:
        raise RequestError(
            f"the request's texts are {total} bytes; the limit is {profile.max_request_bytes} per request",
            TOO_LARGE,
            what,
        )


def decode_option(raw: np.ndarray | None, name: str) -> str | None:
    if raw is None:
        return None
    values = decode_texts(raw, name)
    if len(values) != 1:
        raise RequestError(f"{name} takes exactly one value, got {len(values)}", param=name)
    return values[0]


def window_starts(length: int, room: int, overlap: int) -> list[int]:
    """Where the windows over a text of ``length`` tokens start, ``room`` tokens each (``length >
    room``): the fewest windows whose neighbours share at least ``overlap`` tokens (at most half a
    window), spread evenly from the text's first token to its last, so that every window is full."""
    stride = room - min(max(overlap, 0), room // 2)
    span = length - room
    n = 1 + -(-span // stride)
    return [k * span // (n - 1) for k in range(n)]


def window_weights(starts: list[int], room: int, length: int) -> np.ndarray:
    """Each window's weight in its text's mean: every token of the text weighs 1, shared evenly by
    the windows that hold it, so overlapping tokens are not counted twice and the weights add up to
    ``length`` (a text's vector leans on no part of it more than on another)."""
    edges = np.zeros(length + 1)
    for s in starts:
        edges[s] += 1
        edges[s + room] -= 1
    share = 1.0 / np.cumsum(edges)[:length]
    return np.array([share[s : s + room].sum() for s in starts], dtype=np.float32)


def pad_batch(arrays: list[np.ndarray], value: int, left: bool) -> np.ndarray:
    """Concatenate ``[n_i, s_i]`` arrays into ``[sum n_i, max s_i]``, padding on the tokenizer's side."""
    width = max(a.shape[1] for a in arrays)
    padded = []
    for a in arrays:
        extra = width - a.shape[1]
        spec = ((0, 0), (extra, 0)) if left else ((0, 0), (0, extra))
        padded.append(np.pad(a, spec, constant_values=value) if extra else a)
    return np.concatenate(padded)


def pad_rows(rows: list[list[int]], profile: ModelProfile) -> TokenBatch:
    """Token rows padded, on the profile's side, to the bucket of the longest: requests of similar
    length get the same shape, so Triton's dynamic batcher can merge them."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
    width = profile.bucket(int(lengths.max()))
    dtype = np.dtype(profile.ids_dtype)
    ids = np.full((len(rows), width), profile.pad_token_id, dtype=dtype)
    mask = np.zeros((len(rows), width), dtype=dtype)
    left = profile.padding_side == "left"
    for row, (r, n) in enumerate(zip(rows, lengths)):
        span = slice(width - n, width) if left else slice(0, n)
        ids[row, span] = r
        mask[row, span] = 1
    return TokenBatch(ids, mask, lengths)


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
        # Truncation is ours (``_cut``): END, START and NONE need the whole encoding, and the
        # tokenizer's own truncation would drop the count before it.
        tok.no_truncation()
        self.tokenizer = tok
        # No token spans more characters than the vocabulary's longest entry, so truncation keeps
        # nothing past max_length x that: longer texts are cut before tokenizing (twice the bound,
        # so the last kept word tokenizes as in the whole text), and a huge text costs no more
        # than a long one.
        longest = max((len(t) for t in tok.get_vocab()), default=16)
        self.char_cap = 2 * profile.max_length * longest
        self._ids_dtype = np.dtype(profile.ids_dtype)
        # Without offsets (START needs them to find where the prompt ends).
        self._encode = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def _appends_end(self, tok: Tokenizer) -> bool:
        ids = tok.encode("a").ids
        return bool(ids) and ids[-1] == self.profile.end_token_id

    def format(
        self,
        texts: list[str],
        input_type: str | None = None,
        instruction: str | None = None,
        truncate: str | None = None,
        long_text: str | None = None,
    ) -> list[str]:
        """Validate a request's texts and options and apply the model's prompt."""
        return self.prepare(texts, input_type, instruction, truncate, long_text).texts

    def prepare(
        self,
        texts: list[str],
        input_type: str | None = None,
        instruction: str | None = None,
        truncate: str | None = None,
        long_text: str | None = None,
    ) -> Prompted:
        """:meth:`format`, keeping what :meth:`encode` needs to truncate."""
        p = self.profile
        truncate = check_option(TRUNCATE, truncate) or TRUNCATE_DEFAULT
        long_text = check_option(LONG_TEXT, long_text) or LONG_TEXT_DEFAULT
        if not texts:
            raise RequestError("no texts in the request", param=TEXT)
        if len(texts) > p.max_texts:
            raise RequestError(
                f"too many texts: {len(texts)} > {p.max_texts} per request (split the list; the client does this)",
                param=TEXT,
            )
        input_type = check_option(INPUT_TYPE, input_type)  # type: ignore[assignment]  # "passage" -> "document"
        if instruction is not None:
            if input_type == "document":
                raise RequestError("documents never carry an instruction; send it with queries only", param=INSTRUCTION)
            if p.instruction_template is None:
                raise RequestError(
                    f"model {p.name!r} takes no instruction (its query prompt is {p.prompt_for('query')!r});"
                    " use input_type='query'",
                    UNSUPPORTED,
                    INSTRUCTION,
                )
            instruction = " ".join(instruction.split())
            if not instruction:
                raise RequestError("instruction is empty", param=INSTRUCTION)
            input_type = "query"
            prefix = p.instruction_template.format(instruction=instruction)
        else:
            prefix = p.prompt_for(input_type or p.default_input_type)
        # The character cap keeps the side that truncation keeps; NONE must count every token, and
        # chunk embeds every token (or refuses the text): both stay within max_text_bytes.
        cap = {TRUNCATE_END: slice(None, self.char_cap), TRUNCATE_START: slice(-self.char_cap, None)}.get(
            truncate, slice(None)
        )
        if long_text == LONG_TEXT_CHUNK:
            cap = slice(None)
        out = []
        for i, text in enumerate(texts):
            clean = " ".join(text.split())
            if not clean:
                raise RequestError(f"text[{i}] is empty", param=TEXT)
            out.append(prefix + clean[cap])
        # A token that starts inside the prompt is the prompt's (the trailing space of "query: "
        # belongs to the next word's token).
        return Prompted(out, len(prefix.rstrip()), truncate, long_text)

    @staticmethod
    def _spans(enc, prompt_chars: int) -> tuple[int, int, int]:
        """(head, prompt_end, tail) of an encoding: ``ids[:head]`` are the template's leading special
        tokens, ``ids[head:prompt_end]`` the tokens of the prompt's ``prompt_chars`` characters (read
        from the offsets; 0: none), ``ids[tail:]`` the trailing special tokens (the end token of
        last-token models)."""
        ids, special = enc.ids, enc.special_tokens_mask
        head = 0
        while head < len(ids) and special[head]:
            head += 1
        tail = len(ids)
        while tail > head and special[tail - 1]:
            tail -= 1
        prompt = head
        if prompt_chars:
            offsets = enc.offsets
            while prompt < tail and offsets[prompt][0] < prompt_chars:
                prompt += 1
        return head, prompt, tail

    def _cut(self, enc, prompted: Prompted, i: int) -> list[int]:
        """Encoding ``enc`` of text ``i`` within max_length: its special tokens (the template's
        leading and trailing ones, the end token of last-token models) are always kept, once."""
        ids = enc.ids
        limit = self.profile.max_length
        if len(ids) <= limit:
            return ids
        if prompted.truncate == TRUNCATE_NONE:
            raise RequestError(
                f"text[{i}] is {len(ids)} tokens; the limit is {limit} tokens for model {self.profile.name!r}"
                " (truncate NONE; END or START cut it instead)",
                CONTEXT_LENGTH_EXCEEDED,
                TEXT,
            )
        start = prompted.truncate == TRUNCATE_START
        head, prompt_end, tail = self._spans(enc, prompted.prompt_chars if start else 0)
        room = max(limit - head - (len(ids) - tail), 0)
        if prompted.truncate == TRUNCATE_END:
            body = ids[head : head + room]
        else:  # START: the prompt's tokens, then the text's last ones
            prompt = min(prompt_end - head, room)
            rest = room - prompt
            body = ids[head : head + prompt] + (ids[tail - rest : tail] if rest else [])
        return ids[:head] + body + ids[tail:]

    def _windows(self, enc, prompted: Prompted, i: int) -> tuple[list[list[int]], list[float]]:
        """Text ``i``'s rows under long_text chunk and their weights: the whole encoding when it fits
        in max_length (the row truncation would give), else windows of max_length tokens, each with
        the leading special tokens, the prompt, its share of the text and the trailing special tokens."""
        ids, p = enc.ids, self.profile
        if len(ids) <= p.max_length:
            return [ids], [float(len(ids))]
        _, prompt_end, tail = self._spans(enc, prompted.prompt_chars)
        fixed, body, end = ids[:prompt_end], ids[prompt_end:tail], ids[tail:]
        room = p.max_length - len(fixed) - len(end)
        if room < 1:  # a prompt that fills the window leaves nothing to chunk: truncate decides
            row = self._cut(enc, prompted, i)
            return [row], [float(len(row))]
        starts = window_starts(len(body), room, p.chunk_overlap)
        if len(starts) > p.max_windows:
            raise RequestError(
                f"text[{i}] is {len(ids)} tokens, {len(starts)} windows of {p.max_length}; the limit is"
                f" {p.max_windows} windows per text for model {p.name!r} (long_text chunk)",
                CONTEXT_LENGTH_EXCEEDED,
                TEXT,
            )
        rows = [fixed + body[s : s + room] + end for s in starts]
        return rows, window_weights(starts, room, len(body)).tolist()

    def _chunk(self, encodings, prompted: Prompted) -> TokenBatch:
        """Every text's windows (``_windows``) as one batch: rows of a text consecutive, texts in order."""
        p = self.profile
        rows: list[list[int]] = []
        row_text: list[int] = []
        weights: list[float] = []
        counts: list[int] = []
        for i, enc in enumerate(encodings):
            windows, w = self._windows(enc, prompted, i)
            if len(rows) + len(windows) > p.max_rows:
                raise RequestError(
                    f"text[{i}] ({len(windows)} windows) brings the request to {len(rows) + len(windows)}"
                    f" windows; the limit is {p.max_rows} windows per request for model {p.name!r}"
                    " (long_text chunk; send fewer texts per request)",
                    CONTEXT_LENGTH_EXCEEDED,
                    TEXT,
                )
            rows += windows
            row_text += [i] * len(windows)
            weights += w
            counts.append(sum(map(len, windows)))
        batch = pad_rows(rows, p)
        batch.token_count = np.array(counts, dtype=np.int32)
        batch.row_text = np.array(row_text, dtype=np.int32)
        batch.row_weight = np.array(weights, dtype=np.float32)
        return batch

    def encode(self, texts: list[str] | Prompted) -> TokenBatch:
        prompted = texts if isinstance(texts, Prompted) else Prompted(list(texts), 0)
        chunk = prompted.long_text == LONG_TEXT_CHUNK
        needs_offsets = (prompted.truncate == TRUNCATE_START or chunk) and prompted.prompt_chars > 0
        encodings = (self.tokenizer.encode_batch if needs_offsets else self._encode)(prompted.texts)
        original = np.fromiter((len(e.ids) for e in encodings), dtype=np.int32, count=len(encodings))
        if chunk:
            batch = self._chunk(encodings, prompted)
            batch.token_count_original = original
            return batch
        rows = [self._cut(enc, prompted, i) for i, enc in enumerate(encodings)]
        batch = pad_rows(rows, self.profile)
        batch.token_count_original = original
        return batch

    def __call__(
        self,
        texts: list[str],
        input_type: str | None = None,
        instruction: str | None = None,
        truncate: str | None = None,
        long_text: str | None = None,
    ) -> TokenBatch:
        return self.encode(self.prepare(texts, input_type, instruction, truncate, long_text))
