"""Built-in cache decays: the fraction of a layer's visual KV entries kept at decode step t."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenprune.interfaces import CacheDecay


@dataclass(frozen=True)
class NoDecay(CacheDecay):
    """The visual cache keeps what prefill left (FastV, VTW)."""

    active: bool = False
    horizon: int | None = None

    def fraction(self, step: int, horizon: int) -> float:
        return 1.0


@dataclass(frozen=True)
class CosineDecay(CacheDecay):
    """VTA: f + (1 - f) * (1 + cos(pi * min(t, T) / T)) / 2."""

    final_fraction: float
    horizon: int | None = None
    evict_every: int = 1

    @property
    def active(self) -> bool:  # type: ignore[override]
        return self.final_fraction < 1.0

    def fraction(self, step: int, horizon: int) -> float:
        f = self.final_fraction
        return f + (1.0 - f) * (1.0 + math.cos(math.pi * min(step, horizon) / horizon)) / 2.0


@dataclass(frozen=True)
class LinearDecay(CacheDecay):
    """Ablation: straight line from 1 to f over the horizon."""

    final_fraction: float
    horizon: int | None = None
    evict_every: int = 1

    @property
    def active(self) -> bool:  # type: ignore[override]
        return self.final_fraction < 1.0

    def fraction(self, step: int, horizon: int) -> float:
        f = self.final_fraction
        return 1.0 - (1.0 - f) * min(step, horizon) / horizon
