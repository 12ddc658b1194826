"""Pictures of what pruning kept: for one image, its visual tokens as a grid over the image, kept ones clear.

One panel per strategy (row) and cut layer (column), after a first column with the input image. The token
layout is worked out here from the model config, `input_ids` and (LLaVA-NeXT) `image_sizes`, independently
of the pruning engine, so a picture is also a check of what the engine reports:

- LLaVA-1.5: `grid x grid` patches (24x24 for LLaVA-1.5) over the square the CLIP processor sees: the
  image resized on its shortest side and center-cropped.
- LLaVA-NeXT: the base view, `grid x grid` over the whole image resized (squashed) to a square, as
  `LlavaNextImageProcessor` makes it; and the anyres tiles, `rows x cols` features left after unpadding,
  which cover the image in its own aspect ratio. The `image_newline` token ending each tiles row is not drawn.

Drawing uses matplotlib's object API (`Figure` + `FigureCanvasAgg`): no pyplot state, no display needed.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers.image_processing_utils import select_best_resolution

from .errors import InvalidParameterError, UnsupportedInputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from .interfaces import Strategy
    from .report import Report

MAX_FIGURE_WIDTH = 24.0  # inches: wide enough for ~11 cut layers, small enough to open anywhere
PANEL_HEIGHT = (0.9, 2.4)  # inches, min and max of one view's image
RUN_HEIGHT = 3.6  # inches, most that the stacked views of one run (one row of panels) take
DPI = 120
LABEL_WIDTH = 1.6  # inches left of the first column for the row labels
DISPLAY_SIDE = 512  # pixels: the image is shrunk to this long side before drawing (keeps files small)
REMOVED = (0.07, 0.07, 0.09, 0.74)  # RGBA laid over removed tokens: dark and mostly opaque


@dataclass
class TokenGrid:
    """One image's visual tokens (or one view of them) as a 2-D layout, row-major like the features."""

    kind: str  # "llava" grid, or LLaVA-NeXT "base" / "tiles"
    rows: int
    cols: int
    offsets: torch.Tensor  # (rows, cols) index of each cell's token among the image's placeholder tokens
    positions: torch.Tensor  # (rows, cols) prompt position (column of input_ids) of each cell's token

    @property
    def cells(self) -> int:
        return self.rows * self.cols


# ------------------------------------------------------------------------------------------- token layout
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


def _images_by_sample(per_sample: list[int], counts: list[int]) -> list[list[int]]:
    """Token counts of each sample's images. Images fill the placeholders in batch order, row by row (as
    transformers scatters their features), so a sample's images are the next ones adding up to its count."""
    out, image = [], 0
    for needed in per_sample:
        mine = []
        while sum(mine) < needed and image < len(counts):
            mine.append(counts[image])
            image += 1
        if sum(mine) != needed:
            raise UnsupportedInputError(
                f"the placeholders of a sample ({needed}) do not add up to whole images ({', '.join(map(str, counts))} "
                "tokens per image); build the inputs with the model's processor"
            )
        out.append(mine)
    if image != len(counts):
        raise UnsupportedInputError(f"{len(counts) - image} image(s) have no placeholder tokens in input_ids")
    return out


def _locate_image(model: torch.nn.Module, inputs: dict, sample: int, image_index: int) -> tuple[int, torch.Tensor]:
    """(index of the image in the batch, prompt positions of its placeholder tokens) for sample/image_index."""
    input_ids = inputs["input_ids"]
    if not 0 <= sample < input_ids.shape[0]:
        raise InvalidParameterError(f"sample {sample} does not exist: the batch has {input_ids.shape[0]} sample(s)")
    placeholders = input_ids == model.config.image_token_id
    by_sample = _images_by_sample(placeholders.sum(1).tolist(), _image_token_counts(model, inputs))
    mine = by_sample[sample]
    if not 0 <= image_index < len(mine):
        raise InvalidParameterError(
            f"image_index {image_index} does not exist: sample {sample} has {len(mine)} image(s)"
        )
    positions = placeholders[sample].nonzero().flatten().cpu()
    start = sum(mine[:image_index])
    first = sum(len(images) for images in by_sample[:sample])  # batch index of the sample's first image
    return first + image_index, positions[start : start + mine[image_index]]


