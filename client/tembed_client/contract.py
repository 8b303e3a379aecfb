"""The served ensembles' public interface: tensor names, option values and config parameters.

The one place these are written. The client builds requests from them, the server's runtime
(``tembed_serving``) validates and renders configs from them, the gateway maps HTTP fields onto
them. Plain Python with no dependencies, so a Triton stub can import it for nothing.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

# Where a client looks for Triton when told nothing else: its gRPC port on this machine.
DEFAULT_URL = "localhost:8001"

# Tasks a served ensemble performs; its config's ``task`` parameter names one.
TASK_EMBED = "embed"
TASK_RERANK = "rerank"
TASKS = (TASK_EMBED, TASK_RERANK)

# Embedding ensemble: inputs.
TEXT = "text"  # BYTES [n]: UTF-8 texts
INSTRUCTION = "instruction"  # BYTES [1], optional: replaces the query task of instruction models
INPUT_TYPE = "input_type"  # BYTES [1], optional: one of INPUT_TYPES
DIMENSIONS = "dimensions"  # INT32 [1], optional: Matryoshka output size
TRUNCATE = "truncate"  # BYTES [1], optional: one of TRUNCATE_VALUES (default END)
LONG_TEXT = "long_text"  # BYTES [1], optional: one of LONG_TEXT_VALUES (default truncate)
EMBEDDING_TYPE = "embedding_type"  # BYTES [1], optional: one of EMBEDDING_TYPES (default float)
# Embedding ensemble: outputs.
EMBEDDING = "embedding"  # FP32 [n, d], unit length; [n, 0] when embedding_type is not float
# UINT8 [n, k]: the compact vectors' bytes when embedding_type is not float ([n, 0] when it is):
# int8 and binary are int8 values sent as their bytes (view them as int8), uint8 and ubinary uint8;
# binary and ubinary pack the sign bits 8 per byte (k = ceil(d / 8)), int8 and uint8 one per
# dimension (k = d). EMBEDDING_TYPES says which.
EMBEDDING_PACKED = "embedding_packed"
# INT32 [n]: tokens embedded per text (after truncation). Under long_text chunk, every window's
# tokens (its prompt, special tokens and the overlap included: what the encoder ran), so a chunked
# text counts more than TOKEN_COUNT_ORIGINAL.
TOKEN_COUNT = "token_count"
# INT32 [n]: tokens per text before truncation (prompt and special tokens included, like TOKEN_COUNT).
# Exact under truncate NONE and long_text chunk, and whenever the text was not cut. Under END and
# START the tokenizer first keeps a window of characters twice as long as max_length tokens can
# span (so a megabyte text costs no more than a long one): for a text longer than that window the
# number is the window's count, a lower bound; TOKEN_COUNT_ORIGINAL > TOKEN_COUNT still says
# exactly whether the text was truncated (never, under chunk).
TOKEN_COUNT_ORIGINAL = "token_count_original"
# INT64 [1] each, the server's own clock (TEI's timing headers from what Triton's models measured, not
# the caller's): TOKENIZE_NS the tokenizer step's work on this request, ENCODE_NS the encoder run of the
# batch this request was part of (a Python encoder that finishes the vectors; Triton's native backends
# do not say). An ensemble lists the ones it answers; a client reads those.
TOKENIZE_NS = "tokenize_ns"
ENCODE_NS = "encode_ns"
SERVER_TIMES = (TOKENIZE_NS, ENCODE_NS)

INPUT_TYPES = ("query", "document")
# Other APIs' names for them, accepted wherever input_type is: NVIDIA NIM's "passage".
INPUT_TYPE_ALIASES = (("passage", "document"),)
# What happens to a text over the model's max_length tokens:
#   END   cut tokens at its end (the default);
#   START cut tokens at the start of the text, after the prompt: the prompt, the text's end and
#         the model's special tokens (the end token of last-token models) are kept;
#   NONE  refuse the request (INVALID_ARGUMENT naming the text, its token count and the limit).
TRUNCATE_VALUES = ("END", "START", "NONE")
TRUNCATE_END, TRUNCATE_START, TRUNCATE_NONE = TRUNCATE_VALUES
TRUNCATE_DEFAULT = TRUNCATE_END
# What happens to a text over max_length tokens besides truncation:
#   truncate  the text is truncated as TRUNCATE says (the default);
#   chunk     the text is split into windows of max_length tokens, every window is embedded and the
#             text's vector is the token-weighted mean of its windows' vectors, re-normalised
#             (Matryoshka dimensions and compact types apply after that). One vector per text.
#             Each window holds the prompt and the model's special tokens; neighbours share at least
#             the profile's chunk_overlap tokens (max_length / 16 by default), windows spread evenly
#             so all are full; a window's weight is its text tokens, a token held by k windows
#             counting 1/k in each. A text that fits in max_length is one row, as under truncate.
#             Chunking never drops text: a text over PARAM_MAX_WINDOWS windows, or a request over
#             PARAM_MAX_ROWS windows in all, is refused (INVALID_ARGUMENT naming the text, its
#             windows and the limit) whatever TRUNCATE says; TRUNCATE applies only to a text whose
#             prompt leaves a window no room for text.
LONG_TEXT_VALUES = ("truncate", "chunk")
LONG_TEXT_DEFAULT = "truncate"
LONG_TEXT_CHUNK = LONG_TEXT_VALUES[1]
# Vector encodings (the sentence-transformers / Cohere / Infinity names), applied after dimensions:
#   float    float32, unit length (the default);
#   int8     one signed byte per dimension, from per-dimension ranges calibrated at export;
#   uint8    the same ranges, unsigned;
#   binary   sign bits (> 0 is 1), packed 8 per byte, minus 128 as int8 (sentence-transformers);
#   ubinary  the same bits as uint8.
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")
EMBEDDING_TYPE_DEFAULT = "float"
# The numpy dtype of each type's vectors as clients return them (EMBEDDING_PACKED's bytes viewed as it).
EMBEDDING_DTYPES = {"float": "float32", "int8": "int8", "uint8": "uint8", "binary": "int8", "ubinary": "uint8"}
BIT_PACKED_TYPES = ("binary", "ubinary")  # 8 dimensions per byte; int8 and uint8 one per dimension

# bge-m3's three outputs from one forward pass (FlagEmbedding's BGEM3FlagModel; a model whose profile
# lists them, see ModelProfile.outputs): OUTPUTS, a request option, says which a request gets back.
#   dense    the embedding (EMBEDDING / EMBEDDING_PACKED): CLS, unit length; dimensions and
#            embedding_type apply to it alone;
#   sparse   lexical weights: relu(sparse_linear(h)) per token, the maximum per token id, the special
#            tokens (CLS, EOS, PAD, UNK) and weights <= 0 left out, ids in order of first occurrence;
#   colbert  multi-vectors: colbert_linear(h) of every token but the first (CLS), each unit length
#            (tokens - 1 vectors of the model's hidden size per text).
# Not asked for, an output comes back empty ([n, 0] or no rows). Under long_text chunk the sparse weights
# are the maximum over the text's windows (the windows' union, as if one sequence); colbert is refused
# (a window's vectors attend only inside it, and overlapping windows would repeat tokens).
# (Named so, not "outputs": that is tritonclient's keyword for the requested tensors. The clients take it
# as ``outputs=[...]``, the gateway's bge-m3 routes as "outputs" too: gateway/tembed_gateway/m3_routes.py.)
OUTPUTS = "embedding_outputs"  # BYTES [1], optional: a comma-separated set of OUTPUT_KINDS, in that order
OUTPUT_KINDS = ("dense", "sparse", "colbert")
OUTPUT_DENSE, OUTPUT_SPARSE, OUTPUT_COLBERT = OUTPUT_KINDS
OUTPUTS_VALUES = tuple(
    ",".join(k for i, k in enumerate(OUTPUT_KINDS) if bits >> i & 1) for bits in range(1, 1 << len(OUTPUT_KINDS))
)
OUTPUTS_DEFAULT = OUTPUT_DENSE
# Sparse: every text's (token id, weight) pairs, concatenated; SPARSE_COUNT says how many are each text's.
SPARSE_IDS = "sparse_ids"  # INT32 [pairs, 1]
SPARSE_WEIGHTS = "sparse_weights"  # FP32 [pairs, 1]
SPARSE_COUNT = "sparse_count"  # INT32 [n, 1]
# Multi-vectors: every text's vectors, concatenated; MULTI_VECTOR_COUNT says how many are each text's.
MULTI_VECTORS = "multi_vectors"  # FP32 [vectors, hidden]
MULTI_VECTOR_COUNT = "multi_vector_count"  # INT32 [n, 1]
M3_TENSORS = (SPARSE_IDS, SPARSE_WEIGHTS, SPARSE_COUNT, MULTI_VECTORS, MULTI_VECTOR_COUNT)
PARAM_OUTPUTS = "outputs"  # ensemble parameter: the OUTPUT_KINDS the model has, comma-separated
# The M3 score of a (query, document) pair, FlagEmbedding's compute_score "colbert+sparse+dense":
# (w_dense * dense + w_sparse * sparse + w_colbert * colbert) / (w_dense + w_sparse + w_colbert), with its
# default weights [1, 1, 1] (BGEM3FlagModel.compute_score_single_device, FlagEmbedding 1.4.2).
M3_WEIGHTS_DEFAULT = (1.0, 1.0, 1.0)


def outputs_value(kinds: object) -> str:
    """The OUTPUTS option's value for a set of kinds ("dense,colbert"; a str passes through unchanged)."""
    if isinstance(kinds, str):
        return kinds
    wanted = set(kinds)  # type: ignore[call-overload]
    unknown = wanted - set(OUTPUT_KINDS)
    if unknown or not wanted:
        return ",".join(sorted(map(str, unknown))) or ""
    return ",".join(k for k in OUTPUT_KINDS if k in wanted)


