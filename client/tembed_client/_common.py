"""What the sync and async clients share: the server contract, validation, request building,
chunking and reassembly. Nothing in here does I/O."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import tritonclient.grpc as grpcclient

from . import contract as c
from . import replicas
from .contract import (
    DIMENSIONS,
    DOCUMENTS,
    EMBEDDING,
    EMBEDDING_PACKED,
    EMBEDDING_TYPE,
    EMBEDDING_TYPE_DEFAULT,
    INPUT_TYPE,
    INPUT_TYPES,
    INSTRUCTION,
    LONG_TEXT,
    QUERY,
    SCORE,
    TEXT,
    TOKEN_COUNT,
    TOKEN_COUNT_ORIGINAL,
    TRUNCATE,
)
from .errors import EmbeddingError

COMPRESSIONS = (None, "gzip", "deflate")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a request the server could not take right now (UNAVAILABLE, RESOURCE_EXHAUSTED):
    exponential backoff with full jitter, so clients that were refused together do not return
    together. ``attempts=1`` turns retries off."""

    attempts: int = 4
    base_s: float = 0.05
    max_s: float = 1.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))

    def again(self, attempt: int, started: float, timeout: float | None) -> float | None:
        """The pause before attempt ``attempt + 1``, or None when no attempt is left or the call's
        ``timeout`` (seconds since ``started``, monotonic) would pass during it."""
        if attempt + 1 >= self.attempts:
            return None
        pause = self.delay(attempt)
        if timeout is not None and time.monotonic() + pause - started >= timeout:
            return None
        return pause


Text = Union[str, bytes]
Texts = Union[Text, Iterable[Text]]


def invalid(message: str) -> EmbeddingError:
    return EmbeddingError(message, code="INVALID_ARGUMENT")


@dataclass(frozen=True)
class ModelInfo:
    """The served model, as its ensemble config's ``parameters`` describe it."""

    name: str
    dimension: int  # full embedding size
    min_dimension: int  # smallest Matryoshka size (== dimension when it cannot be truncated)
    max_texts: int  # most texts the server takes in one request
    model_type: str | None = None
    pooling: str | None = None
    platform: str = ""
    max_text_bytes: int | None = None  # the server's byte limits (None: not announced)
    max_request_bytes: int | None = None
    task: str = c.TASK_EMBED  # what the ensemble does (its "task" parameter; older repositories: embed)
    parameters: Mapping[str, str] = field(default_factory=dict)  # every parameter, raw
    inputs: tuple[str, ...] = ()  # the ensemble's input and output tensors (empty: not read)
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class EmbeddingResult:
    """Embeddings (float32, L2-normalised) and token counts (int32), one row per text in order.

    For a list of n texts: ``embeddings`` is [n, d], ``token_counts`` is [n]. For a single
    ``str`` (or ``bytes``): ``embeddings`` is [d] and ``token_counts`` a 0-d array.
    With a compact ``embedding_type`` the rows are its values (``contract.EMBEDDING_DTYPES``):
    int8 or uint8 [n, d], binary (int8) or ubinary (uint8) [n, ceil(d / 8)] sign bits packed 8 per
    byte (``np.unpackbits`` of ubinary, or of binary + 128 as uint8, gives them back).
    """

    embeddings: np.ndarray
    token_counts: np.ndarray
    model: str
    # Tokens per text before truncation, same shape as token_counts; None from a server too old to
    # say. Exact when nothing was cut and under truncate NONE; for a text longer than the window of
    # characters the server tokenizes (twice what max_length tokens can span) a lower bound.
    # ``original_token_counts > token_counts`` is exactly "this text was truncated".
    original_token_counts: np.ndarray | None = None
    embedding_type: str = EMBEDDING_TYPE_DEFAULT  # what ``embeddings`` holds (contract.EMBEDDING_TYPES)

    @property
    def truncated(self) -> np.ndarray | None:
        """Which texts were cut to the model's max_length (bool, token_counts' shape)."""
        if self.original_token_counts is None:
            return None
        return self.original_token_counts > self.token_counts


