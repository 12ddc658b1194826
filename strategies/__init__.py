"""Built-in strategies, registered as an ordinary `tokenprune` plugin."""

from tokenprune.hookspecs import hookimpl

from .fastv import FASTV
from .st3 import ST3
from .vtw import VTW

BUILTIN_STRATEGIES = [ST3, FASTV, VTW]


@hookimpl
def tokenprune_strategies():
    return BUILTIN_STRATEGIES
