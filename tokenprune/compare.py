"""`tokenprune compare CONFIG --out DIR`: the unpruned baseline and every configured strategy on the same data.

Data flow: config -> model + samples -> per method and sample one greedy generation (tokens, first-token
logits, the pruning report) -> fidelity vs the baseline and task accuracy -> side-by-side timing of each
strategy against the baseline -> results.json / .csv / .md and plots.

Resumable: every finished unit of work is a *cell* under DIR/cells, written as soon as it is done (one
JSON line per sample and method, one file per timing or calibration). A re-run skips finished cells;
`--force` deletes them first. A cell's key hashes everything its result depends on (model, data,
generation settings, the strategy), so changing the config never reuses a stale cell.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import statistics
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import tokenprune as tp

from . import data as datasets
from . import timing
from .config import CompareConfig, StrategySpec, load_config, strategy_specs
from .errors import ConfigError, TokenpruneError
from .metrics import agreement, first_token_kl
from .models import LoadedModel, load_model
from .ratios import ratio

BASELINE = "baseline"


# ------------------------------------------------------------------------------------------- cells
@dataclass
class Cells:
    """Finished work on disk: per-method JSONL records (one line per sample), and JSON files."""

    root: Path

    def key(self, *parts: Any) -> str:
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    def records(self, name: str) -> dict[int, dict]:
        path = self.root / f"{name}.jsonl"
        if not path.exists():
            return {}
        found = {}
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that sample is simply redone
            found[record["index"]] = record
        return found

    def append(self, name: str, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{name}.jsonl"
        torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
        with open(path, "a") as f:
            # after a crash mid-write the last line has no newline: start a fresh line so this record stays readable
            f.write(("\n" if torn else "") + json.dumps(record) + "\n")

    def read(self, name: str) -> dict | None:
        path = self.root / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def write(self, name: str, value: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{name}.json.tmp"
        tmp.write_text(json.dumps(value, indent=1))
        tmp.replace(self.root / f"{name}.json")  # atomic: a crash never leaves half a cell

    def tensor_path(self, name: str, index: int) -> Path:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{index}.pt"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:40]


# ------------------------------------------------------------------------------------------- methods
@dataclass
class Method:
    label: str
    strategy: tp.Strategy | None  # None = the unpruned baseline
    cell: str = ""
    records: dict[int, dict] = field(default_factory=dict)
    timing: dict | None = None
    calibration: dict | None = None
    error: str | None = None


class Comparison:
    """One comparison run; `run()` fills the cells, `results()` turns them into rows."""

    def __init__(
        self,
        config: CompareConfig,
        out: Path,
        *,
        force: bool = False,
        source: str = "<config>",
        console: Console | None = None,
        progress_console: Console | None = None,
    ) -> None:
        self.config, self.out, self.source = config, Path(out), source
        self.console = console or Console()
        self.progress_console = progress_console or Console(stderr=True)
        self.specs = strategy_specs(config, source)
        self.force = force
        self.cells = Cells(self.out / "cells")
        self.loaded: LoadedModel | None = None
        self.samples: list = []
        self.methods: list[Method] = []

    # -------------------------------------------------------------------------------- setup
    def _prune(self, strategy: tp.Strategy):
        model = self.config.model
        return tp.prune(
            self.loaded.model, strategy, adapter=model.adapter, adapter_options=model.adapter_options or None
        )

    def setup(self) -> None:
        c = self.config
        self.loaded = load_model(
            c.model.source,
            family=c.model.family,
            tiny=c.model.tiny,
            dtype=c.model.dtype,
            device=c.model.device,
            attn=c.model.attn,
            seed=c.model.seed,
        )
        self.samples = datasets.load_samples(
            c.data.format, c.data.path, limit=c.data.limit, seed=c.data.seed, image_root=c.data.image_root
        )
        for spec in self.specs:
            if spec.strategy is not None:
                try:
                    self._prune(spec.strategy).strategy.check(self.loaded.num_layers)
                except TokenpruneError as exc:
                    raise ConfigError(
                        f"{self.source}: strategy '{spec.label}' does not fit {self.loaded.description}: {exc}"
                    ) from None
        if self.force and self.cells.root.exists():  # only once the config is known to be good
            shutil.rmtree(self.cells.root)
        self.fingerprint = {
            "tokenprune": tp.__version__,
            "model": c.model.model_dump(),
            "data": c.data.model_dump(),
            "generation": c.generation.model_dump(),
            "seed": c.seed,
        }
        self.methods = [Method(BASELINE, None, f"{BASELINE}-{self.cells.key(self.fingerprint)}")]

    def _prepare(self, method: Method, spec: StrategySpec) -> None:
        """VTW's k when it is `auto`, and the method's cell name (which depends on the final parameters)."""
        if spec.calibration is not None:
            method.calibration = self._calibrate(spec)
            method.strategy = tp.resolve_strategy("vtw", k=method.calibration["k"])
        method.cell = f"{_slug(spec.label)}-{self.cells.key(self.fingerprint, method.strategy.describe())}"

    def _calibrate(self, spec: StrategySpec) -> dict:
        settings = spec.calibration
        name = f"calibration-{self.cells.key(self.fingerprint, settings.model_dump())}"
        found = self.cells.read(name)
        if found is None:
            chosen = self.samples[: settings.calibration_samples]
            self._status(f"calibrating VTW's k on {len(chosen)} samples (eta {settings.eta})")
            result = tp.find_k(
                self.loaded.model,
                [self.loaded.inputs(s.images, s.prompt) for s in chosen],
                settings.eta,
                adapter=self.config.model.adapter,
                adapter_options=self.config.model.adapter_options or None,
            )
            found = result.to_dict()
            self.cells.write(name, found)
        return found

    # -------------------------------------------------------------------------------- run
    def run(self) -> dict:
        self.setup()
        c = self.config
        timed = "timing" in c.metrics and c.timing.samples > 0
        n = len(self.samples)
        with Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.progress_console,
            transient=True,
        ) as progress:
            self.progress = progress
            self.task = progress.add_task("setting up", total=(1 + len(self.specs)) * n)
            try:
                self._quality(self.methods[0])
                for spec in self.specs:
                    method = Method(spec.label, spec.strategy)
                    self.methods.append(method)
                    try:
                        self._prepare(method, spec)
                        self._quality(method)
                        if timed:
                            self._timing(method)
                    except TokenpruneError as exc:  # one broken strategy must not cost the others their results
                        method.error = str(exc)
                        self.console.print(f"[red]strategy '{method.label}' failed:[/red] {exc}")
                if c.pictures.samples:
                    self._pictures()
            except BaseException:
                self._save_partial()
                raise
            finally:
                self.progress = None
        return self.write_results()

    def _save_partial(self) -> None:
        """After an error or an interrupt: the cells are on disk already; also write the tables of what finished."""
        try:
            if any(m.records for m in self.methods):
                self.write_results()
                self.console.print(
                    f"[yellow]stopped early; finished cells are saved in {self.out}/cells and "
                    "summarised in results.md; run the same command again to resume[/yellow]"
                )
        except Exception as exc:  # noqa: BLE001 - never hide the original error behind a reporting one
            self.console.print(f"[red]could not write partial results: {exc!r}[/red]")

    def _status(self, text: str) -> None:
        if getattr(self, "progress", None) is not None:
            self.progress.update(self.task, description=text)

    def _generate(self, inputs: dict, **extra):
        return self.loaded.model.generate(
            **inputs, max_new_tokens=self.config.generation.max_new_tokens, do_sample=False, num_beams=1, **extra
        )

    def _quality(self, method: Method) -> None:
        """One greedy generation per sample; each finished sample is appended to the method's cell at once."""
        method.records = self.cells.records(method.cell)
        base = self.methods[0]
        for index, sample in enumerate(self.samples):
            if index in method.records:
                self.progress.advance(self.task)
                continue
            self._status(f"{method.label}: sample {index + 1}/{len(self.samples)}")
            inputs = self.loaded.inputs(sample.images, sample.prompt)
            prompt_len = inputs["input_ids"].shape[1]
            with torch.inference_mode():
                if method.strategy is None:
                    out = self._generate(inputs, output_logits=True, return_dict_in_generate=True)
                    report = None
                else:
                    with self._prune(method.strategy) as run:
                        out = self._generate(inputs, output_logits=True, return_dict_in_generate=True)
                    report = run.report
            tokens = out.sequences[0, prompt_len:].tolist()
            logits = out.logits[0][0].float().cpu()
            record = {"index": index, "id": sample.id, "tokens": tokens, "prediction": self.loaded.decode(tokens)}
            if method.strategy is None:
                torch.save(logits, self.cells.tensor_path(method.cell, index))
                record.update(agreement=1.0, first_token_kl=0.0)
            else:
                reference = torch.load(self.cells.tensor_path(base.cell, index))
                record.update(
                    agreement=agreement(tokens, base.records[index]["tokens"]),
                    first_token_kl=first_token_kl(logits, reference),
                )
                record.update(_report_summary(report))
            method.records[index] = record
            self.cells.append(method.cell, record)
            self.progress.advance(self.task)

    def _timing(self, method: Method) -> None:
        """Baseline and this strategy interleaved on the same inputs; medians; ratios (tokenprune.timing)."""
        c = self.config
        name = f"{method.cell}-timing-{self.cells.key(c.timing.model_dump())}"
        method.timing = self.cells.read(name)
        if method.timing is not None:
            return
        per_sample = []
        for index, sample in enumerate(self.samples[: c.timing.samples]):
            self._status(f"{method.label}: timing sample {index + 1}/{c.timing.samples}")
            inputs = self.loaded.inputs(sample.images, sample.prompt)

            def generate(n: int, stopping_criteria, inputs=inputs):
                self.loaded.model.generate(
                    **inputs,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    num_beams=1,
                    stopping_criteria=stopping_criteria,
                )

            methods = [timing.baseline_method(), (method.label, lambda: self._prune(method.strategy))]
            measured = timing.measure(
                methods,
                generate,
                new_tokens=max(2, c.generation.max_new_tokens),
                repeats=c.timing.repeats,
                warmup=c.timing.warmup,
            )
            per_sample.append(
                {
                    "ratios": timing.ratios(measured)[method.label],
                    "baseline": measured[BASELINE].to_dict(),
                    "pruned": measured[method.label].to_dict(),
                }
            )
        method.timing = {
            key: statistics.median(s["ratios"][key] for s in per_sample)
            for key in ("ttft_ratio", "decode_ratio", "end_to_end_ratio")
        } | {"samples": per_sample}
        self.cells.write(name, method.timing)

    def _pictures(self) -> None:
        """Kept-token pictures of the first samples; redrawn only when the drawn strategies changed."""
        from .pictures import render

        folder = self.out / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        drawn = [m for m in self.methods[1:] if m.strategy is not None and m.error is None]
        key = self.cells.key(self.fingerprint, [(m.label, m.strategy.describe()) for m in drawn])
        self.pictures = []
        for index, sample in enumerate(self.samples[: self.config.pictures.samples]):
            if not sample.images:
                continue
            path = folder / f"kept_tokens_{index}.png"
            marker = f"picture-{index}-{key}"
            self.pictures.append(str(path.relative_to(self.out)))
            if path.exists() and self.cells.read(marker) is not None:
                continue
            self._status(f"drawing kept tokens of sample {index + 1}")
            inputs = self.loaded.inputs(sample.images, sample.prompt)
            render(
                self.loaded.model,
                inputs,
                sample.images[0],
                [m.strategy for m in drawn],
                path,
                labels=[textwrap.fill(m.label, 22) for m in drawn],
                adapter=self.config.model.adapter,
                adapter_options=self.config.model.adapter_options or None,
                title=f"sample {sample.id}: visual tokens kept at each cut layer",
            )
            self.cells.write(marker, {"path": str(path.relative_to(self.out)), "strategies": [m.label for m in drawn]})

    # -------------------------------------------------------------------------------- results
    def results(self) -> dict:
        task = datasets.task_of(self.config.data.format)
        rows = []
        for method in self.methods:
            baseline = method is self.methods[0]
            records = [method.records[i] for i in sorted(method.records)]
            row: dict[str, Any] = {
                "label": method.label,
                "samples": len(records),
                "strategy": method.strategy.describe() if method.strategy else None,
            }
            if method.error:
                row["error"] = method.error
            if method.calibration:
                row["calibration"] = method.calibration
            row.update(_aggregate(records, baseline))
            if baseline and records:
                row["equivalent_visual_tokens"] = _baseline_visual_tokens(self.methods[1:], records)
            if "accuracy" in self.config.metrics and records:
                done = [self.samples[r["index"]] for r in records]
                row["task"] = datasets.score_predictions(task, [r["prediction"] for r in records], done)
            if baseline:
                row.update(ttft_ratio=1.0, decode_ratio=1.0, end_to_end_ratio=1.0)
            elif method.timing:
                row.update({k: method.timing[k] for k in ("ttft_ratio", "decode_ratio", "end_to_end_ratio")})
            rows.append(row)
        return {
            "tokenprune_version": tp.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": timing.machine(self.loaded.device if self.loaded else torch.device("cpu")),
            "model": {
                "description": self.loaded.description,
                "source": self.loaded.source,
                "layers": self.loaded.num_layers,
            }
            if self.loaded
            else None,
            "data": {**self.config.data.model_dump(), "task": task, "samples": len(self.samples)},
            "config": self.config.model_dump(),
            "rows": rows,
            "pictures": getattr(self, "pictures", []),
        }

    def write_results(self) -> dict:
        from .plots import write_plots

        results = self.results()
        self.out.mkdir(parents=True, exist_ok=True)
        results["plots"] = write_plots(results, self.methods, self.out)
        (self.out / "results.json").write_text(json.dumps(results, indent=2))
        write_csv(results, self.out / "results.csv")
        (self.out / "results.md").write_text(markdown(results))
        return results


