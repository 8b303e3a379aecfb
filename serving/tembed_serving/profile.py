"""What a served model needs to be served correctly: the profile, one JSON file per model.

It is read once at export from the model's own files (``tembed.hf_folder``), written as
``profile.json`` into the model repository, and read back here by every Python model. Every
config.pbtxt is rendered from it, so a fact such as the padding side exists in exactly one place.
``task`` says what the model does (``embed``; the seam for rerankers and other heads).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .contract import (
    IDS_DTYPES,
    INPUT_TYPES,
    LAYOUT_TWO_STEP,
    LAYOUTS,
    OUTPUT_DENSE,
    OUTPUT_KINDS,
    PROFILE_FILE,
    TASK_EMBED,
    TASK_RERANK,
    TASKS,
)

POOLINGS = ("mean", "cls", "last")
PAIR_FORMATS = ("prompt", "pair")
RERANK_HEADS = ("lm_yes_no", "seq_cls")
ACTIVATIONS = ("sigmoid", "identity")


class ProfileError(ValueError):
    """The model folder does not say enough (or says something contradictory) to serve it."""


@dataclass
class ModelProfile:
    name: str
    model_type: str
    pooling: str
    padding_side: str
    max_length: int
    dimension: int
    min_dimension: int
    pad_token_id: int
    # Token that must end every sequence exactly once (last-token pooling reads its state).
    end_token: str | None = None
    end_token_id: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    default_input_type: str = "document"
    # "Instruct: {instruction}\nQuery:" when the model's query prompt carries a replaceable task.
    instruction_template: str | None = None
    default_instruction: str | None = None
    max_texts: int = 64
    length_buckets: list[int] = field(default_factory=list)
    ids_dtype: str = IDS_DTYPES[0]
    source: str = ""
    task: str = TASK_EMBED
    vocab_size: int | None = None  # the encoder's token id range: larger ids are refused per request
    # The model is built by its own code (config.json's auto_map), trusted at export: the torch runner
    # loads it with trust_remote_code; an ONNX graph carries the computation and needs no code.
    trust_remote_code: bool = False
    # Request size limits, enforced by the tokenizer (and checked early by the client and the
    # gateway from the ensemble's parameters): a huge text costs memory and tokenizer time before
    # truncation could cut it.
    max_text_bytes: int = 1 << 20
    max_request_bytes: int = 8 << 20
    # long_text "chunk" (textproc.TextEncoder): windows per text, encoder rows per request (every
    # window of every text; never below max_texts, so chunking never refuses what truncation takes)
    # and the tokens two neighbouring windows share at least. 0 (overlap: -1): chunk_defaults().
    max_windows: int = 0
    max_rows: int = 0
    chunk_overlap: int = -1
    # embedding_type int8/uint8: per-dimension [min, max] of unit vectors at each calibrated output
    # size ("384": [[min_0, ...], [max_0, ...]]), measured at export on the calibration set.
    int8_ranges: dict[str, list[list[float]]] = field(default_factory=dict)
    # The encoder graph's precision ("fp32", or "int8" when `--quantize int8` passed its retrieval
    # gate) and the quantisation method kept (tembed.quantize.METHODS), written by the export.
    precision: str = "fp32"
    quantization: str | None = None
    # What runs the encoder graph: a tembed_serving.runners name for a Python-backend encoder
    # (onnxruntime, openvino, torch), else the Triton backend (onnxruntime, tensorrt); written by the export.
    runner: str = "onnxruntime"
    # task "rerank": how a (query, document) pair becomes one sequence and its score.
    # pair_format "prompt": prefix + pair_template.format(instruction, query, document) + suffix, one
    # sequence (Qwen3-Reranker); "pair": the tokenizer's own pair template ([CLS] q [SEP] d [SEP]).
    pair_format: str | None = None
    pair_template: str | None = None
    rerank_prefix: str = ""
    rerank_suffix: str = ""
    # rerank_head "lm_yes_no": sigmoid(logit(yes) - logit(no)) at the last position (= softmax over
    # the two); "seq_cls": the classifier's one logit through ``activation``.
    rerank_head: str | None = None
    yes_token_id: int | None = None
    no_token_id: int | None = None
    sep_token_id: int | None = None  # "pair" models with segment ids: the [SEP] that ends the query
    activation: str = "sigmoid"
    # The outputs the exported graph has (contract.OUTPUT_KINDS), written once at export: ["dense"],
    # or bge-m3's three when its sparse and ColBERT heads lie beside the weights. The sparse weights
    # leave out ``special_token_ids`` (CLS, EOS, PAD, UNK: FlagEmbedding's unused tokens).
    outputs: list[str] = field(default_factory=lambda: [OUTPUT_DENSE])
    special_token_ids: list[int] = field(default_factory=list)
    # How the repository serves the model (contract.LAYOUTS), written once at export: "two-step" (an
    # ensemble: tokenizer, encoder and, after Triton's native backends, postprocess) or "one-step" (one
    # batched Python model tokenizes and runs ONNX Runtime: one stub hop per query on CPU).
    layout: str = LAYOUT_TWO_STEP

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ProfileError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == TASK_RERANK:
            self._check_rerank()
        if self.pooling not in POOLINGS:
            raise ProfileError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.padding_side not in ("left", "right"):
            raise ProfileError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not 1 <= self.min_dimension <= self.dimension:
            raise ProfileError(f"min_dimension {self.min_dimension} outside [1, {self.dimension}]")
        if self.default_input_type not in INPUT_TYPES:
            raise ProfileError(f"default_input_type must be one of {INPUT_TYPES}")
        if self.task == TASK_EMBED and self.pooling == "last" and self.end_token_id is None:
            raise ProfileError("last-token pooling needs an end token (none in the tokenizer template or config.json)")
        if not self.length_buckets:
            self.length_buckets = default_buckets(self.max_length)
        windows, rows, overlap = chunk_defaults(self.max_length, self.max_texts)
        self.max_windows = self.max_windows or windows
        self.max_rows = max(self.max_rows or rows, self.max_texts)
        self.chunk_overlap = overlap if self.chunk_overlap < 0 else self.chunk_overlap
        if not self.outputs or set(self.outputs) - set(OUTPUT_KINDS) or OUTPUT_DENSE not in self.outputs:
            raise ProfileError(f"outputs must be dense plus any of {OUTPUT_KINDS[1:]}, got {self.outputs!r}")
        if self.layout not in LAYOUTS:
            raise ProfileError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.max_windows < 1:
            raise ProfileError(f"max_windows must be >= 1, got {self.max_windows}")

    def _check_rerank(self) -> None:
        if self.pair_format not in PAIR_FORMATS:
            raise ProfileError(f"pair_format must be one of {PAIR_FORMATS} for a reranker, got {self.pair_format!r}")
        if self.rerank_head not in RERANK_HEADS:
            raise ProfileError(f"rerank_head must be one of {RERANK_HEADS}, got {self.rerank_head!r}")
        if self.activation not in ACTIVATIONS:
            raise ProfileError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.pair_format == "prompt" and not self.pair_template:
            raise ProfileError("a prompt reranker needs a pair_template with {query} and {document}")
        if self.rerank_head == "lm_yes_no" and (self.yes_token_id is None or self.no_token_id is None):
            raise ProfileError("a yes/no reranker needs the token ids of 'yes' and 'no'")

    @property
    def encoder_rows(self) -> int:
        """Most rows one request gives the encoder (its max_batch_size): a reranker's pairs, or the
        windows of an embedding request under long_text chunk."""
        return self.max_rows  # a reranker's windows too (long_text chunk): max_rows >= max_texts

    @property
    def multi_output(self) -> bool:
        """More than the dense vector (bge-m3): the encoder answers the request's OUTPUTS."""
        return len(self.outputs) > 1

    @property
    def takes_instruction(self) -> bool:
        if self.task == TASK_RERANK:
            return bool(self.pair_template and "{instruction}" in self.pair_template)
        return self.instruction_template is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def save(self, folder: Path) -> Path:
        path = Path(folder) / PROFILE_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> ModelProfile:
        path = Path(path)
        if path.is_dir():
            path = path / PROFILE_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def prompt_for(self, input_type: str) -> str:
        return self.prompts.get(input_type, "")

    def bucket(self, length: int) -> int:
        """Smallest bucket >= length: requests of similar length share a shape and can be batched."""
        for b in self.length_buckets:
            if b >= length:
                return b
        return self.max_length