def token_grids(model: torch.nn.Module, inputs: dict, sample: int = 0, image_index: int = 0) -> list[TokenGrid]:
    """The visual tokens of image `image_index` of sample `sample` as grids: one for LLaVA-1.5, base and
    tiles for LLaVA-NeXT. From the model config, `input_ids` and `image_sizes`; the engine is not used."""
    batch_image, positions = _locate_image(model, inputs, sample, image_index)
    grid = _crop_grid(model)
    if not _is_next(model):
        offsets = _class_token(model, inputs) + torch.arange(grid * grid).view(grid, grid)
        return [TokenGrid("llava", grid, grid, offsets, positions[offsets])]
    base = torch.arange(grid * grid).view(grid, grid)
    height, width = torch.as_tensor(inputs["image_sizes"])[batch_image].tolist()
    rows, cols = next_tiles_shape(model, height, width)
    # row r of the tiles holds cols features then a newline: its features start at base + r * (cols + 1)
    tiles = grid * grid + torch.arange(rows)[:, None] * (cols + 1) + torch.arange(cols)[None, :]
    return [
        TokenGrid("base", grid, grid, base, positions[base]),
        TokenGrid("tiles", rows, cols, tiles, positions[tiles]),
    ]


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


# ------------------------------------------------------------------------------------------- image views
def _shrink(image: "Image") -> "Image":
    """An RGB copy at most DISPLAY_SIDE pixels on its long side."""
    copy = image.convert("RGB")
    copy.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return copy


def clip_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The square CLIP's processor keeps (resize shortest side, center crop), in the image's pixels."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def grid_views(image: "Image", grids: list[TokenGrid]) -> list["Image"]:
    """The image as each grid covers it: CLIP's square crop; NeXT's squashed base square; the whole image for tiles."""
    views = []
    for g in grids:
        if g.kind == "llava":
            views.append(image.crop(clip_crop_box(*image.size)))
        elif g.kind == "base":
            side = max(image.size)
            views.append(image.resize((side, side)))
        else:
            views.append(image)
    return views


# ------------------------------------------------------------------------------------------- drawing
def strategy_label(description: dict, width: int = 20) -> str:
    """ "st3" over its parameters, wrapped to fit beside a panel."""
    params = " ".join(f"{k}={v}" for k, v in description.items() if k != "name" and v is not None)
    return "\n".join([description["name"], *textwrap.wrap(params, width)])


def _draw_grid(ax: "Axes", view: "Image", grid: TokenGrid, mask: torch.Tensor | None, cell_px: float) -> None:
    """The view in grid coordinates (one unit per token), removed cells dimmed, light cell lines."""
    import numpy as np

    extent = (0, grid.cols, grid.rows, 0)
    ax.imshow(np.asarray(view), extent=extent, aspect="auto", interpolation="antialiased")
    if mask is not None:
        overlay = np.zeros((grid.rows, grid.cols, 4))
        overlay[~mask.numpy()] = REMOVED
        ax.imshow(overlay, extent=extent, aspect="auto", interpolation="nearest")
    if cell_px >= 3:  # lines only while cells are a few pixels wide, else they hide the image
        style = dict(colors="white", linewidths=0.3, alpha=0.45)
        ax.vlines(range(1, grid.cols), 0, grid.rows, **style)
        ax.hlines(range(1, grid.rows), 0, grid.cols, **style)
    ax.set_xlim(0, grid.cols)
    ax.set_ylim(grid.rows, 0)
    ax.set_box_aspect(view.size[1] / view.size[0])
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass
class _Layout:
    """Sizes in units of one view's height: columns = input + cut layers, NeXT views stacked in a column."""

    widths: list[float]  # width ratios of the columns
    heights: list[float]  # height of each view row of one run
    unit: float  # inches per unit
    width: float  # figure width, inches
    row_title: float = 0.4  # inches above each view row for its titles

    def figure_height(self, runs: int, header: float) -> float:
        return header + runs * (sum(self.heights) * self.unit + self.row_title * len(self.heights))


def _layout(image: "Image", views: list["Image"], layers: int) -> _Layout:
    """Panels as large as PANEL_HEIGHT allows within MAX_FIGURE_WIDTH (wider only past ~16 NeXT cut layers)."""
    aspects = [v.size[0] / v.size[1] for v in views]
    column = max(aspects)  # a view at full height 1 fits a column this wide; a portrait one is taller
    heights = [1 / min(a, 1) for a in aspects]
    widths = [min(image.size[0] / image.size[1] * sum(heights), 1.5 * column)] + [column] * layers
    gaps = 0.12 * len(widths)
    unit = (MAX_FIGURE_WIDTH - LABEL_WIDTH - gaps) / sum(widths)
    unit = min(max(unit, PANEL_HEIGHT[0]), PANEL_HEIGHT[1], RUN_HEIGHT / sum(heights))
    return _Layout(widths, heights, unit, LABEL_WIDTH + gaps + unit * sum(widths))