def _report_summary(report) -> dict:
    flops, kv = report.flops(), report.kv_bytes()
    base_visual = kv["visual"]["baseline_peak"]
    return {
        "flops": {k: flops[k] for k in ("prefill", "decode", "baseline_prefill", "baseline_decode")},
        "kv": {
            part: {k: kv[part][k] for k in ("mean", "baseline_mean", "peak", "baseline_peak")}
            for part in ("visual", "total")
        },
        "visual_tokens": report.visual_tokens[0],
        "visual_tokens_per_layer": [layer[0] for layer in report.prefill_visual_tokens],
        "equivalent_visual_tokens": report.equivalent_visual_tokens[0],
        "visual_kv_fraction_per_step": [ratio(v, base_visual) for v in kv["visual"]["per_step"]],
    }


def _ratio_of_sums(records: list[dict], group: str, part: str, key: str) -> float:
    """`ratio` of `record[group][part][key]` summed over the samples to `...[baseline_<key>]` summed likewise."""
    value = sum(r[group][part][key] for r in records)
    base = sum(r[group][part][f"baseline_{key}"] for r in records)
    return ratio(value, base)


def _aggregate(records: list[dict], baseline: bool) -> dict:
    """Ratios of sums over samples (FLOPs, KV) and means (fidelity)."""
    if not records:
        return {}
    row = {
        "first_token_kl": statistics.fmean(r["first_token_kl"] for r in records),
        "agreement": statistics.fmean(r["agreement"] for r in records),
    }
    if baseline:  # its equivalent visual tokens (N) come from the strategies' records: `Comparison.results`
        return row | {
            "prefill_flops_ratio": 1.0,
            "total_flops_ratio": 1.0,
            "visual_kv_ratio": 1.0,
            "total_kv_ratio": 1.0,
        }
    flops = {
        k: sum(r["flops"][k] for r in records) for k in ("prefill", "decode", "baseline_prefill", "baseline_decode")
    }
    return row | {
        "prefill_flops_ratio": ratio(flops["prefill"], flops["baseline_prefill"]),
        "total_flops_ratio": ratio(
            flops["prefill"] + flops["decode"], flops["baseline_prefill"] + flops["baseline_decode"]
        ),
        "visual_kv_ratio": _ratio_of_sums(records, "kv", "visual", "mean"),
        "total_kv_ratio": _ratio_of_sums(records, "kv", "total", "mean"),
        "equivalent_visual_tokens": statistics.fmean(_equivalent_visual_tokens(r) for r in records),
    }


