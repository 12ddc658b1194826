"""FastV (Chen et al. 2024): one cut at layer k ranked by layer k-1's attention; no decode-time eviction."""

from typing import Literal

from pydantic import Field

from tokenprune.interfaces import Strategy, StrategyFactory, StrategyParams

from .decays import NoDecay
from .schedules import SingleCut
from .scores import LastQueryAttention, TextMeanAttention


class FastVParams(StrategyParams):
    k: int = Field(2, ge=1, description="first layer that sees the reduced visual set (scores from layer k-1)")
    ratio: float = Field(0.5, ge=0.0, le=1.0, description="fraction of visual tokens removed at layer k")
    query: Literal["last", "text_mean"] = Field(
        "last",
        description="'last': attention of the last prompt token (official code); "
        "'text_mean': mean over text queries after the image (paper)",
    )


def build(p: FastVParams) -> Strategy:
    score = LastQueryAttention() if p.query == "last" else TextMeanAttention()
    return Strategy("fastv", p, SingleCut(layer=p.k, ratio=p.ratio), NoDecay(), score)


FASTV = StrategyFactory("fastv", FastVParams, build, "FastV: drop the least-attended visual tokens once at layer k")