@dataclass(frozen=True, eq=False)
class TokenizeResult:
    """Token ids as the model embeds them: prompt and special tokens included, after truncation.

    For a list of n texts: ``ids`` is a list of n 1-d arrays (lengths differ), ``token_counts`` [n];
    for a single ``str``: ``ids`` is one array and ``token_counts`` 0-d. ``original_token_counts``
    as in :class:`EmbeddingResult`."""

    ids: list[np.ndarray] | np.ndarray
    token_counts: np.ndarray
    original_token_counts: np.ndarray
    model: str


@dataclass(frozen=True, eq=False)
class RerankResult:
    """Scores and token counts in the order the documents were given, and the ranking."""

    scores: np.ndarray  # [n] float32
    token_counts: np.ndarray  # [n] int32: tokens of each (query, document) pair as scored
    model: str

    def ranking(self, top_n: int | None = None) -> list[tuple[int, float]]:
        """``(index, score)`` pairs, best first; ties keep the documents' order."""
        order = np.argsort(-self.scores, kind="stable")
        return [(int(i), float(self.scores[i])) for i in order[:top_n]]


def check_task(info: ModelInfo, task: str) -> None:
    if info.task != task:
        what = {c.TASK_EMBED: "an embedding model", c.TASK_RERANK: "a reranker"}
        raise EmbeddingError(
            f"model {info.name!r} is {what.get(info.task, info.task)} (task {info.task!r});"
            f" this call needs {what.get(task, task)}",
            code="FAILED_PRECONDITION",
        )


def parse_model_config(config: Mapping[str, Any]) -> ModelInfo:
    """Build a :class:`ModelInfo` from ``get_model_config(name, as_json=True)``."""
    cfg = config.get("config", config)
    name = cfg.get("name", "")
    params = {k: str(v.get("string_value", "")) for k, v in cfg.get("parameters", {}).items()}

    def integer(key: str, default: int | None = None) -> int:
        raw = params.get(key)
        if raw is None and default is not None:
            return default
        if raw is None:
            msg = f"model {name!r} has no {key!r} parameter; is it a text-embedding ensemble?"
            raise EmbeddingError(msg, code="FAILED_PRECONDITION")
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            msg = f"model {name!r}: parameter {key}={raw!r} is not a positive integer"
            raise EmbeddingError(msg, code="FAILED_PRECONDITION")
        return value

    task = params.get(c.PARAM_TASK, c.TASK_EMBED)
    if task not in c.TASKS:
        raise EmbeddingError(
            f"model {name!r} has task {task!r}; this client knows {c.TASKS}", code="FAILED_PRECONDITION"
        )
    dimension = integer(c.PARAM_DIMENSION)
    names = lambda key: tuple(t.get("name", "") for t in cfg.get(key, []))  # noqa: E731
    return ModelInfo(
        name=name,
        dimension=dimension,
        min_dimension=integer(c.PARAM_MIN_DIMENSION, dimension),
        max_texts=integer(c.PARAM_MAX_TEXTS),
        model_type=params.get(c.PARAM_MODEL_TYPE),
        pooling=params.get(c.PARAM_POOLING),
        platform=cfg.get("platform", ""),
        max_text_bytes=integer(c.PARAM_MAX_TEXT_BYTES, 0) or None,
        max_request_bytes=integer(c.PARAM_MAX_REQUEST_BYTES, 0) or None,
        task=task,
        parameters=params,
        inputs=names("input"),
        outputs=names("output"),
    )


def loaded_models(stats: Mapping[str, Any]) -> list[str]:
    """Names of the loaded models in ``get_inference_statistics(as_json=True)``.

    Discovery reads statistics, not the repository index: the index belongs to Triton's
    model-repository protocol, which a hardened server restricts to its admin key."""
    return sorted({m["name"] for m in stats.get("model_stats", [])})


def ready_models(index: Mapping[str, Any]) -> list[str]:
    """Names of the READY models in ``get_model_repository_index(as_json=True)``."""
    return sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})


