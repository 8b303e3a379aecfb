"""The served ensembles' public interface: tensor names, option values and config parameters.

The one place these are written. The client builds requests from them, the server's runtime
(``tembed_serving``) validates and renders configs from them, the gateway maps HTTP fields onto
them. Plain Python with no dependencies, so a Triton stub can import it for nothing.
"""

from __future__ import annotations

import numbers

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

INPUT_TYPES = ("query", "document")
# What happens to a text over the model's max_length tokens:
#   END   cut tokens at its end (the default);
#   START cut tokens at the start of the text, after the prompt: the prompt, the text's end and
#         the model's special tokens (the end token of last-token models) are kept;
#   NONE  refuse the request (INVALID_ARGUMENT naming the text, its token count and the limit).
TRUNCATE_VALUES = ("END", "START", "NONE")
TRUNCATE_DEFAULT = "END"
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

# Rerank ensemble: inputs (INSTRUCTION, optional, for models whose prompt carries one) and outputs
# (TOKEN_COUNT, one per document: tokens of its pair as scored).
QUERY = "query"  # BYTES [1]
DOCUMENTS = "documents"  # BYTES [n]
SCORE = "score"  # FP32 [n]: relevance of each document to the query, in (0, 1) for sigmoid heads

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
# max_texts of a reranker is its most documents per request; its dimension is 1 (one score).


def dimensions_error(d: object, min_dimension: int, dimension: int, model: str) -> str | None:
    """Why ``d`` is not a valid Matryoshka size for this model, or None when it is."""
    if isinstance(d, bool) or not isinstance(d, numbers.Integral):
        return f"dimensions must be an integer, not {type(d).__name__}"
    if not min_dimension <= int(d) <= dimension:
        return f"dimensions must be between {min_dimension} and {dimension} for model {model!r}, got {d}"
    return None


def packed_width(embedding_type: str, d: int) -> int:
    """Columns of EMBEDDING_PACKED for ``d``-dimensional vectors of ``embedding_type`` (0 for float)."""
    if embedding_type == EMBEDDING_TYPE_DEFAULT:
        return 0
    return (d + 7) // 8 if embedding_type in BIT_PACKED_TYPES else d


def option_error(name: str, value: object, allowed: tuple[str, ...]) -> str | None:
    """Why ``value`` is not one of ``allowed`` for option ``name`` (exact spelling), or None."""
    if not isinstance(value, str) or value not in allowed:
        return f"{name} must be one of {', '.join(allowed)}, got {value!r}"
    return None


def truncate_error(value: object) -> str | None:
    """Why ``value`` is not a truncate option, or None when it is (any case: "start" is START)."""
    if not isinstance(value, str) or value.upper() not in TRUNCATE_VALUES:
        return f"truncate must be one of {', '.join(TRUNCATE_VALUES)}, got {value!r}"
    return None
