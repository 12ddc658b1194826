"""ST3 (Zhuang et al., AAAI 2025) = PVTP progressive prefill cuts + VTA visual KV annealing while decoding.

Defaults are ours (the paper's were not available); docs/st3-defaults.md derives them for the
LLaVA-1.5-7B shape: prefill FLOPs <= 50 % and visual KV over a 128-token generation <= 30 % of baseline.
"""

from typing import Literal

from pydantic import Field

from tokenprune.interfaces import Strategy, StrategyFactory, StrategyParams

from .decays import CosineDecay, LinearDecay, NoDecay
from .schedules import ProgressiveCuts
from .scores import LastQueryAttention


class ST3Params(StrategyParams):
    start_layer: int = Field(2, ge=1, description="first PVTP cut (scores from the layer before: QK heredity)")
    stride: int = Field(3, ge=1, description="layers between PVTP cuts")
    ratio: float = Field(0.2, ge=0.0, le=1.0, description="fraction of the still-present visual tokens removed per cut")
    decay: Literal["cosine", "linear", "none"] = Field("cosine", description="VTA schedule of the visual KV cache")
    final_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="fraction of each layer's visual KV left at the horizon"
    )
    horizon: int | None = Field(
        None, ge=1, description="decode steps of the decay; None = the generate call's max_new_tokens"
    )
    evict_every: int = Field(
        8,
        ge=1,
        description="eviction rounds: every this many decode steps each layer evicts down to that step's count "
        "and removes the evicted entries from its tensors (1: every step)",
    )


def build(p: ST3Params) -> Strategy:
    if p.decay == "cosine":
        decay = CosineDecay(final_fraction=p.final_fraction, horizon=p.horizon, evict_every=p.evict_every)
    elif p.decay == "linear":
        decay = LinearDecay(final_fraction=p.final_fraction, horizon=p.horizon, evict_every=p.evict_every)
    else:
        decay = NoDecay()
    schedule = ProgressiveCuts(start_layer=p.start_layer, stride=p.stride, ratio=p.ratio)
    return Strategy("st3", p, schedule, decay, LastQueryAttention())


ST3 = StrategyFactory("st3", ST3Params, build, "ST3: progressive visual token pruning + visual token annealing")