def discover_models(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, ModelInfo]:
    """The served ensembles among the configs of the ready models, by name.

    An ensemble is ours when its parameters say what it does; one without (someone else's
    ensemble on the same server) is left out rather than failing discovery.
    """
    found = {}
    for name in sorted(configs):
        cfg = configs[name].get("config", configs[name])
        if cfg.get("platform") != "ensemble":
            continue
        try:
            found[name] = parse_model_config(configs[name])
        except EmbeddingError:
            continue
    return found


def pick_model(configs: Mapping[str, Mapping[str, Any]]) -> ModelInfo:
    """The single ensemble among the configs of the ready models."""
    ensembles = sorted(n for n, c in configs.items() if c.get("config", c).get("platform") == "ensemble")
    if len(ensembles) == 1:
        return parse_model_config(configs[ensembles[0]])
    if ensembles:
        msg = f"several ready ensemble models: {', '.join(ensembles)}; choose one with model="
    else:
        msg = f"no ready ensemble model (ready models: {', '.join(sorted(configs)) or 'none'})"
    raise EmbeddingError(msg, code="FAILED_PRECONDITION")


def chunked(items: Sequence[Any], size: int, max_bytes: int | None = None) -> list[Sequence[Any]]:
    """``items`` cut into consecutive pieces of at most ``size`` items and ``max_bytes`` bytes."""
    if size < 1:
        raise ValueError(f"chunk size must be positive, got {size}")
    if max_bytes is None:
        return [items[i : i + size] for i in range(0, len(items), size)]
    out, start, total = [], 0, 0
    for i, item in enumerate(items):
        if i > start and (i - start == size or total + len(item) > max_bytes):
            out.append(items[start:i])
            start, total = i, 0
        total += len(item)
    if start < len(items):
        out.append(items[start:])
    return out


def chunked_rows(
    items: Sequence[bytes], size: int, max_bytes: int | None, rows: Sequence[int], max_rows: int
) -> list[Sequence[bytes]]:
    """:func:`chunked`, and at most ``max_rows`` of ``rows`` (one count per item) per piece."""
    out, start, total, used = [], 0, 0, 0
    for i, item in enumerate(items):
        full = i - start == size or (max_bytes is not None and total + len(item) > max_bytes)
        if i > start and (full or used + rows[i] > max_rows):
            out.append(items[start:i])
            start, total, used = i, 0, 0
        total += len(item)
        used += rows[i]
    if start < len(items):
        out.append(items[start:])
    return out


