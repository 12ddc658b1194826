"""Plugin discovery: every strategy and adapter comes from a pluggy plugin of the `tokenprune` group."""

from __future__ import annotations

import importlib
import warnings

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownStrategyError, UnsupportedModelError
from .interfaces import ModelAdapter, StrategyFactory

# Registered exactly as their entry points in pyproject.toml say; used directly only when tokenprune runs
# from a source tree that was never installed (so its entry points do not exist).
BUILTIN_PLUGINS = {
    "builtin_strategies": "tokenprune.strategies",
    "llava": "tokenprune.adapters.llava",
    "llava_next": "tokenprune.adapters.llava_next",
}


def plugin_manager() -> pluggy.PluginManager:
    """A fresh manager with every installed plugin loaded (cheap; no process-wide registry is kept)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    except Exception as exc:  # one broken plugin must not hide the others' names in the message
        raise PluginError(f"loading a '{hookspecs.PROJECT}' entry-point plugin failed: {exc!r}") from exc
    for name, module in BUILTIN_PLUGINS.items():
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(module), name=name)
    return pm


def strategies(pm: pluggy.PluginManager | None = None) -> dict[str, StrategyFactory]:
    pm = pm or plugin_manager()
    found: dict[str, StrategyFactory] = {}
    for factories in pm.hook.tokenprune_strategies():
        for factory in factories:
            if not isinstance(factory, StrategyFactory):
                raise PluginError(f"a plugin registered {factory!r} as a strategy; expected a StrategyFactory")
            if factory.name in found and found[factory.name] is not factory:
                warnings.warn(f"strategy '{factory.name}' is registered twice; keeping the first", stacklevel=2)
                continue
            found[factory.name] = factory
    return found


def adapters(pm: pluggy.PluginManager | None = None) -> list[ModelAdapter]:
    pm = pm or plugin_manager()
    return [adapter for group in pm.hook.tokenprune_adapters() for adapter in group]


def strategy_factory(name: str) -> StrategyFactory:
    available = strategies()
    if name not in available:
        raise UnknownStrategyError(
            f"unknown strategy '{name}'; available strategies: {', '.join(sorted(available))}"
        )
    return available[name]


def adapter_for(model) -> ModelAdapter:
    known = adapters()
    for adapter in known:
        if adapter.matches(model):
            return adapter
    supported = ", ".join(f"{a.name} ({', '.join(a.model_classes)})" for a in sorted(known, key=lambda a: a.name))
    raise UnsupportedModelError(f"no tokenprune adapter supports {type(model).__name__}; available adapters: {supported}")


def adapter_named(name: str) -> ModelAdapter:
    known = {adapter.name: adapter for adapter in adapters()}
    if name not in known:
        raise UnsupportedModelError(f"unknown adapter '{name}'; available adapters: {', '.join(sorted(known))}")
    return known[name]
