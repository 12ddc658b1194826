"""Plugin discovery: every strategy, part and adapter comes from a pluggy plugin of the `tokenprune` group.

`load()` builds a fresh `Registry` (no process-wide state; loading is cheap after the first import).
Each plugin is loaded, registered and asked for its components on its own, so a broken plugin (import
error, a hook that raises, a wrong return type, an invalid parameter model, a name another plugin already
took) becomes a `PluginProblem` naming it, shown as a `PluginWarning`, while every other plugin works.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy
from pydantic import BaseModel

from . import hookspecs
from .errors import InvalidParameterError, PluginWarning, UnknownStrategyError, UnsupportedModelError
from .interfaces import (
    ComponentFactory,
    DecayFactory,
    ModelAdapter,
    ScheduleFactory,
    ScoreFactory,
    StrategyFactory,
)

#: entry-point names of tokenprune's own plugins (as in pyproject.toml): registered before any other
#: plugin, so a third-party plugin cannot take a built-in name
BUILTIN_PLUGINS = frozenset({"builtin_strategies", "llava", "llava_next", "qwen_vl"})

#: kind (as used in configs and `tokenprune list`) -> (hook, the class every item must be)
KINDS: dict[str, tuple[str, type]] = {
    "strategy": ("tokenprune_strategies", StrategyFactory),
    "score": ("tokenprune_score_providers", ScoreFactory),
    "schedule": ("tokenprune_layer_schedules", ScheduleFactory),
    "decay": ("tokenprune_cache_decays", DecayFactory),
    "adapter": ("tokenprune_adapters", ModelAdapter),
}


#: what an unknown name of each kind raises (a bad part name inside a strategy is a bad parameter)
UNKNOWN_NAME_ERRORS = {
    "strategy": UnknownStrategyError,
    "score": InvalidParameterError,
    "schedule": InvalidParameterError,
    "decay": InvalidParameterError,
    "adapter": UnsupportedModelError,
}


@dataclass(frozen=True)
class Origin:
    """Where a component came from: the plugin (entry-point name) and its distribution."""

    plugin: str
    distribution: str


@dataclass(frozen=True)
class PluginProblem:
    plugin: str
    distribution: str
    message: str

    def __str__(self) -> str:
        return f"tokenprune plugin '{self.plugin}' ({self.distribution}): {self.message}"


@dataclass
class Registry:
    """Every registered component by kind and name, where each came from, and what went wrong."""

    components: dict[str, dict[str, object]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    origins: dict[tuple[str, str], Origin] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)

    def get(self, kind: str, name: str):
        found = self.components[kind]
        if name not in found:
            raise UNKNOWN_NAME_ERRORS[kind](
                f"unknown {_label(kind)} '{name}'; available {_label(kind)}s: {', '.join(sorted(found)) or 'none'}"
            )
        return found[name]

    def warn(self) -> None:
        for problem in self.problems:
            warnings.warn(str(problem), PluginWarning, stacklevel=3)


def _label(kind: str) -> str:
    return KINDS[kind][1].kind if kind != "adapter" else "adapter"


def _distribution(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "(unknown distribution)"


def _register_all(pm: pluggy.PluginManager, registry: Registry, extra: dict) -> dict[str, str]:
    """Load and register every plugin; returns plugin name -> distribution."""
    dists: dict[str, str] = {}
    found = sorted(entry_points(group=hookspecs.PROJECT), key=lambda ep: (ep.name not in BUILTIN_PLUGINS, ep.name))
    for ep in found:
        dist = _distribution(ep)
        if pm.has_plugin(ep.name) or ep.name in dists:
            registry.problems.append(
                PluginProblem(ep.name, dist, "another plugin has the same entry-point name; skipped")
            )
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of one plugin must leave the others working
            registry.problems.append(PluginProblem(ep.name, dist, f"cannot be imported ({ep.value}): {exc!r}"))
            continue
        if _register(pm, registry, ep.name, plugin, dist):
            dists[ep.name] = dist
    for name, plugin in extra.items():
        if _register(pm, registry, name, plugin, "(registered in code)"):
            dists[name] = "(registered in code)"
    return dists


def _register(pm: pluggy.PluginManager, registry: Registry, name: str, plugin, dist: str) -> bool:
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # noqa: BLE001 - pluggy validates hook signatures here
        registry.problems.append(PluginProblem(name, dist, f"cannot be registered: {exc}"))
        return False
    known = {hook for hook, _ in KINDS.values()}
    for hook_name in dir(plugin):
        if hook_name.startswith("tokenprune_") and hook_name not in known and callable(getattr(plugin, hook_name)):
            registry.problems.append(
                PluginProblem(
                    name, dist, f"defines unknown hook '{hook_name}'; known hooks: {', '.join(sorted(known))}"
                )
            )
    return True


def _invalid(item: object, expected: type) -> str | None:
    """Why `item` cannot be registered as an `expected`, or None."""
    if not isinstance(item, expected):
        return f"returned {item!r}, not a {expected.__name__}"
    if isinstance(item, ComponentFactory):
        if not (isinstance(item.params, type) and issubclass(item.params, BaseModel)):
            return f"{item.kind} '{item.name}' has parameter model {item.params!r}, not a pydantic BaseModel subclass"
        try:
            item.params.model_json_schema()
        except Exception as exc:  # noqa: BLE001
            return f"{item.kind} '{item.name}' has an invalid parameter model: {exc}"
        if not callable(item.build):
            return f"{item.kind} '{item.name}' has no callable build"
    elif not getattr(item, "name", None):
        return f"adapter {item!r} has no name"
    return None


def load(extra_plugins: dict | None = None) -> Registry:
    """A fresh registry of every installed plugin (plus `extra_plugins`, name -> plugin object)."""
    registry = Registry()
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    dists = _register_all(pm, registry, extra_plugins or {})
    for kind, (hook, expected) in KINDS.items():
        table = registry.components[kind]
        for impl in getattr(pm.hook, hook).get_hookimpls():  # registration order: built-ins first
            plugin, dist = impl.plugin_name, dists.get(impl.plugin_name, "?")
            try:
                items = list(impl.function())
            except Exception as exc:  # noqa: BLE001
                registry.problems.append(PluginProblem(plugin, dist, f"hook {hook}() raised {exc!r}"))
                continue
            for item in items:
                problem = _invalid(item, expected)
                if problem:
                    registry.problems.append(PluginProblem(plugin, dist, f"{hook}(): {problem}"))
                    continue
                name = item.name
                if name in table and table[name] is not item:
                    first = registry.origins[(kind, name)]
                    registry.problems.append(
                        PluginProblem(
                            plugin,
                            dist,
                            f"{_label(kind)} '{name}' is already registered by plugin '{first.plugin}' "
                            f"({first.distribution}); this one is ignored",
                        )
                    )
                    continue
                table[name] = item
                registry.origins[(kind, name)] = Origin(plugin, dist)
    return registry


def current() -> Registry:
    """The registry of the installed plugins, with a PluginWarning for each broken one."""
    registry = load()
    registry.warn()
    return registry


# ------------------------------------------------------------------------------------------ lookups
def strategies(registry: Registry | None = None) -> dict[str, StrategyFactory]:
    return dict((registry or current()).components["strategy"])


def adapters(registry: Registry | None = None) -> list[ModelAdapter]:
    return list((registry or current()).components["adapter"].values())


def strategy_factory(name: str, registry: Registry | None = None) -> StrategyFactory:
    return (registry or current()).get("strategy", name)


def adapter_for(model) -> ModelAdapter:
    known = adapters()
    for adapter in known:
        if adapter.matches(model):
            return adapter
    supported = ", ".join(f"{a.name} ({', '.join(a.model_classes)})" for a in sorted(known, key=lambda a: a.name))
    raise UnsupportedModelError(
        f"no tokenprune adapter supports {type(model).__name__}; available adapters: {supported}"
    )


def adapter_named(name: str) -> ModelAdapter:
    known = {adapter.name: adapter for adapter in adapters()}
    if name not in known:
        raise UnsupportedModelError(f"unknown adapter '{name}'; available adapters: {', '.join(sorted(known))}")
    return known[name]
