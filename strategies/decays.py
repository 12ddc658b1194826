"""Built-in cache decays: the fraction of a layer's visual KV entries kept at decode step t."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import Field

from tokenprune.interfaces import CacheDecay, DecayFactory, NoParams, StrategyParams


@dataclass(frozen=True)
class NoDecay(CacheDecay):
    """The visual cache keeps what prefill left (FastV, VTW)."""

    active: bool = False
    horizon: int | None = None

    def fraction(self, step: int, horizon: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Annealing(CacheDecay):
    """Shared shape of the VTA decays: from 1 at step 0 down to `final_fraction` at the horizon."""

    final_fraction: float
    horizon: int | None = None
    evict_every: int = 1

    @property
    def active(self) -> bool:  # type: ignore[override]
        return self.final_fraction < 1.0

    def progress(self, x: float) -> float:
        """The curve from 1 (x = 0, right after prefill) to 0 (x = 1, the horizon)."""
        raise NotImplementedError

    def fraction(self, step: int, horizon: int) -> float:
        f = self.final_fraction
        return f + (1.0 - f) * self.progress(min(step, horizon) / horizon)


@dataclass(frozen=True)
class CosineDecay(Annealing):
    """VTA: f + (1 - f) * (1 + cos(pi * min(t, T) / T)) / 2."""

    def progress(self, x: float) -> float:
        return (1.0 + math.cos(math.pi * x)) / 2.0


@dataclass(frozen=True)
class LinearDecay(Annealing):
    """Ablation: straight line from 1 to f over the horizon."""

    def progress(self, x: float) -> float:
        return 1.0 - x

    def fraction(self, step: int, horizon: int) -> float:
        # 1 - (1 - f) t / T, evaluated in this order: the same float expression as the published ablation,
        # so counts that land exactly on .5 round the same way everywhere.
        return 1.0 - (1.0 - self.final_fraction) * min(step, horizon) / horizon


# --------------------------------------------------------------------------------- registrable by name
class AnnealingParams(StrategyParams):
    final_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="fraction of each layer's visual KV left at the horizon"
    )
    horizon: int | None = Field(
        None, ge=1, description="decode steps of the decay; None = the generate call's max_new_tokens"
    )
    evict_every: int = Field(
        8, ge=1, description="eviction rounds: every this many decode steps each layer evicts down to that step's count"
    )


def _annealing(cls):
    return lambda p: cls(final_fraction=p.final_fraction, horizon=p.horizon, evict_every=p.evict_every)


DECAYS = [
    DecayFactory("none", NoParams, lambda p: NoDecay(), NoDecay.__doc__),
    DecayFactory("cosine", AnnealingParams, _annealing(CosineDecay), CosineDecay.__doc__),
    DecayFactory("linear", AnnealingParams, _annealing(LinearDecay), LinearDecay.__doc__),
]
