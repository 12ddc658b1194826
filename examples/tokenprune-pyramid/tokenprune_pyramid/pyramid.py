"""A PyramidDrop-like schedule (Xing et al. 2024): the decoder is split into stages of equal depth, and at
the start of every stage after the first, the visual tokens still present are cut to the fraction `retain`.

With 32 layers, 4 stages and retain 0.5: 576 visual tokens in layers 0-7, 288 in 8-15, 144 in 16-23, 72 in 24-31.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenprune import InvalidParameterError, LayerSchedule


@dataclass(frozen=True)
class PyramidStages(LayerSchedule):
    stages: int = 4
    retain: float = 0.5

    def cut_layers(self, num_layers: int) -> list[int]:
        # Stage s starts at round(s * L / stages); check() makes sure the stages are distinct.
        return [round(s * num_layers / self.stages) for s in range(1, self.stages)]

    def keep(self, layer: int, present: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        return torch.round(present.double() * self.retain).long()

    @property
    def ranks(self) -> bool:
        return 0.0 < self.retain < 1.0

    def check(self, num_layers: int) -> None:
        if self.stages > num_layers:
            raise InvalidParameterError(
                f"stages={self.stages} does not fit this model: it has {num_layers} decoder layers, "
                f"so stages must be in [1, {num_layers}]"
            )