def _equivalent_visual_tokens(record: dict) -> float:
    """A sample's visual tokens summed over the prefill layers / the layers (cells written before the field had it
    computed from the per-layer counts they hold)."""
    if "equivalent_visual_tokens" in record:
        return record["equivalent_visual_tokens"]
    return statistics.fmean(record["visual_tokens_per_layer"])


def _baseline_visual_tokens(methods: list, baseline_records: list[dict]) -> float | None:
    """The unpruned model's equivalent visual tokens: the mean N of its samples, as the strategies' records count
    them (the baseline runs without a report); None when no strategy has a record of those samples."""
    counts: dict[int, int] = {}
    for method in methods:
        for index, record in method.records.items():
            if "visual_tokens" in record:
                counts.setdefault(index, record["visual_tokens"])
    known = [counts[r["index"]] for r in baseline_records if r["index"] in counts]
    return statistics.fmean(known) if known else None


# ------------------------------------------------------------------------------------------- tables
COLUMNS: list[tuple[str, str, Callable[[dict], Any]]] = [
    ("Strategy", "label", lambda r: r["label"]),
    ("Prefill FLOPs %", "prefill_flops_pct", lambda r: _pct(r.get("prefill_flops_ratio"))),
    ("Total FLOPs %", "total_flops_pct", lambda r: _pct(r.get("total_flops_ratio"))),
    ("Equiv. visual tokens", "equivalent_visual_tokens", lambda r: _num(r.get("equivalent_visual_tokens"), 1)),
    ("Visual KV %", "visual_kv_pct", lambda r: _pct(r.get("visual_kv_ratio"))),
    ("Total KV %", "total_kv_pct", lambda r: _pct(r.get("total_kv_ratio"))),
    ("TTFT ratio", "ttft_ratio", lambda r: _num(r.get("ttft_ratio"))),
    ("Decode ratio", "decode_ratio", lambda r: _num(r.get("decode_ratio"))),
    ("KL 1st token", "first_token_kl", lambda r: _num(r.get("first_token_kl"), 4)),
    ("Agreement %", "agreement_pct", lambda r: _pct(r.get("agreement"))),
]


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _num(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}g}" if digits > 2 else f"{value:.{digits}f}"


