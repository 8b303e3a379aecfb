"""One call of the client, checked and ready to send: its texts, options and expected outputs, cut into
the requests the server takes, and the answers put back together. Nothing in here does I/O."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import numpy as np
import tritonclient.grpc as grpcclient

from . import contract as c
from .chunking import chunk_windows, chunked, chunked_rows
from .contract import (
    DIMENSIONS,
    DOCUMENTS,
    EMBEDDING,
    EMBEDDING_PACKED,
    EMBEDDING_TYPE,
    EMBEDDING_TYPE_DEFAULT,
    LONG_TEXT,
    LONG_TEXT_CHUNK,
    QUERY,
    SCORE,
    TEXT,
    TOKEN_COUNT,
    TOKEN_COUNT_ORIGINAL,
)
from .discovery import ModelInfo, check_task
from .errors import EmbeddingError, invalid
from .results import EmbeddingResult, RerankResult, SparseEmbedding, TokenizeResult

Text = Union[str, bytes]
Texts = Union[Text, Iterable[Text]]
# The field a message's ``what`` names, as the ensemble calls it ("texts[3]" is the TEXT input).
PARAMS = {"texts": TEXT, "text": TEXT, DOCUMENTS: DOCUMENTS, QUERY: QUERY}


def option_arrays(
    info: ModelInfo, task: str, options: Mapping[str, object], names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The given options (None: not given) checked against their declarations (``contract.OPTIONS``)
    and this model, as the ensemble's input arrays. ``names``: the options this call takes (default:
    all of ``task``'s); any other is a TypeError, as for an unknown keyword argument."""
    declared = {o.name: o for o in c.options_for(task) if names is None or o.name in names}
    arrays: dict[str, np.ndarray] = {}
    for name, value in options.items():
        if value is None:
            continue
        option = declared.get(name)
        if option is None:
            raise TypeError(f"unexpected option {name!r}; this call takes {', '.join(declared)}")
        if option.values is None and option.datatype == "BYTES":  # free text: str or UTF-8 bytes
            value = utf8(value, name).decode("utf-8")
        else:
            low, high = (info.min_dimension, info.dimension) if name == DIMENSIONS else (1, None)
            error = option.check(value, low, high, info.name)
            if error:
                raise invalid(error, name)
        if not option.tensor:
            continue  # checked; sent otherwise (request_priority)
        if info.inputs and name not in info.inputs:
            raise EmbeddingError(
                f"model {info.name!r} has no {name!r} input; re-export it with this tembed", c.UNSUPPORTED, param=name
            )
        value = option.normalize(value)
        if option.datatype == "INT32":
            arrays[name] = np.array([value], dtype=np.int32)
        else:
            arrays[name] = np.array([str(value).encode("utf-8")], dtype=np.object_)
    return arrays


def check_sizes(items: Sequence[bytes], info: ModelInfo, what: str) -> None:
    """The server's per-text byte limit, checked before sending (its message, from the client)."""
    if info.max_text_bytes is None:
        return
    for i, item in enumerate(items):
        if len(item) > info.max_text_bytes:
            raise EmbeddingError(
                f"{what}[{i}] is {len(item)} bytes; the limit is {info.max_text_bytes} bytes per text",
                c.TOO_LARGE,
                param=PARAMS.get(what, what),
            )


def utf8(value: object, what: str) -> bytes:
    """``value`` as UTF-8 bytes: a ``str`` is encoded, ``bytes`` must already be UTF-8."""
    try:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, bytes):
            value.decode("utf-8")
            return value
    except UnicodeError:
        raise invalid(f"{what} is not valid UTF-8", PARAMS.get(what.partition("[")[0], what)) from None
    raise invalid(f"{what} must be str or bytes, not {type(value).__name__}", PARAMS.get(what.partition("[")[0], what))


