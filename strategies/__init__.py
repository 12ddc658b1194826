"""Built-in strategies and the parts they are made of, registered as an ordinary `tokenprune` plugin."""

from tokenprune.hookspecs import hookimpl

from .decays import DECAYS
from .fastv import FASTV
from .schedules import SCHEDULES
from .scores import SCORE_PROVIDERS
from .st3 import ST3
from .vtw import VTW

BUILTIN_STRATEGIES = [ST3, FASTV, VTW]


@hookimpl
def tokenprune_strategies():
    return BUILTIN_STRATEGIES


@hookimpl
def tokenprune_score_providers():
    return SCORE_PROVIDERS


@hookimpl
def tokenprune_layer_schedules():
    return SCHEDULES


@hookimpl
def tokenprune_cache_decays():
    return DECAYS