def output_kinds(value: str) -> tuple[str, ...]:
    return tuple(k for k in value.split(",") if k)


# The request's lane: interactive queries (high, the default) ahead of bulk indexing (low) in the encoder's
# queue. Not an input tensor: a lane is a model of its own (PARAM_LANES: the bulk lane's ensemble and
# encoder over the same weights), so a query never queues behind bulk work. Triton's own priority levels
# stall in tritonserver 2.51 as queue policies do (docs/RELIABILITY.md); a model without lanes gets the
# request's Triton priority (INFER_PRIORITY), which a batcher without priority_levels ignores.
PRIORITY = "priority"
PRIORITY_VALUES = ("high", "low")
PRIORITY_DEFAULT = "high"  # queries (tembed search, any request that names none)
PRIORITY_BULK = "low"  # bulk indexing (tembed index, build_index)
PRIORITY_LEVELS = {v: i + 1 for i, v in enumerate(PRIORITY_VALUES)}  # Triton's levels: 1 is served first
INFER_PRIORITY = "priority"  # tritonclient's infer() keyword that carries it

# Rerank ensemble: inputs (INSTRUCTION, optional, for models whose prompt carries one) and outputs
# (TOKEN_COUNT, one per document: tokens of its pair as scored).
QUERY = "query"  # BYTES [1]
DOCUMENTS = "documents"  # BYTES [n]
SCORE = "score"  # FP32 [n]: relevance of each document to the query, in (0, 1) for sigmoid heads
# Long documents reranked whole (long_text chunk on a reranker): a document over the model's max_length is
# split into windows of its tokens, each scored with the query (and the prompt) as a pair of its own, and its
# score is the maximum over its windows (Cohere's max_chunks_per_doc aggregation); neighbours share at least
# the profile's chunk_overlap tokens, windows spread evenly. A document that fits is one row, scored exactly as
# without chunking. Over PARAM_MAX_WINDOWS windows per document, or PARAM_MAX_ROWS windows per request, the
# request is refused (CONTEXT_LENGTH_EXCEEDED naming the document, its windows and the limit). SCORE and
# TOKEN_COUNT then have one row per window, DOCUMENT_INDEX saying whose; the clients aggregate them.
DOCUMENT_INDEX = "document_index"  # INT32 [rows]: the document of each SCORE row (rows of one are consecutive)

