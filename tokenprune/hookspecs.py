"""pluggy hook specifications: everything a tokenprune plugin may provide.

A plugin is a module (or object) with `@hookimpl` functions, registered under the `tokenprune`
entry-point group:

    # pyproject.toml of your package
    [project.entry-points.tokenprune]
    my_plugin = "my_package.plugin"

Every hook returns a list; a plugin implements only the hooks it needs. The built-in strategies, parts
and adapters are plugins of exactly this kind (see `tokenprune.strategies`, `tokenprune.adapters`).
Names are unique per kind across all plugins; on a clash the first registered (built-ins first) wins
and the other plugin is named in a warning.
"""

from __future__ import annotations

import pluggy

PROJECT = "tokenprune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def tokenprune_strategies() -> list:
    """Return `tokenprune.StrategyFactory` objects: named methods, usable as `tp.prune(model, name)`."""


@hookspec
def tokenprune_score_providers() -> list:
    """Return `tokenprune.ScoreFactory` objects: named ways to rank visual tokens (`score:` in configs)."""


@hookspec
def tokenprune_layer_schedules() -> list:
    """Return `tokenprune.ScheduleFactory` objects: named prefill schedules (`schedule:` in configs)."""


@hookspec
def tokenprune_cache_decays() -> list:
    """Return `tokenprune.DecayFactory` objects: named decode-time cache decays (`decay:` in configs)."""


@hookspec
def tokenprune_adapters() -> list:
    """Return `tokenprune.ModelAdapter` instances: model families pruning can run on."""
