"""Read a Hugging Face model folder into a :class:`~tembed_serving.profile.ModelProfile`.

Each fact comes from the model's own files (``config.json``, the tokenizer files, and
sentence-transformers' ``modules.json`` / ``1_Pooling/config.json`` /
``config_sentence_transformers.json`` / ``sentence_bert_config.json``), one small function per
fact, in the order the README's table lists them. Nothing here looks at the model's name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tembed_serving.contract import INPUT_TYPES, OUTPUT_DENSE, OUTPUT_KINDS, TASK_EMBED, TASK_RERANK
from tembed_serving.profile import ModelProfile, ProfileError

# Decoder-only architectures embed through the last token (causal attention: only the last
# position has seen the whole text). Used only when the folder has no sentence-transformers files.
DECODER_TYPES = {"qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3_text", "phi3"}
# The Qwen3-Embedding / e5-instruct query prompt: "Instruct: {task}\nQuery:" (a space after
# "Query:" in some releases). The task is the part a request may replace.
INSTRUCT_RE = re.compile(r"^Instruct: (?P<task>.*)\nQuery:(?P<sep>\s?)$", re.S)
DEFAULT_MIN_DIMENSION = 32

# Qwen3-Reranker's prompt, as its model card publishes it (no file of the release holds it): a judge
# that answers "yes" or "no"; the score is the probability of "yes".
QWEN3_RERANK_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the"
    ' answer can only be "yes" or "no".'
)
QWEN3_RERANK_PREFIX = f"<|im_start|>system\n{QWEN3_RERANK_SYSTEM}<|im_end|>\n<|im_start|>user\n"
QWEN3_RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_RERANK_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
QWEN3_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# sentence-transformers' CrossEncoder records its activation as a class path.
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity"}
# Other names config_sentence_transformers.json gives an input type's prompt, tried after the input
# type's own (sentence-transformers' convention): MTEB's "passage" (e5, nomic-embed-text-v2) and nomic's
# task names.
QUERY, DOCUMENT = INPUT_TYPES
PROMPT_ALIASES = {QUERY: ("search_query",), DOCUMENT: ("passage", "search_document")}


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


@dataclass(frozen=True)
class ModelFiles:
    """The JSON files of a Hugging Face folder that say how to serve it, read once."""

    folder: Path
    config: dict
    tokenizer: dict
    tokenizer_config: dict
    st_config: dict  # config_sentence_transformers.json
    sbert: dict  # sentence_bert_config.json

    @classmethod
    def read(cls, folder: Path) -> ModelFiles:
        folder = Path(folder)
        config = _read_json(folder / "config.json")
        if config is None:
            raise ProfileError(f"{folder}: no config.json (is this a Hugging Face model folder?)")
        tok = _read_json(folder / "tokenizer.json")
        if tok is None:
            raise ProfileError(f"{folder}: no tokenizer.json (a fast tokenizer is required)")
        return cls(
            folder,
            config,
            tok,
            _read_json(folder / "tokenizer_config.json") or {},
            _read_json(folder / "config_sentence_transformers.json") or {},
            _read_json(folder / "sentence_bert_config.json") or {},
        )

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "")


def read_pooling(f: ModelFiles) -> str:
    """sentence-transformers' pooling config; else decoders pool the last token, encoders the mean."""
    return _pooling_from_st(f.folder) or ("last" if f.model_type in DECODER_TYPES else "mean")


def read_padding_side(f: ModelFiles, pooling: str) -> str:
    return f.tokenizer_config.get("padding_side") or ("left" if pooling == "last" else "right")


def read_max_length(f: ModelFiles) -> int:
    """The smallest limit any file states."""
    limits = [f.sbert.get("max_seq_length"), f.tokenizer_config.get("model_max_length")]
    pos = f.config.get("max_position_embeddings") or f.config.get("n_positions")
    if pos:
        # XLM-R numbers positions from pad_token_id + 1, so two position slots are never used.
        limits.append(pos - 2 if f.model_type in ("xlm-roberta", "roberta", "camembert") else pos)
    limits = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 10_000_000]
    if not limits:
        raise ProfileError(f"{f.folder}: no max length in any file; pass max_length")
    return min(limits)


def read_dimension(f: ModelFiles) -> int:
    # n_embd: GPT-2-style configs (nomic-bert's).
    dimension = int(f.config.get("hidden_size") or f.config.get("d_model") or f.config.get("n_embd") or 0)
    if not dimension:
        raise ProfileError(f"{f.folder}: config.json has no hidden_size")
    return dimension


def read_min_dimension(f: ModelFiles, dimension: int) -> int:
    dims = f.st_config.get("matryoshka_dims") or f.config.get("matryoshka_dimensions")
    return min(dims) if dims else min(DEFAULT_MIN_DIMENSION, dimension)


def read_pad_token_id(f: ModelFiles) -> int:
    pad_token = _token_str(f.tokenizer_config.get("pad_token"))
    pad_id = _token_id(f.tokenizer, pad_token) if pad_token else None
    if pad_id is None:
        pad_id = f.config.get("pad_token_id")
    return 0 if pad_id is None else int(pad_id)


