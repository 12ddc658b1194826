"""Read lmms-eval result folders written with the `tokenprune` model into one accuracy-vs-cost table.

`tokenprune compare --lmms-eval DIR [DIR ...]` reads, for each folder given to lmms-eval's `--output_path`,
the newest results file: the tasks' metrics, the model arguments, and the pruning aggregate the model
logged (`throughput`, `avg_tokenprune_*`, docs/evaluation.md). Reading results rather than running tasks
keeps lmms-eval the owner of prompts, metrics and data-parallel runs; the table only puts runs side by side.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

from .errors import DataError

PREFIX = "avg_tokenprune_"
#: (title, aggregate key, scale, decimals)
COLUMNS = (
    ("Prefill FLOPs %", "prefill_flops_ratio", 100, 1),
    ("Total FLOPs %", "total_flops_ratio", 100, 1),
    ("Visual KV %", "visual_kv_ratio", 100, 1),
    ("Equiv. visual tokens", "equivalent_visual_tokens", 1, 1),
    ("Time ratio (paired)", "time_ratio", 1, 3),
)


def read_run(folder: str | Path) -> dict:
    """The newest results file under `folder` (lmms-eval's `--output_path`): label, metrics, pruning aggregate."""
    files = sorted(glob.glob(str(Path(folder) / "**" / "*_results.json"), recursive=True))
    if not files:
        raise DataError(f"no lmms-eval results file (*_results.json) under {folder}")
    results = json.loads(Path(files[-1]).read_text())
    if "tokenprune" not in str(results.get("config", {}).get("model", "")):
        raise DataError(f"{files[-1]} is a run of model {results.get('config', {}).get('model')!r}, not tokenprune")
    pruning = {k.removeprefix(PREFIX): v for k, v in results.get("throughput", {}).items() if k.startswith(PREFIX)}
    metrics = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            if isinstance(value, (int, float)) and "_stderr" not in key:
                metrics[f"{task} {key.removesuffix(',none')}"] = value
    args = results["config"].get("model_args", "")
    return {"label": _label(args), "file": files[-1], "metrics": metrics, "pruning": pruning}


def _label(model_args: str) -> str:
    """The strategy part of the model arguments: everything but where the model is and how it runs."""
    skip = ("pretrained", "device", "dtype", "attn", "batch_size", "paired_baseline")
    parts = [p for p in str(model_args).split(",") if p and p.split("=", 1)[0] not in skip]
    return ",".join(parts) or "strategy=st3"


def markdown(runs: list[dict]) -> str:
    metric_names = sorted({name for run in runs for name in run["metrics"]})
    header = ["Run", *metric_names, *(title for title, *_ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        cells = [run["label"]]
        cells += [_fmt(run["metrics"].get(name), 1, 4) for name in metric_names]
        cells += [_fmt(run["pruning"].get(key), scale, digits) for _, key, scale, digits in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value, scale: float, digits: int) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"
