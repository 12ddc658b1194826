"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL token layouts.

The processor resizes an image (`smart_resize`) to a multiple of `patch_size * merge_size` pixels on each
side, keeping its aspect ratio as closely as that allows; `image_grid_thw` = (1, h, w) patches. The vision
tower merges every `merge x merge` block of patches into one token, so an image is an `h/merge x w/merge`
grid of tokens, row-major (Qwen2.5-VL's window attention reorders patches inside the tower and restores the
order at its end). A video of `video_grid_thw` = (t, h, w) is t such grids, one per temporal patch (two
frames each), in time order; Qwen3-VL writes a timestamp between them, which only moves their positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InvalidParameterError, UnsupportedInputError
from .base import TokenGrid, locate

if TYPE_CHECKING:
    from PIL.Image import Image

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
VIEW_SIDE = 512  # pixels of the long side of one drawn image or frame


def _to_grid_aspect(picture: "Image", rows: int, cols: int) -> "Image":
    """The picture resized to the grid's aspect (what smart_resize gives, up to one token's rounding)."""
    scale = VIEW_SIDE / max(rows, cols)
    return picture.resize((max(1, round(cols * scale)), max(1, round(rows * scale))))


class QwenImageGrid(TokenGrid):
    kind = "image"

    def view(self, picture: "Image") -> "Image":
        return _to_grid_aspect(picture, self.rows, self.cols)


@dataclass
class QwenVideoGrid(TokenGrid):
    """A video as a strip: its temporal patches side by side, `cols / frames` columns each; each is drawn
    with the first of the `temporal` frames it merges (a last, short patch is filled with the last frame
    by the processor, so `frames * temporal - 1` frames fit too for temporal 2)."""

    kind = "video"
    frames: int  # temporal patches
    temporal: int  # frames per temporal patch

    @property
    def blocks(self) -> int:
        return self.frames

    def view(self, frames: "list[Image]") -> "Image":
        from PIL import Image

        frames = list(frames) if isinstance(frames, (list, tuple)) else [frames]
        if -(-len(frames) // self.temporal) == self.frames:  # every frame given (the last patch may be short)
            frames = frames[:: self.temporal]
        elif len(frames) != self.frames:
            raise InvalidParameterError(
                f"the video has {self.frames} temporal patches of {self.temporal} frames; give its "
                f"{self.frames * self.temporal} frames (or one per temporal patch), not {len(frames)}"
            )
        width = self.cols // self.frames
        shown = [_to_grid_aspect(frame.convert("RGB"), self.rows, width) for frame in frames]
        strip = Image.new("RGB", (sum(f.size[0] for f in shown), shown[0].size[1]))
        left = 0
        for frame in shown:
            strip.paste(frame, (left, 0))
            left += frame.size[0]
        return strip


def _grids_of(model: torch.nn.Module, inputs: dict, kind: str) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(grid_thw of every image or video, merge size, (B, L) placeholder mask)."""
    config = model.config
    key, token_id = (
        ("image_grid_thw", config.image_token_id) if kind == "image" else ("video_grid_thw", config.video_token_id)
    )
    thw = inputs.get(key)
    if thw is None or len(thw) == 0:
        raise UnsupportedInputError(f"the inputs have no {key}: there is no {kind} to picture")
    merge = int(model.config.vision_config.spatial_merge_size)
    return torch.as_tensor(thw).cpu(), merge, inputs["input_ids"] == token_id


def image_grids(model: torch.nn.Module, inputs: dict, sample: int, image_index: int) -> list[TokenGrid]:
    thw, merge, placeholders = _grids_of(model, inputs, "image")
    counts = [int(t * h * w) // merge**2 for t, h, w in thw.tolist()]
    batch_image, positions = locate(placeholders, counts, sample, image_index)
    _, h, w = thw[batch_image].tolist()
    rows, cols = h // merge, w // merge
    offsets = torch.arange(rows * cols).view(rows, cols)
    return [QwenImageGrid(rows, cols, offsets, positions[offsets])]


def video_grids(model: torch.nn.Module, inputs: dict, sample: int, video_index: int) -> list[TokenGrid]:
    thw, merge, placeholders = _grids_of(model, inputs, "video")
    counts = [int(t * h * w) // merge**2 for t, h, w in thw.tolist()]
    batch_video, positions = locate(placeholders, counts, sample, video_index, what="video")
    t, h, w = thw[batch_video].tolist()
    rows, cols = h // merge, w // merge
    # cell (r, f * cols + c) is token r * cols + c of temporal patch f
    frame = torch.arange(t)[None, :, None] * (rows * cols)
    cell = torch.arange(rows)[:, None, None] * cols + torch.arange(cols)[None, None, :]
    offsets = (frame + cell).reshape(rows, t * cols)
    temporal = int(model.config.vision_config.temporal_patch_size)
    return [QwenVideoGrid(rows, t * cols, offsets, positions[offsets], frames=t, temporal=temporal)]
