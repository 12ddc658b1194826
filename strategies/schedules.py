"""Built-in layer schedules: how many visual tokens each prefill layer keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field

from tokenprune.errors import InvalidParameterError
from tokenprune.interfaces import LayerSchedule, ScheduleFactory, StrategyParams


def _round(x: torch.Tensor) -> torch.Tensor:
    # torch.round is round-half-to-even, the same rule as Python's round() used in the method definitions.
    return torch.round(x.double()).long()


def _check_layer(name: str, value: int, num_layers: int, minimum: int) -> None:
    if not minimum <= value <= num_layers:
        raise InvalidParameterError(
            f"{name}={value} does not fit this model: it has {num_layers} decoder layers, "
            f"so {name} must be in [{minimum}, {num_layers}] ({name}={num_layers} removes nothing)"
        )


@dataclass(frozen=True)
class SingleCut(LayerSchedule):
    """One cut at `layer` keeping round(N * (1 - ratio)) visual tokens (FastV; VTW with ratio 1)."""

    layer: int
    ratio: float
    param: str = "k"  # parameter name shown in errors
    min_layer: int = 1

    def cut_layers(self, num_layers: int) -> list[int]:
        return [self.layer] if self.layer < num_layers else []

    def keep(self, layer: int, present: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return torch.minimum(_round(total * (1.0 - self.ratio)), present)

    def check(self, num_layers: int) -> None:
        _check_layer(self.param, self.layer, num_layers, self.min_layer)

    @property
    def ranks(self) -> bool:
        return 0.0 < self.ratio < 1.0


@dataclass(frozen=True)
class ProgressiveCuts(LayerSchedule):
    """PVTP: at start, start+stride, ... each cut removes the fraction `ratio` of the tokens still present."""

    start_layer: int
    stride: int
    ratio: float

    def cut_layers(self, num_layers: int) -> list[int]:
        return list(range(self.start_layer, num_layers, self.stride))

    def keep(self, layer: int, present: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return _round(present * (1.0 - self.ratio))

    def check(self, num_layers: int) -> None:
        _check_layer("start_layer", self.start_layer, num_layers, 1)

    @property
    def ranks(self) -> bool:
        return 0.0 < self.ratio < 1.0


# --------------------------------------------------------------------------------- registrable by name
class SingleCutParams(StrategyParams):
    layer: int = Field(2, ge=1, description="first layer that sees the reduced visual set (ranked by layer-1's scores)")
    ratio: float = Field(0.5, ge=0.0, le=1.0, description="fraction of the visual tokens removed at that layer")


class WithdrawParams(StrategyParams):
    layer: int = Field(16, ge=0, description="layer from which no visual token is present")


class ProgressiveParams(StrategyParams):
    start_layer: int = Field(2, ge=1, description="first cut")
    stride: int = Field(3, ge=1, description="layers between cuts")
    ratio: float = Field(0.2, ge=0.0, le=1.0, description="fraction of the still-present visual tokens removed per cut")


SCHEDULES = [
    ScheduleFactory(
        "single_cut",
        SingleCutParams,
        lambda p: SingleCut(layer=p.layer, ratio=p.ratio, param="layer"),
        "one cut at `layer` keeping round(N * (1 - ratio)) visual tokens (FastV)",
    ),
    ScheduleFactory(
        "withdraw",
        WithdrawParams,
        lambda p: SingleCut(layer=p.layer, ratio=1.0, param="layer", min_layer=0),
        "every visual token leaves at `layer` (VTW); needs no score provider",
    ),
    ScheduleFactory(
        "progressive",
        ProgressiveParams,
        lambda p: ProgressiveCuts(start_layer=p.start_layer, stride=p.stride, ratio=p.ratio),
        "cuts at start_layer, start_layer + stride, ... each removing `ratio` of what is left (ST3's PVTP)",
    ),
]
