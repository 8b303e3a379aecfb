"""The server side of the contract, written once: tensor names between the composing models, the
encoder's parameters, and where each file of a served model lies in the repository.

The ensemble's public tensors, option values and parameters are the client's
(:mod:`tembed_client.contract`): imported here, never restated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tembed_client.contract import (  # noqa: F401  (re-exported: the runtime's one import for the contract)  # noqa: F401, I001  (re-exported: the error taxonomy and the option schema)
    BIT_PACKED_TYPES,
    CANCELLED,
    CONTEXT_LENGTH_EXCEEDED,
    DIMENSIONS,
    DOCUMENT_INDEX,
    DOCUMENTS,
    EMBEDDING,
    EMBEDDING_DTYPES,
    EMBEDDING_PACKED,
    EMBEDDING_TYPE,
    EMBEDDING_TYPE_DEFAULT,
    EMBEDDING_TYPES,
    ENCODE_NS,
    INPUT_TYPE,
    INPUT_TYPES,
    INSTRUCTION,
    INTERNAL,
    INVALID_ARGUMENT,
    LANE_SEPARATOR,
    LAYOUT_ONE_STEP,
    LAYOUT_TWO_STEP,
    LAYOUTS,
    LONG_TEXT,
    LONG_TEXT_CHUNK,
    LONG_TEXT_DEFAULT,
    LONG_TEXT_VALUES,
    M3_TENSORS,
    MULTI_VECTOR_COUNT,
    MULTI_VECTORS,
    OPTIONS,
    OUTPUT_COLBERT,
    OUTPUT_DENSE,
    OUTPUT_KINDS,
    OUTPUT_SPARSE,
    OUTPUTS,
    OUTPUTS_DEFAULT,
    PARAM_DIMENSION,
    PARAM_INSTRUCTION,
    PARAM_LANE_OF,
    PARAM_LANES,
    PARAM_LAYOUT,
    PARAM_MAX_LENGTH,
    PARAM_MAX_REQUEST_BYTES,
    PARAM_MAX_ROWS,
    PARAM_MAX_TEXT_BYTES,
    PARAM_MAX_TEXTS,
    PARAM_MAX_WINDOWS,
    PARAM_MIN_DIMENSION,
    PARAM_MODEL_TYPE,
    PARAM_OUTPUTS,
    PARAM_POOLING,
    PARAM_TASK,
    PARAM_TOKENIZER,
    PARAM_TOKENIZER_OUTPUTS,
    PRIORITY,
    PRIORITY_BULK,
    PRIORITY_DEFAULT,
    PRIORITY_LEVELS,
    PRIORITY_VALUES,
    QUERY,
    REASON_CODES,
    SCORE,
    SPARSE_COUNT,
    SPARSE_IDS,
    SPARSE_WEIGHTS,
    TASK_EMBED,
    TASK_RERANK,
    TASKS,
    TEXT,
    TOKEN_COUNT,
    TOKEN_COUNT_ORIGINAL,
    TOKENIZE_NS,
    TOO_LARGE,
    TRUNCATE,
    TRUNCATE_DEFAULT,
    TRUNCATE_END,
    TRUNCATE_NONE,
    TRUNCATE_START,
    TRUNCATE_VALUES,
    UNSUPPORTED,
    Option,
    input_options,
    lane_name,
    options_for,
    output_kinds,
    packed_width,
    tag_error,
)

# Between the composing models (never seen by a client).
INPUT_IDS = "input_ids"  # [n, bucket], the profile's ids dtype
ATTENTION_MASK = "attention_mask"  # [n, bucket], same dtype
ENCODER_INPUTS = (INPUT_IDS, ATTENTION_MASK)
FULL_EMBEDDING = "full_embedding"  # the encoder's output inside the ensemble, before Matryoshka
DIMENSIONS_CHECKED = "dimensions_checked"  # INT32 [1]: the validated output size
EMBEDDING_TYPE_CHECKED = "embedding_type_checked"  # INT32 [1]: index of the request's type in EMBEDDING_TYPES
# The encoder's rows are not always the request's texts (long_text chunk embeds a long text as
# several windows): which text each row belongs to (rows of a text are consecutive, texts in order),
# and the row's weight in its text's mean (its tokens).
ROW_TEXT = "row_text"  # INT32 [rows]
ROW_WEIGHT = "row_weight"  # FP32 [rows]
# The same facts for an encoder that finishes the vectors itself (a Python-backend runner: no
# postprocess step). A batched model's inputs all start with the request's rows, so the request's
# options travel as one copy per row: (ROW_TEXT, the checked dimensions, the embedding type's index).
ROW_OPTIONS = "row_options"  # INT32 [rows, 3]
ROW_OPTION_COLUMNS = 3
ROW_WEIGHT_COLUMN = "row_weight_column"  # FP32 [rows, 1]: ROW_WEIGHT
# bge-m3 (a profile with more outputs than dense): the request's OUTPUTS as a bit mask (bit i:
# OUTPUT_KINDS[i]), one copy per row like ROW_OPTIONS; and the graph's per-token outputs beside the
# embedding: each token's lexical weight relu(sparse_linear(h)) [b, s] and its ColBERT vector
# normalize(colbert_linear(h)) [b, s, hidden] (every position: the serving side drops the CLS and padding).
ROW_OUTPUTS = "row_outputs"  # INT32 [rows, 1]
TOKEN_WEIGHTS = "token_weights"
TOKEN_VECTORS = "token_vectors"
# The graph's outputs for each of a profile's output kinds.
GRAPH_OUTPUTS = {OUTPUT_DENSE: EMBEDDING, OUTPUT_SPARSE: TOKEN_WEIGHTS, OUTPUT_COLBERT: TOKEN_VECTORS}
# The encoder graph's output (ONNX, TensorRT) and the encoder model's output tensor, per task:
# embedding [b, dimension] (unit length) or score [b, 1].
ENCODER_OUTPUTS = {TASK_EMBED: EMBEDDING, TASK_RERANK: SCORE}
ENCODER_OUTPUT = ENCODER_OUTPUTS[TASK_EMBED]

# The encoder model's config parameters (Python-backend runners).
PARAM_RUNNER = "runner"  # a key of tembed_serving.runners.RUNNERS
PARAM_DTYPE = "dtype"  # torch runner
PARAM_CUDA_GRAPH_TOKENS = "cuda_graph_tokens"  # torch runner on a GPU: lone rows up to this long replay CUDA graphs

# Files inside a model's version folder.
VERSION = "1"
PROFILE_FILE = "profile.json"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
HF_DIR = "hf"  # the Hugging Face folder the torch runner loads
TORCH_DTYPES = ("bfloat16", "float16", "float32")  # the torch runner's PARAM_DTYPE values; the first is the default

IDS_DTYPES = ("int64", "int32")  # token-id tensors between the models; the first is the default

ROLES = ("ensemble", "tokenizer", "encoder", "postprocess")
# Requests each Python stub is executing, a gauge on Triton's metrics port ({model, pid} labels): with
# Triton's nv_inference_pending_request_count (queued, not executing) the supervisor's exact in-flight count.
EXECUTING_METRIC = "tembed_executing_requests"


def model_names(name: str) -> dict[str, str]:
    """The Triton model name of each role of served model ``name``."""
    return {role: name if role == "ensemble" else f"{name}-{role}" for role in ROLES}


@dataclass(frozen=True)
class Layout:
    """Where served model ``name``'s files lie in ``repo``.

    Under the one-step layout (the profile's ``layout``, written at export) the model clients call runs
    the encoder itself: the encoder role is that model (its config, and the graph in its version
    folder); the tokenizer model stays beside it for ``tokenize`` and holds the profile as ever."""

    repo: Path
    name: str

    @property
    def one_step(self) -> bool:
        """Whether the exported profile says ``LAYOUT_ONE_STEP`` (read each time: an export rewrites it)."""
        path = self.profile_file
        if not path.is_file():
            return False
        return json.loads(path.read_text(encoding="utf-8")).get("layout") == LAYOUT_ONE_STEP

    def model_dir(self, role: str) -> Path:
        if role == "encoder" and self.one_step:
            role = "ensemble"
        return Path(self.repo) / model_names(self.name)[role]

    def version_dir(self, role: str) -> Path:
        return self.model_dir(role) / VERSION

    @property
    def tokenizer_file(self) -> Path:
        return self.version_dir("tokenizer") / TOKENIZER_FILE

    @property
    def profile_file(self) -> Path:
        return self.version_dir("tokenizer") / PROFILE_FILE

    @property
    def onnx_file(self) -> Path:
        return self.version_dir("encoder") / ONNX_FILE

    @property
    def plan_file(self) -> Path:
        return self.version_dir("encoder") / PLAN_FILE

    @property
    def hf_dir(self) -> Path:
        return self.version_dir("encoder") / HF_DIR
