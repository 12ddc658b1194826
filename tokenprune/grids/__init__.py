"""Where one image's or one video's visual tokens lie: their layout as 2-D grids, from the model config and
the inputs alone (the pruning engine is not used, so a picture drawn from a grid is also a check of what the
engine reports). One module per model family says how its processor lays tokens out and how the image looks
to the model (`llava`: LLaVA-1.5 and LLaVA-NeXT; `qwen_vl`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

A grid knows its cells' prompt positions; `kept_masks` turns a `Report`'s kept positions into one mask per grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import InvalidParameterError, UnsupportedInputError, UnsupportedModelError
from .base import TokenGrid

if TYPE_CHECKING:
    from ..report import Report

__all__ = ["TokenGrid", "token_grids", "kept_masks"]


def _family(model: torch.nn.Module):
    """The layout module of the model's family, from `config.model_type`."""
    from . import llava, qwen_vl

    model_type = getattr(model.config, "model_type", None)
    for module in (llava, qwen_vl):
        if model_type in module.MODEL_TYPES:
            return module
    known = [t for module in (llava, qwen_vl) for t in module.MODEL_TYPES]
    raise UnsupportedModelError(
        f"pictures know the token layouts of model types {', '.join(known)}; this model is {model_type!r}"
    )


def token_grids(
    model: torch.nn.Module, inputs: dict, sample: int = 0, image_index: int = 0, *, video_index: int | None = None
) -> list[TokenGrid]:
    """The visual tokens of image `image_index` (or, given `video_index`, of that video) of sample `sample`
    as grids: one for LLaVA-1.5 and Qwen-VL images, base and tiles for LLaVA-NeXT, a strip of temporal
    patches side by side for a Qwen-VL video."""
    input_ids = inputs["input_ids"]
    if not 0 <= sample < input_ids.shape[0]:
        raise InvalidParameterError(f"sample {sample} does not exist: the batch has {input_ids.shape[0]} sample(s)")
    family = _family(model)
    if video_index is None:
        return family.image_grids(model, inputs, sample, image_index)
    if not hasattr(family, "video_grids"):
        raise UnsupportedInputError(
            f"{model.config.model_type} models take no videos: give image_index, not video_index"
        )
    return family.video_grids(model, inputs, sample, video_index)


def kept_masks(report: "Report", grids: list[TokenGrid], sample: int = 0) -> dict[int, list[torch.Tensor]]:
    """cut layer -> per grid a (rows, cols) bool mask of the tokens kept from that layer on.

    Read from `report.kept_visual` (the prompt positions each cut keeps); the grids carry the prompt
    positions of their cells (`token_grids` of the same inputs and sample).
    """
    out = {}
    for layer, per_sample in report.kept_visual.items():
        kept = torch.tensor(per_sample[sample], dtype=torch.long)
        out[layer] = [torch.isin(g.positions, kept) for g in grids]
    return out