def _task_columns(results: dict) -> list[str]:
    names: list[str] = []
    for row in results["rows"]:
        for key, value in (row.get("task") or {}).items():
            if isinstance(value, (int, float)) and key not in names and key != "n":
                names.append(key)
    return names


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    task = _task_columns(results)
    header = [title for title, _, _ in COLUMNS] + task + ["Samples"]
    rows = []
    for row in results["rows"]:
        cells = [fn(row) for _, _, fn in COLUMNS]
        cells += [_num((row.get("task") or {}).get(name), 4) for name in task]
        cells.append(str(row["samples"]) + (" (failed)" if row.get("error") else ""))
        rows.append(cells)
    return header, rows


def write_csv(results: dict, path: Path) -> None:
    task = _task_columns(results)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([key for _, key, _ in COLUMNS] + task + ["samples", "error"])
        for row in results["rows"]:
            writer.writerow(
                [fn(row) for _, _, fn in COLUMNS]
                + [(row.get("task") or {}).get(n, "") for n in task]
                + [row["samples"], row.get("error", "")]
            )


def markdown(results: dict) -> str:
    header, rows = table_rows(results)
    m, d = results["model"] or {}, results["data"]
    lines = [
        f"# tokenprune compare: {m.get('description', '?')}",
        "",
        f"Data: {d['format']} ({d['samples']} samples, task {d['task']}); "
        f"{results['config']['generation']['max_new_tokens']} greedy new tokens. "
        f"Machine: {results['machine']['platform']}, torch {results['machine']['torch']}, "
        f"device {results['machine']['device']}"
        + (f" ({results['machine']['gpu']})" if "gpu" in results["machine"] else "")
        + f". Date: {results['date']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += [
        "",
        "FLOPs and KV are percentages of the unpruned baseline on the same samples (ratio of sums); equivalent "
        "visual tokens are the visual tokens summed over the prefill layers / the layers (mean over samples; the "
        "baseline's is N); TTFT and decode "
        "are time ratios to the baseline measured side by side in this process (medians of interleaved repeats); "
        "KL is the first generated token's KL(pruned || baseline), agreement the share of greedy tokens equal to "
        "the baseline's.",
    ]
    for row in results["rows"]:
        if row.get("calibration"):
            cal = row["calibration"]
            curve = ", ".join(f"k={p['k']}: {p['kl']:.3g}" for p in cal["curve"])
            lines += [
                "",
                f"{row['label']}: k={cal['k']} calibrated with eta {cal['eta']} on {cal['samples']} samples. "
                f"KL curve: {curve}.",
            ]
        if row.get("error"):
            lines += ["", f"{row['label']} failed: {row['error']}"]
        note = (row.get("task") or {}).get("note")
        if note and row["label"] == BASELINE:
            lines += ["", f"Note: {note}"]
    if results.get("plots"):
        lines += [""] + [f"![{name}]({path})" for name, path in results["plots"].items()]
    for path in results.get("pictures", []):
        lines += ["", f"![kept visual tokens]({path})"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", nargs="?", help="comparison config (.yaml, .yml or .toml)")
    parser.add_argument(
        "--lmms-eval",
        metavar="DIR",
        nargs="+",
        help="instead of a config: lmms-eval output folders of tokenprune runs, put side by side in one table",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="output folder (default: the config's `output`, else ./compare-out)"
    )
    parser.add_argument("--force", action="store_true", help="recompute every cell instead of resuming")


def command(args: argparse.Namespace, console: Console) -> int:
    if args.lmms_eval:
        return _lmms_eval_table(args, console)
    if args.config is None:
        raise ConfigError("give a comparison config, or lmms-eval output folders with --lmms-eval DIR ...")
    config = load_config(args.config)
    out = Path(args.out or config.output or "compare-out")
    comparison = Comparison(config, out, force=args.force, source=args.config, console=console)
    results = comparison.run()
    header, rows = table_rows(results)
    from rich.table import Table

    table = Table(
        title=f"tokenprune compare: {results['model']['description']}", caption=f"written to {out}/results.md"
    )
    for i, title in enumerate(header):
        table.add_column(title, justify="left" if i == 0 else "right")
    for cells in rows:
        table.add_row(*cells)
    console.print(table)
    return 1 if any(r.get("error") for r in results["rows"]) else 0


def _lmms_eval_table(args: argparse.Namespace, console: Console) -> int:
    from . import lmms_results

    if args.config is not None:
        raise ConfigError("give either a comparison config or --lmms-eval folders, not both")
    table = lmms_results.markdown([lmms_results.read_run(folder) for folder in args.lmms_eval])
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.md").write_text(table)
    console.print(table, markup=False, highlight=False)
    return 0