# Keys of the ensemble config's ``parameters``: what a client needs without reading the profile.
PARAM_TASK = "task"
PARAM_MAX_TEXTS = "max_texts"
PARAM_DIMENSION = "dimension"
PARAM_MIN_DIMENSION = "min_dimension"
PARAM_MAX_LENGTH = "max_length"
PARAM_MODEL_TYPE = "model_type"
PARAM_POOLING = "pooling"
PARAM_INSTRUCTION = "instruction"  # "yes" when the model takes an instruction
PARAM_MAX_TEXT_BYTES = "max_text_bytes"  # UTF-8 bytes of one text (or document, or query)
PARAM_MAX_REQUEST_BYTES = "max_request_bytes"  # UTF-8 bytes of all texts of one request
PARAM_MAX_WINDOWS = "max_windows"  # long_text chunk: windows of one text
PARAM_MAX_ROWS = "max_rows"  # long_text chunk: windows of all texts of one request (>= max_texts)
# The embedding ensemble's tokenizer, for clients that tokenize without embedding: the Triton model
# to call with the ensemble's inputs, and its token-id and attention-mask outputs ("ids,mask").
PARAM_TOKENIZER = "tokenizer"
PARAM_TOKENIZER_OUTPUTS = "tokenizer_outputs"
# Priority lanes (PRIORITY) as models of their own: the ensemble's PARAM_LANES says which ensemble serves a
# lane other than the default ("low=NAME-lane-low"), through its own encoder (its own queue, over the same
# weights); a lane ensemble's PARAM_LANE_OF names the model it is a lane of, and discovery hides it.
PARAM_LANES = "lanes"
PARAM_LANE_OF = "lane_of"
# How the served model is laid out (a profile fact, written once at export): "two-step", an ensemble of a
# tokenizer and an encoder model (and a postprocess model after Triton's native backends), or "one-step",
# one batched Python model that tokenizes and encodes itself (the CPU path: one stub hop per query). A
# one-step model has max_batch_size > 0 and one request per batch row: TEXT [1, n], each option [1, 1],
# every output one row more ([1, n, d]); the client reads max_batch_size and shapes its tensors so.
PARAM_LAYOUT = "layout"
LAYOUT_TWO_STEP, LAYOUT_ONE_STEP = LAYOUTS = ("two-step", "one-step")
LANE_SEPARATOR = "-lane-"


