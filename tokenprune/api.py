"""The public entry points: `prune`, `compose`, `available_strategies`, `available_adapters`."""

from __future__ import annotations

from typing import Any

import torch

from . import registry
from .engine import PruningSession
from .errors import InvalidParameterError, UnsupportedModelError
from .interfaces import CacheDecay, LayerSchedule, ModelAdapter, ScoreProvider, Strategy, StrategyParams


def resolve_strategy(strategy: str | Strategy | dict, **params: Any) -> Strategy:
    """A Strategy from a registered name (+ params), a Strategy, or a config dict.

    Config dicts: {"name": "fastv", "k": 2, ...} for a registered strategy, or
    {"compose": {"score": ..., "schedule": ..., "decay": ...}} for a composition of registered parts.
    """
    if isinstance(strategy, Strategy):
        if params:
            raise InvalidParameterError(
                f"parameters {sorted(params)} given with a ready Strategy; pass a strategy name to set parameters"
            )
        return strategy
    if isinstance(strategy, dict):
        config = dict(strategy)
        if "compose" in config:
            parts = config.pop("compose")
            if config or params:
                extra = sorted(config) + sorted(params)
                raise InvalidParameterError(f"a composed strategy takes only 'compose'; unexpected keys {extra}")
            if not isinstance(parts, dict):
                raise InvalidParameterError(f"'compose' must map score / schedule / decay to parts, not {parts!r}")
            return compose(**parts)
        if "name" not in config:
            raise InvalidParameterError(
                "a strategy config needs a 'name' key, e.g. {'name': 'fastv', 'k': 2}, "
                "or a 'compose' key, e.g. {'compose': {'score': 'last_query_attention', 'schedule': 'single_cut'}}"
            )
        name = config.pop("name")
        overlap = set(config) & set(params)
        if overlap:
            raise InvalidParameterError(f"parameters {sorted(overlap)} given both in the config and as keywords")
        return registry.strategy_factory(name)(**config, **params)
    if isinstance(strategy, str):
        return registry.strategy_factory(strategy)(**params)
    raise InvalidParameterError(
        f"strategy must be a registered name, a Strategy or a config dict, not {type(strategy).__name__}"
    )


class CompositionParams(StrategyParams):
    """The parameters of a composed strategy: each part's name and parameters."""

    score: dict | None = None
    schedule: dict
    decay: dict


Part = str | dict | ScoreProvider | LayerSchedule | CacheDecay


def compose(*, schedule: Part, score: Part | None = None, decay: Part = "none", **unexpected: Any) -> Strategy:
    """A Strategy from registered parts, each a name, a {"name": ..., **params} dict, or a ready object.

        tp.compose(score="last_query_attention", schedule={"name": "progressive", "ratio": 0.3}, decay="cosine")

    The score provider may be left out when the schedule never keeps part of the visual tokens
    (e.g. `withdraw`).
    """
    if unexpected:
        raise InvalidParameterError(
            f"unknown part(s) {sorted(unexpected)} in a composed strategy; the parts are score, schedule and decay"
        )
    reg = registry.current()
    built_schedule, schedule_desc = _build_part(reg, "schedule", schedule, LayerSchedule)
    built_decay, decay_desc = _build_part(reg, "decay", decay, CacheDecay)
    built_score, score_desc = _build_part(reg, "score", score, ScoreProvider) if score is not None else (None, None)
    params = CompositionParams(score=score_desc, schedule=schedule_desc, decay=decay_desc)
    return Strategy("composed", params, built_schedule, built_decay, built_score)


def _build_part(reg: registry.Registry, kind: str, part: Part, expected: type):
    if isinstance(part, expected):
        return part, {"name": getattr(part, "name", type(part).__name__), "object": repr(part)}
    if isinstance(part, str):
        part = {"name": part}
    if not isinstance(part, dict) or "name" not in part:
        raise InvalidParameterError(
            f"{kind} must be a registered name, a {{'name': ..., **params}} dict or a {expected.__name__}, not {part!r}"
        )
    params = dict(part)
    name = params.pop("name")
    factory = reg.get(kind, name)
    return factory(**params), {"name": name, **factory.validate(**params).model_dump()}


def prune(
    model: torch.nn.Module,
    strategy: str | Strategy | dict = "st3",
    *,
    adapter: str | ModelAdapter | None = None,
    adapter_options: dict | None = None,
    **params: Any,
) -> PruningSession:
    """Prune visual tokens of `model` inside a `with` block; the session's `.report` says what was kept.

    `adapter` (a registered name or a ModelAdapter) overrides the one found from the model class;
    `adapter_options` configures it (e.g. {"prune_newlines": True} for LLaVA-NeXT). Everything is
    validated before any hook is installed, so a bad call leaves the model untouched.
    """
    built = resolve_strategy(strategy, **params)
    found = resolve_adapter(model, adapter)
    if adapter_options:
        found = found.with_options(**adapter_options)
    return PruningSession(model, found, built)


def resolve_adapter(model: torch.nn.Module, adapter: str | ModelAdapter | None = None) -> ModelAdapter:
    """The adapter for `model`: found from its class, or the named / given one (which must match it)."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        raise UnsupportedModelError(
            f"this is torch.compile's wrapper of a {type(model._orig_mod).__name__}; compiled models cannot be "
            "pruned (compiled code keeps the module hooks it was traced with): prune the uncompiled model"
        )
    if adapter is None:
        return registry.adapter_for(model)
    if isinstance(adapter, str):
        adapter = registry.adapter_named(adapter)
    elif not isinstance(adapter, ModelAdapter):
        raise InvalidParameterError(
            f"adapter must be a registered name or a ModelAdapter, not {type(adapter).__name__}"
        )
    if not adapter.matches(model):
        raise UnsupportedModelError(
            f"adapter '{adapter.name}' does not serve {type(model).__name__} "
            f"(it serves {', '.join(adapter.model_classes)})"
        )
    return adapter


def available_strategies() -> list[str]:
    return sorted(registry.strategies())


def available_adapters() -> list[str]:
    return sorted(adapter.name for adapter in registry.adapters())
