"""VTW (Lin et al. 2024, Visual Tokens Withdrawal): every visual token leaves at layer k."""

from pydantic import Field

from tokenprune.interfaces import Strategy, StrategyFactory, StrategyParams

from .decays import NoDecay
from .schedules import SingleCut


class VTWParams(StrategyParams):
    k: int = Field(16, ge=0, description="layer from which no visual token is present")


def build(p: VTWParams) -> Strategy:
    # Keeping zero tokens needs no ranking, so VTW has no score provider at all.
    return Strategy("vtw", p, SingleCut(layer=p.k, ratio=1.0, min_layer=0), NoDecay(), None)


VTW = StrategyFactory("vtw", VTWParams, build, "VTW: withdraw all visual tokens from layer k on")
