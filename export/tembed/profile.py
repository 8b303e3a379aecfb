"""What a served embedding model needs to be served correctly, read from the model's own files.

A profile is read once at export from a Hugging Face folder (``config.json``, the tokenizer
files, and sentence-transformers' ``modules.json`` / ``1_Pooling/config.json`` /
``config_sentence_transformers.json`` / ``sentence_bert_config.json``), then written as
``profile.json`` into the model repository. Every config.pbtxt is rendered from it and every
Python model reads it back, so a fact such as the padding side exists in exactly one place.
Nothing here looks at the model's name.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

POOLINGS = ("mean", "cls", "last")
INPUT_TYPES = ("query", "document")
# Decoder-only architectures embed through the last token (causal attention: only the last
# position has seen the whole text). Used only when the folder has no sentence-transformers files.
DECODER_TYPES = {"qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3_text", "phi3"}
# The Qwen3-Embedding / e5-instruct query prompt: "Instruct: {task}\nQuery:" (a space after
# "Query:" in some releases). The task is the part a request may replace.
INSTRUCT_RE = re.compile(r"^Instruct: (?P<task>.*)\nQuery:(?P<sep>\s?)$", re.S)
DEFAULT_MIN_DIMENSION = 32
PROFILE_FILE = "profile.json"


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
    ids_dtype: str = "int64"
    source: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ProfileError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.padding_side not in ("left", "right"):
            raise ProfileError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not 1 <= self.min_dimension <= self.dimension:
            raise ProfileError(f"min_dimension {self.min_dimension} outside [1, {self.dimension}]")
        if self.default_input_type not in INPUT_TYPES:
            raise ProfileError(f"default_input_type must be one of {INPUT_TYPES}")
        if self.pooling == "last" and self.end_token_id is None:
            raise ProfileError("last-token pooling needs an end token (none in the tokenizer template or config.json)")
        if not self.length_buckets:
            self.length_buckets = default_buckets(self.max_length)

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


def default_buckets(max_length: int) -> list[int]:
    buckets, b = [], 16
    while b < max_length:
        buckets.append(b)
        b *= 2
    return [*buckets, max_length]


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _pooling_from_st(folder: Path) -> str | None:
    modules = _read_json(folder / "modules.json") or []
    for mod in modules:
        if mod.get("type", "").endswith("Pooling"):
            cfg = _read_json(folder / mod.get("path", "") / "config.json") or {}
            modes = [
                ("last", cfg.get("pooling_mode_lasttoken")),
                ("cls", cfg.get("pooling_mode_cls_token")),
                ("mean", cfg.get("pooling_mode_mean_tokens")),
            ]
            chosen = [m for m, on in modes if on]
            if len(chosen) != 1:
                raise ProfileError(
                    f"{folder}: pooling config enables {chosen or 'no supported mode'}; need exactly one"
                )
            return chosen[0]
    return None


def _end_token_from_template(tok: dict) -> str | None:
    """The special token a TemplateProcessing post-processor appends after the text, if any."""

    def walk(proc):
        if not proc:
            return None
        if proc.get("type") == "Sequence":
            for p in proc.get("processors", []):
                found = walk(p)
                if found:
                    return found
            return None
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            if single and "SpecialToken" in single[-1]:
                return single[-1]["SpecialToken"]["id"]
        return None

    return walk(tok.get("post_processor"))


def _token_id(tok: dict, token: str) -> int | None:
    for t in tok.get("added_tokens", []):
        if t["content"] == token:
            return t["id"]
    vocab = (tok.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        return vocab.get(token)
    return None


def _id_token(tok: dict, token_id: int) -> str | None:
    for t in tok.get("added_tokens", []):
        if t["id"] == token_id:
            return t["content"]
    return None


def _token_str(value) -> str | None:
    if isinstance(value, dict):  # tokenizer_config may hold AddedToken dicts
        return value.get("content")
    return value


def read_profile(
    folder: Path,
    *,
    name: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    min_dimension: int | None = None,
    max_texts: int = 64,
    padding_side: str | None = None,
    prompts: dict[str, str] | None = None,
    end_token: str | None = None,
    ids_dtype: str = "int64",
) -> ModelProfile:
    """Build the profile of the model in ``folder``; keyword arguments override what the files say."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        raise ProfileError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
    tok = _read_json(folder / "tokenizer.json")
    if tok is None:
        raise ProfileError(f"{folder}: no tokenizer.json (a fast tokenizer is required)")
    tok_cfg = _read_json(folder / "tokenizer_config.json") or {}
    st_cfg = _read_json(folder / "config_sentence_transformers.json") or {}
    sbert = _read_json(folder / "sentence_bert_config.json") or {}
    model_type = config.get("model_type", "")

    pooling = pooling or _pooling_from_st(folder) or ("last" if model_type in DECODER_TYPES else "mean")
    padding_side = padding_side or tok_cfg.get("padding_side") or ("left" if pooling == "last" else "right")

    limits = [sbert.get("max_seq_length"), tok_cfg.get("model_max_length")]
    pos = config.get("max_position_embeddings")
    if pos:
        # XLM-R numbers positions from pad_token_id + 1, so two position slots are never used.
        limits.append(pos - 2 if model_type in ("xlm-roberta", "roberta", "camembert") else pos)
    limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 10_000_000]
    if max_length is None:
        if not limits:
            raise ProfileError(f"{folder}: no max length in any file; pass max_length")
        max_length = min(limits)

    dimension = int(config.get("hidden_size") or config.get("d_model") or 0)
    if not dimension:
        raise ProfileError(f"{folder}: config.json has no hidden_size")
    if min_dimension is None:
        dims = st_cfg.get("matryoshka_dims") or config.get("matryoshka_dimensions")
        min_dimension = min(dims) if dims else min(DEFAULT_MIN_DIMENSION, dimension)

    pad_token = _token_str(tok_cfg.get("pad_token"))
    pad_id = _token_id(tok, pad_token) if pad_token else None
    if pad_id is None:
        pad_id = config.get("pad_token_id")
    if pad_id is None:
        pad_id = 0

    end_id = None
    if pooling == "last":
        end_token = end_token or _end_token_from_template(tok)
        if end_token is None and config.get("eos_token_id") is not None:
            eos = config["eos_token_id"]
            end_id = eos[0] if isinstance(eos, list) else eos
            end_token = _id_token(tok, end_id)
        if end_token is not None:
            end_id = _token_id(tok, end_token)
            if end_id is None:
                raise ProfileError(f"{folder}: end token {end_token!r} is not in the tokenizer")
    else:
        end_token = None

    if prompts is None:
        prompts = {k: v for k, v in (st_cfg.get("prompts") or {}).items() if k in INPUT_TYPES}
    default_input_type = st_cfg.get("default_prompt_name") or "document"
    if default_input_type not in INPUT_TYPES:
        default_input_type = "document"

    template = default_instruction = None
    m = INSTRUCT_RE.match(prompts.get("query", ""))
    if m:
        template = "Instruct: {instruction}\nQuery:" + m.group("sep")
        default_instruction = m.group("task")

    return ModelProfile(
        name=name or folder.name.lower(),
        model_type=model_type,
        pooling=pooling,
        padding_side=padding_side,
        max_length=int(max_length),
        dimension=dimension,
        min_dimension=int(min_dimension),
        pad_token_id=int(pad_id),
        end_token=end_token,
        end_token_id=end_id,
        prompts=prompts,
        default_input_type=default_input_type,
        instruction_template=template,
        default_instruction=default_instruction,
        max_texts=max_texts,
        ids_dtype=ids_dtype,
        source=str(folder),
    )