def read_end_token(f: ModelFiles, pooling: str, end_token: str | None = None) -> tuple[str | None, int | None]:
    """For last-token pooling: the token every sequence must end with (the tokenizer's template,
    else ``eos_token_id``) and its id. Other poolings need none."""
    if pooling != "last":
        return None, None
    end_id = None
    end_token = end_token or _end_token_from_template(f.tokenizer)
    if end_token is None and f.config.get("eos_token_id") is not None:
        eos = f.config["eos_token_id"]
        end_id = eos[0] if isinstance(eos, list) else eos
        end_token = _id_token(f.tokenizer, end_id)
    if end_token is not None:
        end_id = _token_id(f.tokenizer, end_token)
        if end_id is None:
            raise ProfileError(f"{f.folder}: end token {end_token!r} is not in the tokenizer")
    return end_token, end_id


def read_vocab_size(f: ModelFiles) -> int | None:
    size = f.config.get("vocab_size")
    return int(size) if size else None


def read_prompts(f: ModelFiles) -> dict[str, str]:
    prompts = f.st_config.get("prompts") or {}
    found = {}
    for input_type in INPUT_TYPES:
        names = (input_type, *PROMPT_ALIASES.get(input_type, ()))
        name = next((n for n in names if n in prompts), None)
        if name is not None:
            found[input_type] = prompts[name]
    return found


def read_remote_code(f: ModelFiles) -> dict[str, str]:
    """config.json's ``auto_map``: the folder's own classes (``AutoModel`` ->
    ``modeling_x.XModel``, or ``owner/repo--modeling_x.XModel`` for code kept in another repository)
    that transformers imports and runs to build the model, in place of its own architectures."""
    auto_map = f.config.get("auto_map") or {}
    return {k: v[0] if isinstance(v, list) else v for k, v in auto_map.items() if v}


def check_remote_code(f: ModelFiles, trusted: bool) -> bool:
    """True when the model needs its own code (and the caller trusts it); refuses it untrusted."""
    code = read_remote_code(f)
    if code and not trusted:
        classes = ", ".join(f"{k}: {v}" for k, v in sorted(code.items()))
        raise ProfileError(
            f"{f.folder}: config.json's auto_map names the model's own Python code ({classes}); exporting it"
            " imports and runs that code with your permissions. Read it first; if you trust it, pass"
            " --trust-remote-code (ExportOptions(trust_remote_code=True), read_profile(..., trust_remote_code=True))"
        )
    return bool(code)


def read_default_input_type(f: ModelFiles) -> str:
    default = f.st_config.get("default_prompt_name") or "document"
    return default if default in INPUT_TYPES else "document"


def read_instruction(prompts: dict[str, str]) -> tuple[str | None, str | None]:
    """``("Instruct: {instruction}\\nQuery:", default task)`` when the query prompt carries a task."""
    m = INSTRUCT_RE.match(prompts.get("query", ""))
    if not m:
        return None, None
    return "Instruct: {instruction}\nQuery:" + m.group("sep"), m.group("task")


def read_task(f: ModelFiles) -> str:
    """``rerank`` for a one-label sequence classifier (cross-encoders, converted Qwen3 rerankers) and
    for a causal LM that is no embedding model (no sentence-transformers pooling) but a chat judge
    with "yes" and "no" tokens (Qwen3-Reranker as released); ``embed`` otherwise."""
    archs = f.config.get("architectures") or []
    labels = len(f.config.get("id2label") or {}) or f.config.get("num_labels", 2)
    if any(a.endswith("ForSequenceClassification") for a in archs) and labels == 1:
        return TASK_RERANK
    judge = f.tokenizer_config.get("chat_template") and None not in (
        _token_id(f.tokenizer, "yes"),
        _token_id(f.tokenizer, "no"),
    )
    if any(a.endswith("ForCausalLM") for a in archs) and not _pooling_from_st(f.folder) and judge:
        return TASK_RERANK
    return TASK_EMBED