def chunk_windows(item: bytes, max_length: int, max_windows: int) -> int:
    """At least as many windows as the server cuts ``item`` into under long_text chunk, from its size
    alone: no token spans less than a byte, and a window holds at least max_length / 2 text tokens
    (the prompt, the special tokens and the overlap share the rest). Over max_windows the server
    refuses the text whatever the request, so no more are counted."""
    return min(max_windows, max(1, -(-len(item) // max(1, max_length // 2))))


def check_sizes(items: Sequence[bytes], info: ModelInfo, what: str) -> None:
    """The server's per-text byte limit, checked before sending (its message, from the client)."""
    if info.max_text_bytes is None:
        return
    for i, item in enumerate(items):
        if len(item) > info.max_text_bytes:
            raise invalid(f"{what}[{i}] is {len(item)} bytes; the limit is {info.max_text_bytes} bytes per text")


def utf8(value: object, what: str) -> bytes:
    """``value`` as UTF-8 bytes: a ``str`` is encoded, ``bytes`` must already be UTF-8."""
    try:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, bytes):
            value.decode("utf-8")
            return value
    except UnicodeError:
        raise invalid(f"{what} is not valid UTF-8") from None
    raise invalid(f"{what} must be str or bytes, not {type(value).__name__}")


def encode_texts(texts: Texts, what: str = "texts") -> tuple[list[bytes], bool]:
    """The texts as UTF-8 bytes, and whether a single text (not a list) was given."""
    if isinstance(texts, (str, bytes)):
        return [utf8(texts, "text")], True
    try:
        items = list(texts)
    except TypeError:
        raise invalid(f"{what} must be a str or an iterable of str, not {type(texts).__name__}") from None
    return [utf8(t, f"{what}[{i}]") for i, t in enumerate(items)], False


def check_dimensions(dimensions: object, info: ModelInfo) -> int:
    error = c.dimensions_error(dimensions, info.min_dimension, info.dimension, info.name)
    if error:
        raise invalid(error)
    return int(dimensions)  # type: ignore[call-overload]


def check_embedding_type(value: object, info: ModelInfo) -> str:
    error = c.option_error(EMBEDDING_TYPE, value, c.EMBEDDING_TYPES)
    if error:
        raise invalid(error)
    if info.inputs and EMBEDDING_TYPE not in info.inputs:
        raise invalid(f"model {info.name!r} has no {EMBEDDING_TYPE!r} input; re-export it with this tembed")
    return str(value)


def decode_packed(packed: np.ndarray, embedding_type: str) -> np.ndarray:
    """EMBEDDING_PACKED's bytes as ``embedding_type``'s values (``contract.EMBEDDING_DTYPES``)."""
    return np.ascontiguousarray(packed, dtype=np.uint8).view(c.EMBEDDING_DTYPES[embedding_type])


def tensor(name: str, data: np.ndarray) -> grpcclient.InferInput:
    datatype = "BYTES" if data.dtype == np.object_ else "INT32"
    inp = grpcclient.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return inp


@dataclass(frozen=True)
class Call:
    """One validated ``embed``/``encode`` call, ready to be sent in server-sized chunks."""

    info: ModelInfo
    texts: list[bytes]
    single: bool
    width: int  # columns expected back
    options: dict[str, np.ndarray]  # the optional inputs the caller gave
    embedding_type: str = EMBEDDING_TYPE_DEFAULT

    @classmethod
    def prepare(
        cls,
        info: ModelInfo,
        texts: Texts,
        *,
        instruction: Text | None = None,
        input_type: str | None = None,
        dimensions: int | None = None,
        truncate: str | None = None,
        embedding_type: str | None = None,
        long_text: str | None = None,
    ) -> Call:
        check_task(info, c.TASK_EMBED)
        encoded, single = encode_texts(texts)
        check_sizes(encoded, info, "texts")
        options: dict[str, np.ndarray] = {}
        if instruction is not None:
            options[INSTRUCTION] = np.array([utf8(instruction, "instruction")], dtype=np.object_)
        if input_type is not None:
            if input_type not in INPUT_TYPES:
                raise invalid(f"input_type must be one of {', '.join(INPUT_TYPES)}, not {input_type!r}")
            options[INPUT_TYPE] = np.array([input_type.encode()], dtype=np.object_)
        width = info.dimension
        if dimensions is not None:
            width = check_dimensions(dimensions, info)
            options[DIMENSIONS] = np.array([width], dtype=np.int32)
        if truncate is not None:
            error = c.truncate_error(truncate)
            if error:
                raise invalid(error)
            if info.inputs and TRUNCATE not in info.inputs:
                raise invalid(f"model {info.name!r} has no {TRUNCATE!r} input; re-export it with this tembed")
            options[TRUNCATE] = np.array([truncate.upper().encode()], dtype=np.object_)
        if long_text is not None:
            error = c.option_error(LONG_TEXT, long_text, c.LONG_TEXT_VALUES)
            if error:
                raise invalid(error)
            if info.inputs and LONG_TEXT not in info.inputs:
                raise invalid(f"model {info.name!r} has no {LONG_TEXT!r} input; re-export it with this tembed")
            options[LONG_TEXT] = np.array([long_text.encode()], dtype=np.object_)
        kind = EMBEDDING_TYPE_DEFAULT
        if embedding_type is not None:
            kind = check_embedding_type(embedding_type, info)
            options[EMBEDDING_TYPE] = np.array([kind.encode()], dtype=np.object_)
        return cls(info, encoded, single, width, options, kind)

    @property
    def vector_output(self) -> str:
        """The output holding the vectors: EMBEDDING for float, EMBEDDING_PACKED for compact types."""
        return EMBEDDING if self.embedding_type == EMBEDDING_TYPE_DEFAULT else EMBEDDING_PACKED

    @property
    def columns(self) -> int:
        """Columns of the vector output: ``width`` dimensions, or their bytes for compact types."""
        return c.packed_width(self.embedding_type, self.width) or self.width

    @property
    def wants_original(self) -> bool:
        """Whether the ensemble's config lists TOKEN_COUNT_ORIGINAL (repositories before it did not)."""
        return TOKEN_COUNT_ORIGINAL in self.info.outputs

    def chunks(self) -> list[Sequence[bytes]]:
        params = self.info.parameters
        chunking = LONG_TEXT in self.options and self.options[LONG_TEXT][0] == c.LONG_TEXT_CHUNK.encode()
        if chunking and c.PARAM_MAX_ROWS in params:
            # Every window of a request goes to the encoder in one batch: the server caps them.
            max_length, max_windows = int(params[c.PARAM_MAX_LENGTH]), int(params[c.PARAM_MAX_WINDOWS])
            rows = [chunk_windows(t, max_length, max_windows) for t in self.texts]
            return chunked_rows(
                self.texts, self.info.max_texts, self.info.max_request_bytes, rows, int(params[c.PARAM_MAX_ROWS])
            )
        return chunked(self.texts, self.info.max_texts, self.info.max_request_bytes)

    def requests(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Per chunk: where it lies in the texts (for error messages; empty if there is only
        one chunk) and the keyword arguments of its ``InferenceServerClient.infer`` call.

        The server's error messages count texts within the request, hence the location."""
        chunks = self.chunks()
        start = 0
        for chunk in chunks:
            inputs = [tensor(TEXT, np.array(chunk, dtype=np.object_))]
            inputs += [tensor(name, data) for name, data in self.options.items()]
            vec = self.vector_output
            names = (vec, TOKEN_COUNT, TOKEN_COUNT_ORIGINAL) if self.wants_original else (vec, TOKEN_COUNT)
            outputs = [grpcclient.InferRequestedOutput(n) for n in names]
            where = f"request for texts[{start}:{start + len(chunk)}]" if len(chunks) > 1 else ""
            yield where, {"model_name": self.info.name, "inputs": inputs, "outputs": outputs}
            start += len(chunk)

    def finish(self, results: Sequence[grpcclient.InferResult]) -> EmbeddingResult:
        """Check each chunk's response and put them back together in order."""
        vec, columns, dtype = self.vector_output, self.columns, c.EMBEDDING_DTYPES[self.embedding_type]
        embeddings = [np.empty((0, columns), dtype)]
        token_counts = [np.empty(0, np.int32)]
        originals = [np.empty(0, np.int32)]
        for chunk, result in zip(self.chunks(), results):
            emb, tok = result.as_numpy(vec), result.as_numpy(TOKEN_COUNT)
            if emb is None or tok is None:
                raise EmbeddingError(f"response lacks {vec!r} or {TOKEN_COUNT!r}", code="INTERNAL")
            if emb.shape != (len(chunk), columns) or tok.shape != (len(chunk),):
                msg = (
                    f"expected {vec} [{len(chunk)}, {columns}] and {TOKEN_COUNT} [{len(chunk)}], "
                    f"got {list(emb.shape)} and {list(tok.shape)}"
                )
                raise EmbeddingError(msg, code="INTERNAL")
            embeddings.append(emb if vec == EMBEDDING else decode_packed(emb, self.embedding_type))
            token_counts.append(tok)
            originals.append(original_counts(result, len(chunk)) if self.wants_original else tok)
        emb = np.concatenate(embeddings).astype(dtype, copy=False)
        tok = np.concatenate(token_counts).astype(np.int32, copy=False)
        orig = np.concatenate(originals).astype(np.int32, copy=False) if self.wants_original else None
        kind = self.embedding_type
        if self.single:
            return EmbeddingResult(emb[0], tok[0, ...], self.info.name, None if orig is None else orig[0, ...], kind)
        return EmbeddingResult(emb, tok, self.info.name, orig, kind)


def original_counts(result: grpcclient.InferResult, n: int) -> np.ndarray:
    orig = result.as_numpy(TOKEN_COUNT_ORIGINAL)
    if orig is None or orig.shape != (n,):
        got = "nothing" if orig is None else list(orig.shape)
        raise EmbeddingError(f"expected {TOKEN_COUNT_ORIGINAL} [{n}], got {got}", code="INTERNAL")
    return orig


@dataclass(frozen=True)
class TokenizeCall(Call):
    """One ``tokenize`` call: the embedding call's inputs, sent to the ensemble's tokenizer model."""

    @classmethod
    def prepare(cls, info: ModelInfo, texts: Texts, **options: Any) -> TokenizeCall:  # type: ignore[override]
        call = super().prepare(info, texts, **options)
        if c.PARAM_TOKENIZER not in info.parameters or c.PARAM_TOKENIZER_OUTPUTS not in info.parameters:
            raise EmbeddingError(
                f"model {info.name!r} does not name its tokenizer (parameter {c.PARAM_TOKENIZER!r});"
                " re-export it with this tembed to tokenize",
                code="FAILED_PRECONDITION",
            )
        assert isinstance(call, TokenizeCall)
        return call

    @property
    def tensors(self) -> tuple[str, str]:
        ids, _, mask = self.info.parameters[c.PARAM_TOKENIZER_OUTPUTS].partition(",")
        return ids, mask

    def requests(self) -> Iterator[tuple[str, dict[str, Any]]]:
        names = (*self.tensors, TOKEN_COUNT, TOKEN_COUNT_ORIGINAL)
        for where, request in super().requests():
            request["model_name"] = self.info.parameters[c.PARAM_TOKENIZER]
            request["outputs"] = [grpcclient.InferRequestedOutput(n) for n in names]
            yield where, request

    def finish(self, results: Sequence[grpcclient.InferResult]) -> TokenizeResult:  # type: ignore[override]
        ids_name, mask_name = self.tensors
        rows: list[np.ndarray] = []
        counts, originals = [np.empty(0, np.int32)], [np.empty(0, np.int32)]
        for chunk, result in zip(self.chunks(), results):
            ids, mask, tok = result.as_numpy(ids_name), result.as_numpy(mask_name), result.as_numpy(TOKEN_COUNT)
            if ids is None or mask is None or tok is None or ids.shape != mask.shape or len(ids) != len(chunk):
                raise EmbeddingError(
                    f"the tokenizer's answer lacks {ids_name!r}, {mask_name!r} or rows", code="INTERNAL"
                )
            rows += [row[m == 1] for row, m in zip(ids, mask)]
            counts.append(tok)
            originals.append(original_counts(result, len(chunk)))
        tok = np.concatenate(counts).astype(np.int32, copy=False)
        orig = np.concatenate(originals).astype(np.int32, copy=False)
        if self.single:
            return TokenizeResult(rows[0], tok[0, ...], orig[0, ...], self.info.name)
        return TokenizeResult(rows, tok, orig, self.info.name)


class ClientBase:
    """Construction and per-call options shared by both clients."""

    _triton_class: Any  # tritonclient.grpc[.aio].InferenceServerClient

    def __init__(
        self,
        url: str | Sequence[str] = "localhost:8001",
        model: str | None = None,
        *,
        timeout: float | None = 60.0,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
        verbose: bool = False,
        triton: Any = None,
        info: ModelInfo | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """``triton``: an open ``tritonclient`` InferenceServerClient to share (its owner closes it;
        ``close()`` then leaves it open). ``info``: the model's config, when the caller has read it.
        ``retry``: how requests refused as UNAVAILABLE / RESOURCE_EXHAUSTED are retried.
        ``url``: one address, or several replicas serving the same models (``"a:8001,b:8001"``, a list,
        or ``"dns:///NAME:8001"``): each call goes to the least busy one and fails over once to another
        if its replica is gone (:mod:`tembed_client.replicas`)."""
        if compression not in COMPRESSIONS:
            raise invalid(f"compression must be gzip, deflate or None, not {compression!r}")
        self.url = url if isinstance(url, str) else ",".join(url)
        self._model = model if info is None else info.name
        self._info: ModelInfo | None = info
        # Passed to every RPC; inference calls also get the compression.
        self._rpc_kw: dict[str, Any] = {"headers": dict(headers) if headers else None, "client_timeout": timeout}
        self._infer_kw: dict[str, Any] = {**self._rpc_kw, "compression_algorithm": compression}
        self.retry = retry or RetryPolicy()
        self._owns_triton = triton is None
        self._triton = replicas.connect(url, self._triton_class, verbose) if triton is None else triton

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, model={self._model!r})"


@dataclass(frozen=True)
class RerankCall:
    """One validated ``rerank``/``score`` call, ready to be sent in server-sized chunks."""

    info: ModelInfo
    query: bytes
    documents: list[bytes]
    options: dict[str, np.ndarray]

    @classmethod
    def prepare(
        cls, info: ModelInfo, query: Text, documents: Iterable[Text], *, instruction: Text | None = None
    ) -> RerankCall:
        check_task(info, c.TASK_RERANK)
        if isinstance(documents, (str, bytes)):
            raise invalid("documents must be a list of str, not one str")
        docs, _ = encode_texts(documents, "documents")
        check_sizes(docs, info, "documents")
        check_sizes([utf8(query, "query")], info, "query")
        options: dict[str, np.ndarray] = {}
        if instruction is not None:
            options[INSTRUCTION] = np.array([utf8(instruction, "instruction")], dtype=np.object_)
        return cls(info, utf8(query, "query"), docs, options)

    def chunks(self) -> list[Sequence[bytes]]:
        # The query travels with every chunk.
        room = None if self.info.max_request_bytes is None else self.info.max_request_bytes - len(self.query)
        return chunked(self.documents, self.info.max_texts, room)

    def requests(self) -> Iterator[tuple[str, dict[str, Any]]]:
        chunks = self.chunks()
        start = 0
        for chunk in chunks:
            inputs = [
                tensor(QUERY, np.array([self.query], dtype=np.object_)),
                tensor(DOCUMENTS, np.array(chunk, dtype=np.object_)),
            ]
            inputs += [tensor(name, data) for name, data in self.options.items()]
            outputs = [grpcclient.InferRequestedOutput(n) for n in (SCORE, TOKEN_COUNT)]
            where = f"request for documents[{start}:{start + len(chunk)}]" if len(chunks) > 1 else ""
            yield where, {"model_name": self.info.name, "inputs": inputs, "outputs": outputs}
            start += len(chunk)

    def finish(self, results: Sequence[grpcclient.InferResult]) -> RerankResult:
        scores = [np.empty(0, np.float32)]
        token_counts = [np.empty(0, np.int32)]
        for chunk, result in zip(self.chunks(), results):
            score, tok = result.as_numpy(SCORE), result.as_numpy(TOKEN_COUNT)
            if score is None or tok is None:
                raise EmbeddingError(f"response lacks {SCORE!r} or {TOKEN_COUNT!r}", code="INTERNAL")
            score, tok = score.reshape(-1), tok.reshape(-1)
            if score.shape != (len(chunk),) or tok.shape != (len(chunk),):
                got = f"{list(score.shape)}, {list(tok.shape)}"
                msg = f"expected {SCORE} and {TOKEN_COUNT} of [{len(chunk)}], got {got}"
                raise EmbeddingError(msg, code="INTERNAL")
            scores.append(score)
            token_counts.append(tok)
        return RerankResult(
            np.concatenate(scores).astype(np.float32, copy=False),
            np.concatenate(token_counts).astype(np.int32, copy=False),
            self.info.name,
        )