def kept_tokens_figure(
    image: "Image",
    runs: list[tuple[str, "Report"]],
    inputs: dict,
    model: torch.nn.Module,
    *,
    sample: int = 0,
    image_index: int = 0,
    title: str | None = None,
) -> "Figure":
    """The figure `draw_kept_tokens` saves: rows = runs, columns = the input, then every cut layer of any
    run (a run without a cut at that layer leaves its cell blank); LLaVA-NeXT panels hold base over tiles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not runs:
        raise InvalidParameterError("nothing to draw: give at least one (label, report) run")
    grids = token_grids(model, inputs, sample, image_index)
    shown = _shrink(image)
    views = grid_views(shown, grids)
    masks = [kept_masks(report, grids, sample) for _, report in runs]
    layers = sorted(set().union(*masks))
    lay = _layout(shown, views, len(layers))
    header = 0.55 if title else 0.2
    height = lay.figure_height(len(runs), header)
    fig = Figure(figsize=(lay.width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    per_run = len(grids)
    spec = fig.add_gridspec(
        len(runs) * per_run,
        len(lay.widths),
        width_ratios=lay.widths,
        height_ratios=lay.heights * len(runs),
        left=LABEL_WIDTH / lay.width,
        right=0.99,
        top=1 - (header + lay.row_title) / height,
        bottom=0.01,
        wspace=0.08,
        hspace=lay.row_title / (lay.unit * sum(lay.heights) / per_run),
    )
    if title:
        fig.suptitle(title, fontsize=10)
    for run, ((label, report), per_layer) in enumerate(zip(runs, masks, strict=True)):
        rows = slice(run * per_run, (run + 1) * per_run)
        ax = fig.add_subplot(spec[rows, 0])
        ax.imshow(shown)
        if grids[0].kind == "llava":  # what CLIP keeps of the image
            left, top, right, bottom = clip_crop_box(*shown.size)
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, ec="white", lw=1, ls="--"))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
        ax.set_title("input", fontsize=8)
        for column, layer in enumerate(layers, start=1):
            if layer not in per_layer:
                continue  # this strategy does not cut here: a blank cell
            for v, (grid, view, mask) in enumerate(zip(grids, views, per_layer[layer], strict=True)):
                ax = fig.add_subplot(spec[run * per_run + v, column])
                cell_px = lay.unit * lay.heights[v] * DPI / grid.rows
                _draw_grid(ax, view, grid, mask, cell_px)
                kept = f"kept {int(mask.sum())}/{grid.cells}"
                name = "" if grid.kind == "llava" else f"{grid.kind} "
                ax.set_title(f"layer {layer}\n{name}{kept}" if v == 0 else f"{name}{kept}", fontsize=7)
    return fig


def draw_kept_tokens(
    image: "Image",
    runs: list[tuple[str, "Report"]],
    inputs: dict,
    model: torch.nn.Module,
    out_path: str | Path,
    *,
    sample: int = 0,
    image_index: int = 0,
    title: str | None = None,
) -> Path:
    """Write a PNG of which visual tokens each run kept at each of its cut layers; returns its path.

    `runs` pairs a row label with the `Report` of a pruned generate on `inputs`; `image` is the picture
    of image `image_index` of sample `sample` (any PIL image; drawn as the processor saw it).
    """
    fig = kept_tokens_figure(image, runs, inputs, model, sample=sample, image_index=image_index, title=title)
    path = Path(out_path)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def render(
    model: torch.nn.Module,
    inputs: dict,
    image: "Image",
    strategies: list["str | dict | Strategy | tuple[str, dict]"],
    out_path: str | Path,
    *,
    max_new_tokens: int = 1,
    adapter: "str | None" = None,
    adapter_options: dict | None = None,
    labels: list[str] | None = None,
    **kw: Any,
) -> Path:
    """Run each strategy (a name, a config dict, a Strategy, or (name, params)) under `tp.prune` with greedy
    generate on `inputs`, then draw what each kept (`draw_kept_tokens`; `kw`: sample, image_index, title).

    `labels` name the rows (default: each strategy's name and parameters). The cuts happen in the prefill,
    so one new token is enough. `adapter` and `adapter_options` go to `tp.prune` (with
    LLaVA-NeXT's `prune_newlines`, removed newlines are not drawn: only feature tokens are).
    """
    from .api import prune, resolve_strategy

    if labels is not None and len(labels) != len(strategies):
        raise ValueError(f"{len(labels)} labels for {len(strategies)} strategies")
    runs = []
    with torch.inference_mode():
        for i, item in enumerate(strategies):
            strategy = resolve_strategy(item[0], **item[1]) if isinstance(item, tuple) else resolve_strategy(item)
            with prune(model, strategy, adapter=adapter, adapter_options=adapter_options) as run:
                model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            label = labels[i] if labels is not None else strategy_label(strategy.describe())
            runs.append((label, run.report))
    return draw_kept_tokens(image, runs, inputs, model, out_path, **kw)