def lane_name(name: str, lane: str) -> str:
    """The model (ensemble or encoder) ``name`` has for ``lane``."""
    return f"{name}{LANE_SEPARATOR}{lane}"


# max_texts of a reranker is its most documents per request; its dimension is 1 (one score).

# Why a request failed: every error the serving side raises names one reason (and, for a request's
# field, the parameter), in the message's tag (``tag_error``); the client reads it back
# (``tembed_client.errors.classify``, the one place where Triton's own prose is matched) and the
# gateway maps it to an HTTP status (``tembed_gateway.errors``). No other code reads message text.
INVALID_ARGUMENT = "invalid_argument"  # a field of the request is wrong (its param says which)
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # a text over max_length (truncate NONE), max_windows or max_rows
TOO_LARGE = "too_large"  # a text or a request over the byte limits (max_text_bytes, max_request_bytes)
UNSUPPORTED = "unsupported"  # the model cannot do this: the other task, or an option its repository predates
MODEL_NOT_FOUND = "model_not_found"  # no served model of that name
OVERLOADED = "overloaded"  # busy now (a full queue, too many in flight): the same request may succeed later
DRAINING = "draining"  # the replica is shutting down and refuses new work: another replica takes it
REPLICA_GONE = "replica_gone"  # the server, the connection or a model's process is down or restarting
DEADLINE_EXCEEDED = "deadline_exceeded"  # the caller's timeout, or the server's queue timeout, passed
CANCELLED = "cancelled"  # the caller went away before the answer
UNAUTHENTICATED = "unauthenticated"  # no or a wrong API key (the gateway)
INTERNAL = "internal"  # a bug or a broken model: not the request's fault
# Each reason's gRPC status, as Triton and tritonclient name it.
REASON_CODES = {
    INVALID_ARGUMENT: "INVALID_ARGUMENT",
    CONTEXT_LENGTH_EXCEEDED: "INVALID_ARGUMENT",
    TOO_LARGE: "INVALID_ARGUMENT",
    UNSUPPORTED: "FAILED_PRECONDITION",
    MODEL_NOT_FOUND: "NOT_FOUND",
    OVERLOADED: "RESOURCE_EXHAUSTED",
    DRAINING: "UNAVAILABLE",
    REPLICA_GONE: "UNAVAILABLE",
    DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    CANCELLED: "CANCELLED",
    UNAUTHENTICATED: "UNAUTHENTICATED",
    INTERNAL: "INTERNAL",
}
REASONS = tuple(REASON_CODES)
# Worth sending again at once to another replica: this one cannot serve now, another may.
FAILOVER_REASONS = (DRAINING, REPLICA_GONE)
# Worth sending again after a pause (RetryPolicy), when no replica could take it now.
RETRY_REASONS = (OVERLOADED, REPLICA_GONE, DRAINING)

