"""The served models as their configs describe them (an ensemble, or a one-step model:
``contract.PARAM_LAYOUT``), and finding them on a server."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import contract as c
from .errors import EmbeddingError


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
    # A batched model (max_batch_size > 0: the one-step layout) takes one request per batch row: every
    # tensor of a request one leading row more (TEXT [1, n], an option [1, 1], EMBEDDING [1, n, d]).
    batched: bool = False


def check_task(info: ModelInfo, task: str) -> None:
    if info.task != task:
        what = {c.TASK_EMBED: "an embedding model", c.TASK_RERANK: "a reranker"}
        raise EmbeddingError(
            f"model {info.name!r} is {what.get(info.task, info.task)} (task {info.task!r});"
            f" this call needs {what.get(task, task)}",
            reason=c.UNSUPPORTED,
            param="model",
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
            raise EmbeddingError(msg, reason=c.UNSUPPORTED, param="model")
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            msg = f"model {name!r}: parameter {key}={raw!r} is not a positive integer"
            raise EmbeddingError(msg, reason=c.UNSUPPORTED, param="model")
        return value

    task = params.get(c.PARAM_TASK, c.TASK_EMBED)
    if task not in c.TASKS:
        raise EmbeddingError(
            f"model {name!r} has task {task!r}; this client knows {c.TASKS}", reason=c.UNSUPPORTED, param="model"
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
        batched=int(cfg.get("max_batch_size", 0) or 0) > 0,
    )


def loaded_models(stats: Mapping[str, Any]) -> list[str]:
    """Names of the loaded models in ``get_inference_statistics(as_json=True)``.

    Discovery reads statistics, not the repository index: the index belongs to Triton's
    model-repository protocol, which a hardened server restricts to its admin key."""
    return sorted({m["name"] for m in stats.get("model_stats", [])})


def ready_models(index: Mapping[str, Any]) -> list[str]:
    """Names of the READY models in ``get_model_repository_index(as_json=True)``."""
    return sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})


def is_served(cfg: Mapping[str, Any]) -> bool:
    """A model clients call: an ensemble, or a one-step model (``contract.LAYOUT_ONE_STEP``); not a lane."""
    layout = cfg.get("parameters", {}).get(c.PARAM_LAYOUT, {}).get("string_value")
    return (cfg.get("platform") == "ensemble" or layout == c.LAYOUT_ONE_STEP) and not is_lane(cfg)


def is_lane(cfg: Mapping[str, Any]) -> bool:
    """A priority lane of another served model (``PARAM_LANE_OF``): reached through it, not listed."""
    return c.PARAM_LANE_OF in cfg.get("parameters", {})


def discover_models(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, ModelInfo]:
    """The served models (ensembles and one-step models) among the configs of the ready models, by name.

    An ensemble is ours when its parameters say what it does; one without (someone else's
    ensemble on the same server) is left out rather than failing discovery.
    """
    found = {}
    for name in sorted(configs):
        if not is_served(configs[name].get("config", configs[name])):
            continue
        try:
            found[name] = parse_model_config(configs[name])
        except EmbeddingError:
            continue
    return found


def pick_model(configs: Mapping[str, Mapping[str, Any]]) -> ModelInfo:
    """The single served model (ensemble or one-step model) among the configs of the ready models."""
    ensembles = sorted(n for n, cfg in configs.items() if is_served(cfg.get("config", cfg)))
    if len(ensembles) == 1:
        return parse_model_config(configs[ensembles[0]])
    if ensembles:
        msg = (
            f"several ready ensemble models: {', '.join(ensembles)};"
            " choose one with model=NAME (Python) or --model NAME (tembed-client)"
        )
    else:
        msg = f"no ready ensemble model (ready models: {', '.join(sorted(configs)) or 'none'})"
    raise EmbeddingError(msg, reason=c.UNSUPPORTED, param="model")
