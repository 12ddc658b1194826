"""Built-in layer schedules: how many visual tokens each prefill layer keeps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenprune.errors import InvalidParameterError
from tokenprune.interfaces import LayerSchedule


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
