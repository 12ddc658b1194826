"""tokenprune-pyramid: an example third-party tokenprune plugin.

It registers one part of each new kind it needs and a strategy made of them:
- score provider `key_norm` (no attention at all: minus the L2 norm of each visual token's key);
- layer schedule `pyramid` (PyramidDrop-like stages, each keeping a fraction of what is left);
- strategy `pyramid_knorm` = key_norm + pyramid, no decode-time decay.

After `pip install ./examples/tokenprune-pyramid`, all three appear in `tokenprune list` and work by name:
    tp.prune(model, "pyramid_knorm", stages=4, retain=0.5)
    tp.compose(score="key_norm", schedule={"name": "pyramid", "stages": 3}, decay="cosine")
"""

from __future__ import annotations

from pydantic import Field

from tokenprune import (
    NoParams,
    ScheduleFactory,
    ScoreFactory,
    Strategy,
    StrategyFactory,
    StrategyParams,
    hookimpl,
)
from tokenprune.strategies.decays import NoDecay

from .key_norm import KeyNorm
from .pyramid import PyramidStages

__version__ = "0.1.0"


class PyramidParams(StrategyParams):
    stages: int = Field(4, ge=1, description="stages of equal depth; visual tokens are cut at the start of stages 2..")
    retain: float = Field(0.5, ge=0.0, le=1.0, description="fraction of the still-present visual tokens kept per cut")


def _schedule(p: PyramidParams) -> PyramidStages:
    return PyramidStages(stages=p.stages, retain=p.retain)


def _strategy(p: PyramidParams) -> Strategy:
    return Strategy("pyramid_knorm", p, _schedule(p), NoDecay(), KeyNorm())


@hookimpl
def tokenprune_score_providers():
    return [
        ScoreFactory("key_norm", NoParams, lambda p: KeyNorm(), "minus the L2 norm of each token's key (no attention)")
    ]


@hookimpl
def tokenprune_layer_schedules():
    return [
        ScheduleFactory(
            "pyramid", PyramidParams, _schedule, "PyramidDrop-like: equal stages, each keeps `retain` of what is left"
        )
    ]


@hookimpl
def tokenprune_strategies():
    return [
        StrategyFactory("pyramid_knorm", PyramidParams, _strategy, "key-norm ranking with a PyramidDrop-like schedule")
    ]