def read_activation(f: ModelFiles) -> str:
    """CrossEncoder's recorded activation (``config_sentence_transformers.json``; before
    sentence-transformers 5, a ``sentence_transformers`` key of config.json); sigmoid for one label."""
    path = f.st_config.get("activation_fn") or (f.config.get("sentence_transformers") or {}).get("activation_fn") or ""
    name = path.rsplit(".", 1)[-1]
    if name and name not in ACTIVATIONS:
        raise ProfileError(f"{f.folder}: activation {path!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS.get(name, "sigmoid")


def read_rerank(f: ModelFiles) -> dict:
    """The reranker's pair format and scoring head."""
    archs = f.config.get("architectures") or []
    decoder = f.model_type in DECODER_TYPES
    fields: dict = {"pooling": "last" if decoder else "cls", "dimension": 1, "min_dimension": 1}
    if decoder:  # Qwen3-Reranker and its converted twin: the model card's chat prompt
        fields |= dict(
            pair_format="prompt",
            pair_template=QWEN3_RERANK_TEMPLATE,
            rerank_prefix=QWEN3_RERANK_PREFIX,
            rerank_suffix=QWEN3_RERANK_SUFFIX,
            default_instruction=QWEN3_RERANK_INSTRUCTION,
        )
    else:
        fields["pair_format"] = "pair"
        if int(f.config.get("type_vocab_size", 1)) > 1:  # BERT: segment ids from the [SEP] position
            fields["sep_token_id"] = _token_id(f.tokenizer, _token_str(f.tokenizer_config.get("sep_token")) or "[SEP]")
    if any(a.endswith("ForCausalLM") for a in archs):
        fields |= dict(
            rerank_head="lm_yes_no",
            yes_token_id=_token_id(f.tokenizer, "yes"),
            no_token_id=_token_id(f.tokenizer, "no"),
            activation="sigmoid",
        )
    else:
        fields |= dict(rerank_head="seq_cls", activation=read_activation(f))
    return fields


# bge-m3's heads beside the weights (FlagEmbedding's BGEM3FlagModel loads them when both are there).
M3_HEADS = ("sparse_linear.pt", "colbert_linear.pt")
# The tokens FlagEmbedding leaves out of the lexical weights (m3.py: cls, eos, pad, unk).
M3_UNUSED_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")


def read_outputs(f: ModelFiles) -> tuple[list[str], list[int]]:
    """(outputs, special token ids): bge-m3's three when both of its heads lie beside an encoder's
    weights (the special ids are those its sparse weights leave out), else the dense vector alone."""
    if not all((f.folder / name).is_file() for name in M3_HEADS) or f.model_type in DECODER_TYPES:
        return [OUTPUT_DENSE], []
    special = []
    for key in M3_UNUSED_TOKENS:
        token = _token_str(f.tokenizer_config.get(key))
        token_id = _token_id(f.tokenizer, token) if token else None
        if token_id is None:
            raise ProfileError(f"{f.folder}: bge-m3 heads found, but no id for its {key} {token!r}")
        special.append(int(token_id))
    return list(OUTPUT_KINDS), sorted(set(special))


def read_profile(
    folder: Path,
    *,
    name: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    min_dimension: int | None = None,
    max_texts: int = ModelProfile.max_texts,
    padding_side: str | None = None,
    prompts: dict[str, str] | None = None,
    end_token: str | None = None,
    ids_dtype: str = ModelProfile.ids_dtype,
    task: str | None = None,
    trust_remote_code: bool = False,
) -> ModelProfile:
    """Build the profile of the model in ``folder``; keyword arguments override what the files say.

    A folder that brings its own model code (config.json's ``auto_map``) is refused unless
    ``trust_remote_code``: exporting it runs that code."""
    f = ModelFiles.read(folder)
    remote_code = check_remote_code(f, trust_remote_code)
    task = task or read_task(f)
    if task == TASK_RERANK:
        return _rerank_profile(
            f, name=name, max_length=max_length, max_texts=max_texts, ids_dtype=ids_dtype, remote_code=remote_code
        )
    pooling = pooling or read_pooling(f)
    dimension = read_dimension(f)
    end_token, end_id = read_end_token(f, pooling, end_token)
    prompts = read_prompts(f) if prompts is None else prompts
    template, default_instruction = read_instruction(prompts)
    outputs, special_ids = read_outputs(f)
    return ModelProfile(
        name=name or f.folder.name.lower(),
        model_type=f.model_type,
        pooling=pooling,
        padding_side=padding_side or read_padding_side(f, pooling),
        max_length=int(max_length if max_length is not None else read_max_length(f)),
        dimension=dimension,
        min_dimension=int(min_dimension if min_dimension is not None else read_min_dimension(f, dimension)),
        pad_token_id=read_pad_token_id(f),
        end_token=end_token,
        end_token_id=end_id,
        prompts=prompts,
        default_input_type=read_default_input_type(f),
        instruction_template=template,
        default_instruction=default_instruction,
        max_texts=max_texts,
        ids_dtype=ids_dtype,
        source=str(f.folder),
        vocab_size=read_vocab_size(f),
        trust_remote_code=remote_code,
        outputs=outputs,
        special_token_ids=special_ids,
    )


def _rerank_profile(f: ModelFiles, *, name, max_length, max_texts, ids_dtype, remote_code) -> ModelProfile:
    fields = read_rerank(f)
    return ModelProfile(
        name=name or f.folder.name.lower(),
        model_type=f.model_type,
        padding_side=read_padding_side(f, fields["pooling"]),
        max_length=int(max_length if max_length is not None else read_max_length(f)),
        pad_token_id=read_pad_token_id(f),
        max_texts=max_texts,
        ids_dtype=ids_dtype,
        source=str(f.folder),
        vocab_size=read_vocab_size(f),
        task=TASK_RERANK,
        trust_remote_code=remote_code,
        **fields,
    )
