"""pluggy hook specifications: what a tokenprune plugin may provide.

A plugin is a module (or object) with `@hookimpl` functions, registered under the `tokenprune`
entry-point group. The built-in strategies and adapters are plugins of exactly this kind.
"""

from __future__ import annotations

import pluggy

PROJECT = "tokenprune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def tokenprune_strategies() -> list:
    """Return a list of `tokenprune.StrategyFactory` objects."""


@hookspec
def tokenprune_adapters() -> list:
    """Return a list of `tokenprune.ModelAdapter` instances."""
