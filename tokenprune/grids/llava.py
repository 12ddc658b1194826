"""LLaVA-1.5 and LLaVA-NeXT token layouts.

- LLaVA-1.5: `grid x grid` patches (24x24 for LLaVA-1.5) over the square the CLIP processor sees: the
  image resized on its shortest side and center-cropped.
- LLaVA-NeXT: the base view, `grid x grid` over the whole image resized (squashed) to a square, as
  `LlavaNextImageProcessor` makes it; and the anyres tiles, `rows x cols` features left after unpadding,
  which cover the image in its own aspect ratio. The `image_newline` token ending each tiles row is not drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers.image_processing_utils import select_best_resolution

from ..errors import UnsupportedInputError
from .base import TokenGrid, locate

if TYPE_CHECKING:
    from PIL.Image import Image

MODEL_TYPES = ("llava", "llava_next")


class ClipSquareGrid(TokenGrid):
    """LLaVA-1.5: the square CLIP's processor keeps."""

    kind = "llava"

    def view(self, picture: "Image") -> "Image":
        return picture.crop(clip_crop_box(*picture.size))


class BaseGrid(TokenGrid):
    """LLaVA-NeXT's base view: the whole image squashed to a square."""

    kind = "base"

    def view(self, picture: "Image") -> "Image":
        side = max(picture.size)
        return picture.resize((side, side))


class TilesGrid(TokenGrid):
    """LLaVA-NeXT's anyres tiles after unpadding: the whole image in its aspect ratio."""

    kind = "tiles"


def clip_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The square CLIP's processor keeps (resize shortest side, center crop), in the image's pixels."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _is_next(model: torch.nn.Module) -> bool:
    return hasattr(model.config, "image_grid_pinpoints")


def _crop_grid(model: torch.nn.Module) -> int:
    """Patches per side of one crop (24 for CLIP ViT-L/14 at 336 px)."""
    vision = model.config.vision_config
    return vision.image_size // vision.patch_size


def _class_token(model: torch.nn.Module, inputs: dict) -> int:
    """1 when the CLS feature is kept ('full' selection): it comes before the patch grid."""
    select = inputs.get("vision_feature_select_strategy") or model.config.vision_feature_select_strategy
    return 1 if select == "full" else 0


def next_tiles_shape(model: torch.nn.Module, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of a LLaVA-NeXT image's anyres features after unpadding (newlines not counted).

    The processor resizes the image into the best pinpoint resolution keeping its aspect ratio and pads
    the rest; the model drops the padded feature rows (or columns) again, as transformers' `unpad_image`.
    """
    side = model.config.vision_config.image_size
    grid = _crop_grid(model)
    best_h, best_w = select_best_resolution([height, width], model.config.image_grid_pinpoints)
    rows, cols = grid * (best_h // side), grid * (best_w // side)
    if width / height > cols / rows:  # wider than the padded grid: padding rows above and below
        rows -= 2 * ((rows - int(round(height * (cols / width), 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(width * (rows / height), 7))) // 2)
    return rows, cols


def _image_token_counts(model: torch.nn.Module, inputs: dict) -> list[int]:
    """Placeholder tokens of every image of the batch, in batch order."""
    pixels = inputs.get("pixel_values")
    if pixels is None or pixels.shape[0] == 0:
        raise UnsupportedInputError("the inputs have no pixel_values: there is no image to picture")
    base = _crop_grid(model) ** 2
    if not _is_next(model):
        return [base + _class_token(model, inputs)] * pixels.shape[0]
    sizes = inputs.get("image_sizes")
    if sizes is None or len(sizes) != pixels.shape[0]:
        raise UnsupportedInputError("LLaVA-NeXT inputs need image_sizes with one (height, width) per image")
    counts = []
    for height, width in torch.as_tensor(sizes).tolist():
        rows, cols = next_tiles_shape(model, height, width)
        counts.append(base + rows * (cols + 1))  # each tiles row ends with one image_newline token
    return counts


def image_grids(model: torch.nn.Module, inputs: dict, sample: int, image_index: int) -> list[TokenGrid]:
    placeholders = inputs["input_ids"] == model.config.image_token_id
    batch_image, positions = locate(placeholders, _image_token_counts(model, inputs), sample, image_index)
    grid = _crop_grid(model)
    if not _is_next(model):
        offsets = _class_token(model, inputs) + torch.arange(grid * grid).view(grid, grid)
        return [ClipSquareGrid(grid, grid, offsets, positions[offsets])]
    base = torch.arange(grid * grid).view(grid, grid)
    height, width = torch.as_tensor(inputs["image_sizes"])[batch_image].tolist()
    rows, cols = next_tiles_shape(model, height, width)
    # row r of the tiles holds cols features then a newline: its features start at base + r * (cols + 1)
    tiles = grid * grid + torch.arange(rows)[:, None] * (cols + 1) + torch.arange(cols)[None, :]
    return [BaseGrid(grid, grid, base, positions[base]), TilesGrid(rows, cols, tiles, positions[tiles])]