def encode_texts(texts: Texts, what: str = "texts") -> tuple[list[bytes], bool]:
    """The texts as UTF-8 bytes, and whether a single text (not a list) was given."""
    if isinstance(texts, (str, bytes)):
        return [utf8(texts, TEXT)], True
    try:
        items = list(texts)
    except TypeError:
        raise invalid(
            f"{what} must be a str or an iterable of str, not {type(texts).__name__}", PARAMS.get(what, what)
        ) from None
    return [utf8(t, f"{what}[{i}]") for i, t in enumerate(items)], False


def decode_packed(packed: np.ndarray, embedding_type: str) -> np.ndarray:
    """EMBEDDING_PACKED's bytes as ``embedding_type``'s values (``contract.EMBEDDING_DTYPES``)."""
    return np.ascontiguousarray(packed, dtype=np.uint8).view(c.EMBEDDING_DTYPES[embedding_type])


def tensor(name: str, data: np.ndarray, batched: bool = False) -> grpcclient.InferInput:
    """One input of a request; to a batched model (``ModelInfo.batched``) as its one batch row."""
    datatype = "BYTES" if data.dtype == np.object_ else "INT32"
    data = data[np.newaxis] if batched else data
    inp = grpcclient.InferInput(name, list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    return inp


class RowResult:
    """A batched model's answer to one request (``ModelInfo.batched``): each output without its batch row,
    as an ensemble answers it."""

    def __init__(self, result: grpcclient.InferResult) -> None:
        self._result = result

    def as_numpy(self, name: str) -> np.ndarray | None:
        data = self._result.as_numpy(name)
        if data is None:
            return None
        if data.ndim == 0 or data.shape[0] != 1:
            raise EmbeddingError(f"expected {name} as one batch row [1, ...], got {list(data.shape)}", c.INTERNAL)
        return data[0]


def answers(results: Sequence[grpcclient.InferResult], batched: bool) -> Sequence[grpcclient.InferResult]:
    return [RowResult(r) for r in results] if batched else results  # type: ignore[misc]


def request_priority(info: ModelInfo, options: Mapping[str, object]) -> dict[str, Any]:
    """The ``infer`` keywords for the request's lane (``contract.PRIORITY``, checked by option_arrays): the
    lane's own ensemble where the model has one (``PARAM_LANES``), else Triton's priority level (which a
    model without ``priority_levels`` ignores); nothing for the default lane."""
    value = options.get(c.PRIORITY)
    if value is None:
        return {}
    lanes = dict(item.split("=", 1) for item in info.parameters.get(c.PARAM_LANES, "").split(",") if "=" in item)
    if str(value) in lanes:
        return {"model_name": lanes[str(value)]}
    return {c.INFER_PRIORITY: c.PRIORITY_LEVELS[str(value)]}


@dataclass(frozen=True)
class Call:
    """One validated ``embed``/``encode`` call, ready to be sent in server-sized chunks."""

    info: ModelInfo
    texts: list[bytes]
    single: bool
    width: int  # columns expected back
    options: dict[str, np.ndarray]  # the optional inputs the caller gave
    embedding_type: str = EMBEDDING_TYPE_DEFAULT
    outputs: tuple[str, ...] = (c.OUTPUT_DENSE,)  # bge-m3: the kinds asked for (contract.OUTPUT_KINDS)
    priority: dict[str, Any] = field(default_factory=dict)  # the infer keyword of its lane (request_priority)
    option_names: ClassVar[tuple[str, ...] | None] = None  # the options this call takes (None: all of its task's)

    @classmethod
    def prepare(cls, info: ModelInfo, texts: Texts, outputs: object = None, **options: Any) -> Call:
        """Check the texts and the options (``contract.options_for(TASK_EMBED)``; None: not given).
        ``outputs`` (bge-m3: the option ``contract.OUTPUTS``) is a list of kinds (``["dense", "sparse"]``)
        or the option's comma-separated text."""
        check_task(info, c.TASK_EMBED)
        encoded, single = encode_texts(texts)
        check_sizes(encoded, info, "texts")
        if outputs is not None:
            options = {**options, c.OUTPUTS: c.outputs_value(outputs)}
        if options.get(c.OUTPUTS) is not None:
            options = {**options, c.OUTPUTS: c.outputs_value(options[c.OUTPUTS])}
        arrays = option_arrays(info, c.TASK_EMBED, options, cls.option_names)
        width = int(arrays[DIMENSIONS][0]) if DIMENSIONS in arrays else info.dimension
        kind = arrays[EMBEDDING_TYPE][0].decode() if EMBEDDING_TYPE in arrays else EMBEDDING_TYPE_DEFAULT
        kinds = c.output_kinds(arrays[c.OUTPUTS][0].decode()) if c.OUTPUTS in arrays else (c.OUTPUT_DENSE,)
        has = c.output_kinds(info.parameters.get(c.PARAM_OUTPUTS, c.OUTPUT_DENSE))
        if set(kinds) - set(has):
            missing = ", ".join(k for k in kinds if k not in has)
            raise EmbeddingError(
                f"{c.OUTPUTS} {missing}: model {info.name!r} has only {', '.join(has)}", c.UNSUPPORTED, param=c.OUTPUTS
            )
        if kinds == (c.OUTPUT_DENSE,):
            arrays.pop(c.OUTPUTS, None)  # the default: a model exported before the option serves it too
        return cls(info, encoded, single, width, arrays, kind, kinds, request_priority(info, options))

    @property
    def batched(self) -> bool:
        """Whether the model called takes requests as batch rows (the one-step layout)."""
        return self.info.batched

    @property
    def dense(self) -> bool:
        return c.OUTPUT_DENSE in self.outputs

    @property
    def vector_output(self) -> str:
        """The output holding the vectors: EMBEDDING for float, EMBEDDING_PACKED for compact types."""
        return EMBEDDING if self.embedding_type == EMBEDDING_TYPE_DEFAULT else EMBEDDING_PACKED

    @property
    def columns(self) -> int:
        """Columns of the vector output: ``width`` dimensions, or their bytes for compact types (0 when
        dense was not asked for)."""
        if not self.dense:
            return 0
        return c.packed_width(self.embedding_type, self.width) or self.width

    @property
    def extra_outputs(self) -> tuple[str, ...]:
        """bge-m3's tensors this call asks for (``contract.M3_TENSORS``)."""
        names: tuple[str, ...] = ()
        if c.OUTPUT_SPARSE in self.outputs:
            names += (c.SPARSE_IDS, c.SPARSE_WEIGHTS, c.SPARSE_COUNT)
        if c.OUTPUT_COLBERT in self.outputs:
            names += (c.MULTI_VECTORS, c.MULTI_VECTOR_COUNT)
        return names

    @property
    def timings(self) -> tuple[str, ...]:
        """The server's own timings its ensemble answers (``contract.SERVER_TIMES``)."""
        return tuple(n for n in c.SERVER_TIMES if n in self.info.outputs)

    @property
    def wants_original(self) -> bool:
        """Whether the ensemble's config lists TOKEN_COUNT_ORIGINAL (repositories before it did not)."""
        return TOKEN_COUNT_ORIGINAL in self.info.outputs

    def chunks(self) -> list[Sequence[bytes]]:
        params = self.info.parameters
        chunking = LONG_TEXT in self.options and self.options[LONG_TEXT][0] == LONG_TEXT_CHUNK.encode()
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
            inputs = [tensor(TEXT, np.array(chunk, dtype=np.object_), self.batched)]
            inputs += [tensor(name, data, self.batched) for name, data in self.options.items()]
            vec = self.vector_output
            names = (vec, TOKEN_COUNT, TOKEN_COUNT_ORIGINAL) if self.wants_original else (vec, TOKEN_COUNT)
            names += self.extra_outputs + self.timings
            outputs = [grpcclient.InferRequestedOutput(n) for n in names]
            where = f"request for texts[{start}:{start + len(chunk)}]" if len(chunks) > 1 else ""
            yield where, {"model_name": self.info.name, "inputs": inputs, "outputs": outputs, **self.priority}
            start += len(chunk)

    def finish(self, results: Sequence[grpcclient.InferResult]) -> EmbeddingResult:
        """Check each chunk's response and put them back together in order."""
        vec, columns, dtype = self.vector_output, self.columns, c.EMBEDDING_DTYPES[self.embedding_type]
        embeddings = [np.empty((0, columns), dtype)]
        token_counts = [np.empty(0, np.int32)]
        originals = [np.empty(0, np.int32)]
        sparse: list[SparseEmbedding] = []
        multi: list[np.ndarray] = []
        server_ns = dict.fromkeys(self.timings, 0)
        for chunk, result in zip(self.chunks(), answers(results, self.batched)):
            for name in server_ns:
                got = result.as_numpy(name)
                server_ns[name] += 0 if got is None else int(got.reshape(-1)[0])
            if self.extra_outputs:
                more_sparse, more_multi = self.m3_outputs(result, len(chunk))
                sparse += more_sparse
                multi += more_multi
            emb, tok = result.as_numpy(vec), result.as_numpy(TOKEN_COUNT)
            if emb is None or tok is None:
                raise EmbeddingError(f"response lacks {vec!r} or {TOKEN_COUNT!r}", reason=c.INTERNAL)
            if emb.shape != (len(chunk), columns) or tok.shape != (len(chunk),):
                msg = (
                    f"expected {vec} [{len(chunk)}, {columns}] and {TOKEN_COUNT} [{len(chunk)}], "
                    f"got {list(emb.shape)} and {list(tok.shape)}"
                )
                raise EmbeddingError(msg, reason=c.INTERNAL)
            embeddings.append(emb if vec == EMBEDDING else decode_packed(emb, self.embedding_type))
            token_counts.append(tok)
            originals.append(original_counts(result, len(chunk)) if self.wants_original else tok)
        emb = np.concatenate(embeddings).astype(dtype, copy=False)
        tok = np.concatenate(token_counts).astype(np.int32, copy=False)
        orig = np.concatenate(originals).astype(np.int32, copy=False) if self.wants_original else None
        kind = self.embedding_type
        sp = sparse if c.OUTPUT_SPARSE in self.outputs else None
        mv = multi if c.OUTPUT_COLBERT in self.outputs else None
        times = server_ns or None
        if self.single:
            return EmbeddingResult(
                emb[0], tok[0, ...], self.info.name, None if orig is None else orig[0, ...], kind,
                None if sp is None else sp[0], None if mv is None else mv[0], times,
            )  # fmt: skip
        return EmbeddingResult(emb, tok, self.info.name, orig, kind, sp, mv, times)

    def m3_outputs(self, result: grpcclient.InferResult, n: int) -> tuple[list[SparseEmbedding], list[np.ndarray]]:
        """One response's per-text sparse weights and multi-vectors, cut by their counts."""
        sparse: list[SparseEmbedding] = []
        multi: list[np.ndarray] = []
        if c.OUTPUT_SPARSE in self.outputs:
            ids, weights, count = (result.as_numpy(k) for k in (c.SPARSE_IDS, c.SPARSE_WEIGHTS, c.SPARSE_COUNT))
            if ids is None or weights is None or count is None or count.size != n or ids.size != int(count.sum()):
                raise EmbeddingError(f"the response's {c.SPARSE_IDS} do not match {c.SPARSE_COUNT}", reason=c.INTERNAL)
            cuts = np.cumsum(count.reshape(-1))[:-1]
            sparse = [
                SparseEmbedding(i.astype(np.int32, copy=False), w.astype(np.float32, copy=False))
                for i, w in zip(np.split(ids.reshape(-1), cuts), np.split(weights.reshape(-1), cuts))
            ]
        if c.OUTPUT_COLBERT in self.outputs:
            vectors, count = result.as_numpy(c.MULTI_VECTORS), result.as_numpy(c.MULTI_VECTOR_COUNT)
            if vectors is None or count is None or count.size != n or len(vectors) != int(count.sum()):
                raise EmbeddingError(
                    f"the response's {c.MULTI_VECTORS} do not match {c.MULTI_VECTOR_COUNT}", reason=c.INTERNAL
                )
            multi = np.split(vectors, np.cumsum(count.reshape(-1))[:-1])
        return sparse, multi


def original_counts(result: grpcclient.InferResult, n: int) -> np.ndarray:
    orig = result.as_numpy(TOKEN_COUNT_ORIGINAL)
    if orig is None or orig.shape != (n,):
        got = "nothing" if orig is None else list(orig.shape)
        raise EmbeddingError(f"expected {TOKEN_COUNT_ORIGINAL} [{n}], got {got}", reason=c.INTERNAL)
    return orig


@dataclass(frozen=True)
class TokenizeCall(Call):
    """One ``tokenize`` call: the embedding call's inputs, sent to the ensemble's tokenizer model."""

    option_names: ClassVar[tuple[str, ...] | None] = tuple(o.name for o in c.TOKEN_OPTIONS)

    @property
    def batched(self) -> bool:
        return False  # the tokenizer model takes a request as it is, whatever the layout

    @classmethod
    def prepare(cls, info: ModelInfo, texts: Texts, **options: Any) -> TokenizeCall:  # type: ignore[override]
        call = super().prepare(info, texts, **options)
        if c.PARAM_TOKENIZER not in info.parameters or c.PARAM_TOKENIZER_OUTPUTS not in info.parameters:
            raise EmbeddingError(
                f"model {info.name!r} does not name its tokenizer (parameter {c.PARAM_TOKENIZER!r});"
                " re-export it with this tembed to tokenize",
                c.UNSUPPORTED,
                param="model",
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
                    f"the tokenizer's answer lacks {ids_name!r}, {mask_name!r} or rows", reason=c.INTERNAL
                )
            rows += [row[m == 1] for row, m in zip(ids, mask)]
            counts.append(tok)
            originals.append(original_counts(result, len(chunk)))
        tok = np.concatenate(counts).astype(np.int32, copy=False)
        orig = np.concatenate(originals).astype(np.int32, copy=False)
        if self.single:
            return TokenizeResult(rows[0], tok[0, ...], orig[0, ...], self.info.name)
        return TokenizeResult(rows, tok, orig, self.info.name)


@dataclass(frozen=True)
class RerankCall:
    """One validated ``rerank``/``score`` call, ready to be sent in server-sized chunks."""

    info: ModelInfo
    query: bytes
    documents: list[bytes]
    options: dict[str, np.ndarray]
    priority: dict[str, Any] = field(default_factory=dict)  # the infer keyword of its lane (request_priority)

    @classmethod
    def prepare(cls, info: ModelInfo, query: Text, documents: Iterable[Text], **options: Any) -> RerankCall:
        """Check the query, the documents and the options (``contract.options_for(TASK_RERANK)``)."""
        check_task(info, c.TASK_RERANK)
        if isinstance(documents, (str, bytes)):
            raise invalid("documents must be a list of str, not one str", DOCUMENTS)
        docs, _ = encode_texts(documents, DOCUMENTS)
        check_sizes(docs, info, DOCUMENTS)
        check_sizes([utf8(query, QUERY)], info, QUERY)
        arrays = option_arrays(info, c.TASK_RERANK, options)
        return cls(info, utf8(query, QUERY), docs, arrays, request_priority(info, options))

    @property
    def chunking(self) -> bool:
        """long_text chunk on a repository that says whose each score row is (contract.DOCUMENT_INDEX)."""
        asked = LONG_TEXT in self.options and self.options[LONG_TEXT][0] == LONG_TEXT_CHUNK.encode()
        return asked and c.DOCUMENT_INDEX in self.info.outputs

    def chunks(self) -> list[Sequence[bytes]]:
        # The query travels with every chunk.
        room = None if self.info.max_request_bytes is None else self.info.max_request_bytes - len(self.query)
        params = self.info.parameters
        if self.chunking and c.PARAM_MAX_ROWS in params:
            # Every window of a request goes to the encoder in one batch: the server caps them.
            max_length, max_windows = int(params[c.PARAM_MAX_LENGTH]), int(params[c.PARAM_MAX_WINDOWS])
            rows = [chunk_windows(d, max_length, max_windows) for d in self.documents]
            return chunked_rows(self.documents, self.info.max_texts, room, rows, int(params[c.PARAM_MAX_ROWS]))
        return chunked(self.documents, self.info.max_texts, room)

    def requests(self) -> Iterator[tuple[str, dict[str, Any]]]:
        chunks = self.chunks()
        start = 0
        for chunk in chunks:
            batched = self.info.batched
            inputs = [
                tensor(QUERY, np.array([self.query], dtype=np.object_), batched),
                tensor(DOCUMENTS, np.array(chunk, dtype=np.object_), batched),
            ]
            inputs += [tensor(name, data, batched) for name, data in self.options.items()]
            names = (SCORE, TOKEN_COUNT, c.DOCUMENT_INDEX) if self.chunking else (SCORE, TOKEN_COUNT)
            outputs = [grpcclient.InferRequestedOutput(n) for n in names]
            where = f"request for documents[{start}:{start + len(chunk)}]" if len(chunks) > 1 else ""
            yield where, {"model_name": self.info.name, "inputs": inputs, "outputs": outputs, **self.priority}
            start += len(chunk)

    def finish(self, results: Sequence[grpcclient.InferResult]) -> RerankResult:
        scores = [np.empty(0, np.float32)]
        token_counts = [np.empty(0, np.int32)]
        for chunk, result in zip(self.chunks(), answers(results, self.info.batched)):
            score, tok = result.as_numpy(SCORE), result.as_numpy(TOKEN_COUNT)
            if score is None or tok is None:
                raise EmbeddingError(f"response lacks {SCORE!r} or {TOKEN_COUNT!r}", reason=c.INTERNAL)
            score, tok = score.reshape(-1), tok.reshape(-1)
            if self.chunking:  # one row per window: a document's score is its best window's
                score, tok = by_document(score, tok, result.as_numpy(c.DOCUMENT_INDEX), len(chunk))
            if score.shape != (len(chunk),) or tok.shape != (len(chunk),):
                got = f"{list(score.shape)}, {list(tok.shape)}"
                msg = f"expected {SCORE} and {TOKEN_COUNT} of [{len(chunk)}], got {got}"
                raise EmbeddingError(msg, reason=c.INTERNAL)
            scores.append(score)
            token_counts.append(tok)
        return RerankResult(
            np.concatenate(scores).astype(np.float32, copy=False),
            np.concatenate(token_counts).astype(np.int32, copy=False),
            self.info.name,
        )


def by_document(score: np.ndarray, tok: np.ndarray, index: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-window scores and token counts -> per document: the maximum score, the sum of the tokens."""
    if index is None or index.reshape(-1).shape != score.shape or (score.size and index.max() >= n):
        raise EmbeddingError(f"the response's {c.DOCUMENT_INDEX} does not match its {SCORE} rows", reason=c.INTERNAL)
    index = index.reshape(-1).astype(np.int64)
    best = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(best, index, score.astype(np.float32))
    tokens = np.zeros(n, dtype=np.int64)
    np.add.at(tokens, index, tok.astype(np.int64))
    return best, tokens.astype(np.int32)