# The tag at the end of a serving-side error message: " [tembed REASON]" or " [tembed REASON PARAM]".
# Triton keeps a composing model's message whole inside the ensemble's ("in ensemble 'N', ..."), so
# the tag survives; the client strips it from the message it shows.
ERROR_TAG = "tembed"


def tag_error(message: str, reason: str, param: str | None = None) -> str:
    """``message`` with its machine-readable reason (one of REASONS) and parameter appended."""
    if reason not in REASON_CODES:
        raise ValueError(f"unknown error reason {reason!r}")
    return f"{message} [{ERROR_TAG} {reason}{' ' + param if param else ''}]"


def read_error_tag(message: str) -> tuple[str, str | None, str] | None:
    """(reason, param, the message without its tag) of a tagged message, or None when it has no tag."""
    start = message.rfind(f" [{ERROR_TAG} ")
    end = message.find("]", start)
    if start < 0 or end < 0:
        return None
    reason, _, param = message[start + len(ERROR_TAG) + 3 : end].partition(" ")
    if reason not in REASON_CODES:
        return None
    return reason, param or None, message[:start] + message[end + 1 :]


@dataclass(frozen=True)
class Option:
    """One optional field of a request, declared once: the ensemble input of that name (one value,
    shape [1]), what it takes and which tasks take it. The clients' calls, the gateway's parsing, the
    tokenizer models and the generated configs all read these declarations (``OPTIONS``)."""

    name: str
    datatype: str  # the ensemble input's Triton datatype: "BYTES" (text) or "INT32"
    tasks: tuple[str, ...]
    values: tuple[str, ...] | None = None  # the allowed values; None: any text, or an integer in the model's range
    default: str | None = None  # the value the server assumes without it; None: the model's own
    any_case: bool = False  # values match in any case and are sent upper-cased (truncate)
    tokens: bool = False  # it changes the token ids, so a tokenize call takes it too
    tensor: bool = True  # an ensemble input; False: carried otherwise (PRIORITY: the request's priority)
    aliases: tuple[tuple[str, str], ...] = ()  # (another API's name, the value it means)

    def canonical(self, value: object) -> object:
        """``value`` with an alias replaced by the value it names."""
        return dict(self.aliases).get(value, value) if isinstance(value, str) else value

    def check(self, value: object, low: int = 1, high: int | None = None, model: str = "") -> str | None:
        """Why ``value`` is not valid for this option (``low``/``high``: an integer's range, inclusive),
        or None. Messages start with the option's name."""
        if self.datatype == "INT32":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                return f"{self.name} must be an integer, not {type(value).__name__}"
            if int(value) < low or (high is not None and int(value) > high):
                where = f" for model {model!r}" if model else ""
                if high is not None:
                    return f"{self.name} must be between {low} and {high}{where}, got {value}"
                return f"{self.name} must be a positive integer, got {value!r}"
            return None
        value = self.canonical(value)
        if not isinstance(value, str) and self.values is None:
            return f"{self.name} must be a string, not {type(value).__name__}"
        if self.values is not None and (
            not isinstance(value, str) or (value.upper() if self.any_case else value) not in self.values
        ):
            also = "".join(f" ({a} = {v})" for a, v in self.aliases)
            return f"{self.name} must be one of {', '.join(self.values)}{also}, got {value!r}"
        return None

    def normalize(self, value: object) -> object:
        """The checked value as it is sent: upper-cased for ``any_case`` options, an int for integers."""
        if self.datatype == "INT32":
            return int(value)  # type: ignore[call-overload]
        value = self.canonical(value)
        return value.upper() if self.any_case and isinstance(value, str) else value


