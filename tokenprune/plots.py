"""PNG plots of a comparison: the quality vs FLOPs trade-off, visual tokens per layer, visual KV per decode step.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global figure state).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 130


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, facecolor="white", bbox_inches="tight")


def _mean_curves(records: list[dict], key: str) -> list[float]:
    """Mean over samples of a per-layer / per-step list (samples may differ in length: use what each has)."""
    curves = [r[key] for r in records if r.get(key)]
    if not curves:
        return []
    length = max(len(c) for c in curves)
    return [statistics.fmean(c[i] for c in curves if i < len(c)) for i in range(length)]


def tradeoff(results: dict, path: Path) -> str:
    """Quality vs prefill FLOPs, one marker per strategy: greedy agreement with the baseline (any data),
    and task accuracy next to it when the data has answers."""
    rows = [r for r in results["rows"] if r.get("prefill_flops_ratio") is not None]
    panels = [("agreement", "greedy-token agreement with the baseline (%)")]
    if any("accuracy" in (r.get("task") or {}) for r in rows):
        panels.insert(0, ("accuracy", "task accuracy (%)"))
    fig = Figure(figsize=(5.2 * len(panels) + 1.8, 4.2))
    markers = "osD^v<>pPX*h"
    for p, (metric, label) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for i, row in enumerate(rows):
            y = (row.get("task") or {}).get("accuracy") if metric == "accuracy" else row.get("agreement")
            if y is None:
                continue
            ax.scatter(
                [100 * row["prefill_flops_ratio"]],
                [100 * y],
                s=45,
                marker=markers[i % len(markers)],
                label=row["label"],
                zorder=3,
            )
        ax.set_xlabel("prefill FLOPs (% of baseline)")
        ax.set_ylabel(label)
        ax.set_xlim(0, 105)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    # one legend for all panels, outside the axes: labels never overlap the points
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle("Quality vs compute")
    fig.tight_layout()
    _save(fig, path)
    return path.name


def visual_tokens_per_layer(results: dict, methods: list, path: Path) -> str:
    layers = (results.get("model") or {}).get("layers") or 0
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    for method in methods:
        records = list(method.records.values())
        if method.strategy is None:
            continue
        curve = _mean_curves(records, "visual_tokens_per_layer")
        if curve:
            ax.step(range(len(curve)), curve, where="post", label=method.label)
            layers = max(layers, len(curve))
    baseline = _baseline_visual(methods)
    if baseline is not None and layers:
        ax.step(range(layers), [baseline] * layers, where="post", color="black", linestyle="--", label="baseline")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("visual tokens present (mean over samples)")
    ax.set_title("Visual tokens per layer (prefill)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return path.name


def _baseline_visual(methods: list) -> float | None:
    for method in methods:
        counts = [r["visual_tokens"] for r in method.records.values() if "visual_tokens" in r]
        if counts:
            return statistics.fmean(counts)
    return None


def visual_kv_per_step(methods: list, path: Path) -> str:
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    steps = 0
    for method in methods:
        if method.strategy is None:
            continue
        curve = _mean_curves(list(method.records.values()), "visual_kv_fraction_per_step")
        if curve:
            ax.plot(range(len(curve)), [100 * v for v in curve], label=method.label)
            steps = max(steps, len(curve))
    if steps:
        ax.plot(range(steps), [100] * steps, color="black", linestyle="--", label="baseline")
    ax.set_xlabel("decode step (0 = after prefill)")
    ax.set_ylabel("visual KV cache (% of baseline)")
    ax.set_ylim(0, 105)
    ax.set_title("Visual KV cache while decoding")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return path.name


def write_plots(results: dict, methods: list, out: Path) -> dict[str, str]:
    """Write the three plots into `out`; returns name -> file name (relative to `out`)."""
    return {
        "tradeoff": tradeoff(results, out / "tradeoff.png"),
        "visual_tokens_per_layer": visual_tokens_per_layer(results, methods, out / "visual_tokens_per_layer.png"),
        "visual_kv_per_step": visual_kv_per_step(methods, out / "visual_kv_per_step.png"),
    }
