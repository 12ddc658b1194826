"""The public entry points: `prune`, `available_strategies`, `available_adapters`."""

from __future__ import annotations

from typing import Any

import torch

from . import registry
from .engine import PruningSession
from .errors import InvalidParameterError, UnsupportedModelError
from .interfaces import ModelAdapter, Strategy


def resolve_strategy(strategy: str | Strategy | dict, **params: Any) -> Strategy:
    """A Strategy from a registered name (+ params), a Strategy, or a config dict {"name": ..., **params}."""
    if isinstance(strategy, Strategy):
        if params:
            raise InvalidParameterError(
                f"parameters {sorted(params)} given with a ready Strategy; pass a strategy name to set parameters"
            )
        return strategy
    if isinstance(strategy, dict):
        config = dict(strategy)
        if "name" not in config:
            raise InvalidParameterError("a strategy config needs a 'name' key, e.g. {'name': 'fastv', 'k': 2}")
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
    if adapter is None:
        return registry.adapter_for(model)
    if isinstance(adapter, str):
        adapter = registry.adapter_named(adapter)
    elif not isinstance(adapter, ModelAdapter):
        raise InvalidParameterError(f"adapter must be a registered name or a ModelAdapter, not {type(adapter).__name__}")
    if not adapter.matches(model):
        raise UnsupportedModelError(
            f"adapter '{adapter.name}' does not serve {type(model).__name__} (it serves {', '.join(adapter.model_classes)})"
        )
    return adapter


def available_strategies() -> list[str]:
    return sorted(registry.strategies())


def available_adapters() -> list[str]:
    return sorted(adapter.name for adapter in registry.adapters())