# long_text chunk's reach: about the 32k-token inputs of the long-context models (Qwen3-Embedding,
# bge-m3 at 8k x 4), whatever the model's own max length.
CHUNK_TEXT_TOKENS = 32768


def chunk_defaults(max_length: int, max_texts: int) -> tuple[int, int, int]:
    """(max_windows, max_rows, chunk_overlap) written at export when not given.

    e5-small (512 tokens): 64 windows per text (~30k text tokens), 64 rows per request, 32 tokens of
    overlap. A request holds max_texts rows or one text of max_windows windows, whichever is more:
    at 64 texts of 512 tokens the encoder's max_batch_size, so the dynamic batcher and the TensorRT
    profiles stay as they were. The overlap is a sixteenth of a window: a sentence (20-30 tokens)
    cut by one window's edge is whole in its neighbour, for ~7 % more encoder work. More buys
    nothing measurable: on the eval's 20k-character document, 0 to 256 tokens of overlap moved
    cos(paragraph, document) by under 0.0005 while the windows grew from 30 to 59 (docs/QUALITY.md)."""
    windows = max(1, CHUNK_TEXT_TOKENS // max_length)
    return windows, max(max_texts, windows), max_length // 16


def default_buckets(max_length: int) -> list[int]:
    buckets, b = [], 16
    while b < max_length:
        buckets.append(b)
        b *= 2
    return [*buckets, max_length]
