"""`TokenGrid` and how a sample's placeholder run is shared among its images (or videos)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import InvalidParameterError, UnsupportedInputError

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass
class TokenGrid:
    """One image's visual tokens (or one view of them) as a 2-D layout, row-major like the features.
    Subclasses say what the picture looks like to the model (`view`)."""

    kind: ClassVar[str]
    rows: int
    cols: int
    offsets: torch.Tensor  # (rows, cols) index of each cell's token among the image's placeholder tokens
    positions: torch.Tensor  # (rows, cols) prompt position (column of input_ids) of each cell's token

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    #: equal blocks of columns the grid is made of (the temporal patches of a video strip); 1 for an image
    blocks: ClassVar[int] = 1

    def view(self, picture: "Image") -> "Image":
        """The picture as the grid covers it (the whole image unless a subclass says otherwise)."""
        return picture


def items_by_sample(per_sample: list[int], counts: list[int], what: str = "image") -> list[list[int]]:
    """Token counts of each sample's images (or videos). They fill the placeholders in batch order, row by
    row (as transformers scatters their features), so a sample's items are the next ones adding up to its count."""
    out, item = [], 0
    for needed in per_sample:
        mine = []
        while sum(mine) < needed and item < len(counts):
            mine.append(counts[item])
            item += 1
        if sum(mine) != needed:
            raise UnsupportedInputError(
                f"the {what} placeholders of a sample ({needed}) do not add up to whole {what}s "
                f"({', '.join(map(str, counts))} tokens per {what}); build the inputs with the model's processor"
            )
        out.append(mine)
    if item != len(counts):
        raise UnsupportedInputError(f"{len(counts) - item} {what}(s) have no placeholder tokens in input_ids")
    return out


def locate(placeholders: torch.Tensor, counts: list[int], sample: int, index: int, what: str = "image"):
    """(index of the item in the batch, prompt positions of its placeholder tokens) for item `index` of
    `sample`, given the (B, L) placeholder mask and every item's token count in batch order."""
    by_sample = items_by_sample(placeholders.sum(1).tolist(), counts, what)
    mine = by_sample[sample]
    if not 0 <= index < len(mine):
        raise InvalidParameterError(f"{what}_index {index} does not exist: sample {sample} has {len(mine)} {what}(s)")
    positions = placeholders[sample].nonzero().flatten().cpu()
    start = sum(mine[:index])
    first = sum(len(items) for items in by_sample[:sample])  # batch index of the sample's first item
    return first + index, positions[start : start + mine[index]]