OPTIONS = {
    o.name: o
    for o in (
        # Replaces the query task of instruction models (Qwen3-Embedding); a reranker's prompt may carry one.
        Option(INSTRUCTION, "BYTES", (TASK_EMBED, TASK_RERANK), tokens=True),
        # default: the model's document prompt
        Option(INPUT_TYPE, "BYTES", (TASK_EMBED,), INPUT_TYPES, tokens=True, aliases=INPUT_TYPE_ALIASES),
        Option(DIMENSIONS, "INT32", (TASK_EMBED,)),  # Matryoshka size in [min_dimension, dimension]; default: full
        Option(TRUNCATE, "BYTES", (TASK_EMBED,), TRUNCATE_VALUES, TRUNCATE_DEFAULT, any_case=True, tokens=True),
        # A reranker's too: chunk scores each window of a long document (DOCUMENT_INDEX).
        Option(LONG_TEXT, "BYTES", (TASK_EMBED, TASK_RERANK), LONG_TEXT_VALUES, LONG_TEXT_DEFAULT),
        Option(EMBEDDING_TYPE, "BYTES", (TASK_EMBED,), EMBEDDING_TYPES, EMBEDDING_TYPE_DEFAULT),
        Option(OUTPUTS, "BYTES", (TASK_EMBED,), OUTPUTS_VALUES, OUTPUTS_DEFAULT),  # bge-m3: which outputs
        Option(PRIORITY, "BYTES", (TASK_EMBED, TASK_RERANK), PRIORITY_VALUES, PRIORITY_DEFAULT, tensor=False),
    )
}


def options_for(task: str) -> tuple[Option, ...]:
    """The options a task's requests take, in declaration order."""
    return tuple(o for o in OPTIONS.values() if task in o.tasks)


def input_options(task: str) -> tuple[Option, ...]:
    """The options of ``task`` that are ensemble inputs (all but the request's priority)."""
    return tuple(o for o in options_for(task) if o.tensor)


TOKEN_OPTIONS = tuple(o for o in options_for(TASK_EMBED) if o.tokens)  # what a tokenize call takes


def packed_width(embedding_type: str, d: int) -> int:
    """Columns of EMBEDDING_PACKED for ``d``-dimensional vectors of ``embedding_type`` (0 for float)."""
    if embedding_type == EMBEDDING_TYPE_DEFAULT:
        return 0
    return (d + 7) // 8 if embedding_type in BIT_PACKED_TYPES else d
