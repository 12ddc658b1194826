"""Pictures of what pruning kept: an image's (or a video's) visual tokens as a grid over the picture, kept
ones clear, removed ones dimmed.

For an image: one panel per strategy (row) and cut layer (column), after a first column with the input
image; LLaVA-NeXT panels stack its base view over its tiles. For a video (Qwen-VL): its temporal patches side
by side as a strip, one strip per strategy and cut layer, under the input strip. The token layouts come from
`tokenprune.grids` (model config and inputs alone, independent of the pruning engine), so a picture is also
a check of what the engine reports.

Drawing uses matplotlib's object API (`Figure` + `FigureCanvasAgg`): no pyplot state, no display needed.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import InvalidParameterError
from .grids import TokenGrid, kept_masks, token_grids
from .grids.llava import clip_crop_box

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL.Image import Image

    from .interfaces import Strategy
    from .report import Report

__all__ = ["TokenGrid", "token_grids", "kept_masks", "kept_tokens_figure", "draw_kept_tokens", "render"]

MAX_FIGURE_WIDTH = 24.0  # inches: wide enough for ~11 cut layers, small enough to open anywhere
PANEL_HEIGHT = (0.9, 2.4)  # inches, min and max of one view's image
RUN_HEIGHT = 3.6  # inches, most that the stacked views of one run (one row of panels) take
DPI = 120
LABEL_WIDTH = 1.6  # inches left of the first column for the row labels
DISPLAY_SIDE = 512  # pixels: the image is shrunk to this long side before drawing (keeps files small)
REMOVED = (0.07, 0.07, 0.09, 0.74)  # RGBA laid over removed tokens: dark and mostly opaque


# ------------------------------------------------------------------------------------------- image views
def _shrink(image: "Image") -> "Image":
    """An RGB copy at most DISPLAY_SIDE pixels on its long side."""
    copy = image.convert("RGB")
    copy.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return copy


# ------------------------------------------------------------------------------------------- drawing
def strategy_label(description: dict, width: int = 20) -> str:
    """ "st3" over its parameters, wrapped to fit beside a panel."""
    params = " ".join(f"{k}={v}" for k, v in description.items() if k != "name" and v is not None)
    return "\n".join([description["name"], *textwrap.wrap(params, width)])


def _draw_grid(ax: "Axes", view: "Image", grid: TokenGrid, mask: torch.Tensor | None, cell_px: float) -> None:
    """The view in grid coordinates (one unit per token), removed cells dimmed, light cell lines, and white
    lines between the blocks of a strip (a video's temporal patches)."""
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
    if grid.blocks > 1:
        width = grid.cols // grid.blocks
        ax.vlines(range(width, grid.cols, width), 0, grid.rows, colors="white", linewidths=1.5)
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


def _new_figure(width: float, height: float, title: str | None) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _image_figure(
    image: "Image", runs: list[tuple[str, "Report"]], grids: list[TokenGrid], sample: int, title: str | None
) -> "Figure":
    """Rows = runs, columns = the input, then every cut layer of any run (a run without a cut at that layer
    leaves its cell blank); a panel stacks the grids' views (LLaVA-NeXT: base over tiles)."""
    from matplotlib.patches import Rectangle

    shown = _shrink(image)
    views = [grid.view(shown) for grid in grids]
    masks = [kept_masks(report, grids, sample) for _, report in runs]
    layers = sorted(set().union(*masks))
    lay = _layout(shown, views, len(layers))
    header = 0.55 if title else 0.2
    height = lay.figure_height(len(runs), header)
    fig = _new_figure(lay.width, height, title)
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
                name = "" if len(grids) == 1 else f"{grid.kind} "
                ax.set_title(f"layer {layer}\n{name}{kept}" if v == 0 else f"{name}{kept}", fontsize=7)
    return fig


def _strip_figure(
    frames: "list[Image]", runs: list[tuple[str, "Report"]], grid: TokenGrid, sample: int, title: str | None
) -> "Figure":
    """A video: the input strip, then one strip per run and cut layer, top to bottom."""
    strip = grid.view(frames)
    masks = [kept_masks(report, [grid], sample) for _, report in runs]
    rows = [("input", f"input: {grid.blocks} temporal patches, {grid.cells} tokens", None)]
    for (label, _), per_layer in zip(runs, masks, strict=True):
        for i, layer in enumerate(sorted(per_layer)):
            (mask,) = per_layer[layer]
            rows.append((label if i == 0 else "", f"layer {layer}: kept {int(mask.sum())}/{grid.cells}", mask))
    aspect = strip.size[0] / strip.size[1]
    strip_height = min(PANEL_HEIGHT[1], (MAX_FIGURE_WIDTH - LABEL_WIDTH - 0.2) / aspect)
    width = LABEL_WIDTH + 0.2 + strip_height * aspect
    row_title, header = 0.3, (0.55 if title else 0.2)
    height = header + len(rows) * (strip_height + row_title)
    fig = _new_figure(width, height, title)
    spec = fig.add_gridspec(
        len(rows),
        1,
        left=LABEL_WIDTH / width,
        right=1 - 0.1 / width,
        top=1 - (header + row_title) / height,
        bottom=0.01,
        hspace=row_title / strip_height,
    )
    for i, (label, caption, mask) in enumerate(rows):
        ax = fig.add_subplot(spec[i, 0])
        _draw_grid(ax, strip, grid, mask, strip_height * DPI / grid.rows)
        ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
        ax.set_title(caption, fontsize=7, loc="left")
    return fig


def kept_tokens_figure(
    picture: "Image | list[Image]",
    runs: list[tuple[str, "Report"]],
    inputs: dict,
    model: torch.nn.Module,
    *,
    sample: int = 0,
    image_index: int = 0,
    video_index: int | None = None,
    title: str | None = None,
) -> "Figure":
    """The figure `draw_kept_tokens` saves (see the module docstring for its layout)."""
    if not runs:
        raise InvalidParameterError("nothing to draw: give at least one (label, report) run")
    grids = token_grids(model, inputs, sample, image_index, video_index=video_index)
    if video_index is not None:
        return _strip_figure(picture, runs, grids[0], sample, title)
    return _image_figure(picture, runs, grids, sample, title)


def draw_kept_tokens(
    picture: "Image | list[Image]",
    runs: list[tuple[str, "Report"]],
    inputs: dict,
    model: torch.nn.Module,
    out_path: str | Path,
    *,
    sample: int = 0,
    image_index: int = 0,
    video_index: int | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of which visual tokens each run kept at each of its cut layers; returns its path.

    `runs` pairs a row label with the `Report` of a pruned generate on `inputs`. `picture` is image
    `image_index` of sample `sample` (any PIL image; drawn as the processor saw it), or, with `video_index`,
    the frames of that video (a list of PIL images: all of them, or one per temporal patch).
    """
    fig = kept_tokens_figure(
        picture, runs, inputs, model, sample=sample, image_index=image_index, video_index=video_index, title=title
    )
    path = Path(out_path)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def render(
    model: torch.nn.Module,
    inputs: dict,
    picture: "Image | list[Image]",
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
    generate on `inputs`, then draw what each kept (`draw_kept_tokens`; `kw`: sample, image_index, video_index,
    title).

    `labels` name the rows (default: each strategy's name and parameters). The cuts happen in the prefill,
    so one new token is enough. `adapter` and `adapter_options` go to `tp.prune` (with
    LLaVA-NeXT's `prune_newlines`, removed newlines are not drawn: only feature tokens are).
    """
    from .api import prune, resolve_strategy

    if labels is not None and len(labels) != len(strategies):
        raise InvalidParameterError(f"{len(labels)} labels for {len(strategies)} strategies; give one per strategy")
    runs = []
    with torch.inference_mode():
        for i, item in enumerate(strategies):
            strategy = resolve_strategy(item[0], **item[1]) if isinstance(item, tuple) else resolve_strategy(item)
            with prune(model, strategy, adapter=adapter, adapter_options=adapter_options) as run:
                model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            label = labels[i] if labels is not None else strategy_label(strategy.describe())
            runs.append((label, run.report))
    return draw_kept_tokens(picture, runs, inputs, model, out_path, **kw)
