"""`tokenprune bench`: baseline and strategies side by side, as ratios, on fixed random-weight model shapes.

Every size is a random LLaVA model of a real shape (the vision tower is tiny: only the language model is
pruned and timed). All methods run in one process on the same inputs: one warm-up each, interleaved
repeats, medians (`tokenprune.timing`). Per method: TTFT, decode ms/token and end-to-end ratios to the
baseline, peak memory (CUDA only), KV bytes and FLOPs ratios from the report. A budget sweep of FastV
and ST3 gives the time-vs-FLOPs plot: the FLOPs ratio is the physical limit of what removing tokens can
save, so a point on the diagonal means the implementation gets all of it.

Results go to `--out` (default `benchmarks/results`) as `bench-<size>-b<batch>.json` and
`time_vs_flops-<size>-b<batch>.png`; `docs/benchmarks.md` cites them. `--quick` is the GPU plan that fits in
8 minutes (`tokenprune.bench_quick`, built from the pieces here: one JSON and one markdown table).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

import tokenprune as tp

from . import timing
from .errors import ConfigError
from .ratios import ratio
from .tiny import TinySpec, build_model, make_inputs
from .tiny_qwen import QwenSpec, build_qwen_model, make_qwen_inputs


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    spec: TinySpec | QwenSpec
    text_before: int = 35
    text_after: int = 28
    image_size: tuple[int, int] | None = None  # LLaVA-NeXT image (h, w) in tiny pixels: sets the token count
    gpu_only: bool = False
    qwen_grid: tuple[int, int] | None = None  # Qwen-VL image grid (h, w) in patches: h * w / 4 visual tokens


SIZES = {
    s.name: s
    for s in [
        # 16 layers, hidden 1024, 576 visual + 64 text: what a 2-core CPU can time in minutes
        Size(
            "cpu-medium",
            TinySpec(layers=16, hidden=1024, heads=16, kv_heads=16, intermediate=2816, vocab=32000, grid=24),
        ),
        Size(
            "llava15-7b",
            TinySpec(layers=32, hidden=4096, heads=32, kv_heads=32, intermediate=11008, vocab=32064, grid=24),
            gpu_only=True,
        ),
        Size(
            "llava15-13b",
            TinySpec(layers=40, hidden=5120, heads=40, kv_heads=40, intermediate=13824, vocab=32064, grid=24),
            gpu_only=True,
        ),
        # 2340 placeholder tokens (36 newlines) like a 480x640 image on LLaVA-NeXT-7B (Vicuna)
        Size(
            "llava-next-7b",
            TinySpec(
                layers=32,
                hidden=4096,
                heads=32,
                kv_heads=32,
                intermediate=11008,
                vocab=32064,
                grid=24,
                family="llava_next",
            ),
            image_size=(60, 80),
            gpu_only=True,
        ),
        # LLaVA-NeXT length (2340 placeholders) at the CPU width: for the scoring comparison on a CPU
        Size(
            "cpu-next",
            TinySpec(
                layers=16,
                hidden=1024,
                heads=16,
                kv_heads=16,
                intermediate=2816,
                vocab=32000,
                grid=24,
                family="llava_next",
            ),
            image_size=(60, 80),
        ),
        # Qwen2.5-VL at the CPU width (GQA 16/2, biases, multimodal RoPE): 576 visual tokens (a 48x48 patch grid)
        Size(
            "cpu-medium-qwen25vl",
            QwenSpec(family="qwen2_5_vl", layers=16, hidden=1024, heads=16, kv_heads=2, intermediate=2816, vocab=32000),
            qwen_grid=(48, 48),
        ),
        # Qwen2.5-VL-7B's language model (28 layers), one 1288-token image (a 56x92 patch grid) + 64 text tokens
        Size(
            "qwen25vl-7b",
            QwenSpec(
                family="qwen2_5_vl", layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064
            ),
            text_before=30,
            text_after=32,
            qwen_grid=(56, 92),
            gpu_only=True,
        ),
        # Qwen3-VL-8B's language model (36 layers, q/k norms, deepstack), the same image
        Size(
            "qwen3vl-8b",
            QwenSpec(family="qwen3_vl", layers=36, hidden=4096, heads=32, kv_heads=8, intermediate=12288, vocab=151936),
            text_before=30,
            text_after=32,
            qwen_grid=(56, 92),
            gpu_only=True,
        ),
        # for tests of the command itself: seconds on a CPU
        Size(
            "tiny-qwen25vl",
            QwenSpec(family="qwen2_5_vl", layers=4, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512),
            text_before=6,
            text_after=6,
            qwen_grid=(8, 8),
        ),
        Size(
            "tiny",
            TinySpec(layers=4, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512, grid=6),
            text_before=6,
            text_after=6,
        ),
    ]
}


HOOKS_ONLY = "hooks only (fastv ratio=0)"


#: the fixed KV memory budget of the `kv_budget_batch` column: how many sequences of this length fit in it
KV_BUDGET_BYTES = 16 * 2**30


def default_methods(layers: int) -> list[tuple[str, dict]]:
    """(label, strategy config): the no-op hooks and the defaults of every method (VTW: k = half the depth)."""
    half = max(1, layers // 2)
    return [
        (HOOKS_ONLY, {"name": "fastv", "ratio": 0.0}),
        ("fastv", {"name": "fastv"}),
        (f"vtw k={half}", {"name": "vtw", "k": half}),
        ("st3", {"name": "st3"}),
    ]


def methods_for(layers: int) -> list[tuple[str, dict]]:
    """(label, strategy config): `default_methods` and a budget sweep of FastV and ST3."""
    return default_methods(layers) + [
        ("fastv ratio=0.25", {"name": "fastv", "ratio": 0.25}),
        ("fastv ratio=0.75", {"name": "fastv", "ratio": 0.75}),
        ("st3 ratio=0.1", {"name": "st3", "ratio": 0.1}),
        ("st3 ratio=0.4", {"name": "st3", "ratio": 0.4}),
    ]


@contextlib.contextmanager
def constructed_on(device: torch.device, dtype: torch.dtype):
    """Tensors created inside are made on `device` in `dtype` (floating point): a random 7B model is initialised
    on the GPU in bf16 in seconds, where an fp32 init on the CPU takes minutes and twice the bytes."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_size_model(size: Size, device: torch.device, dtype: torch.dtype):
    """The random model of `size`, constructed directly on `device` in `dtype`."""
    with constructed_on(device, dtype):
        if isinstance(size.spec, QwenSpec):
            return build_qwen_model(size.spec, dtype=dtype)
        return build_model(size.spec, dtype=dtype)


def size_inputs(size: Size, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
    """`batch` copies of the size's synthetic prompt, on `device` (pixels in `dtype`)."""
    spec = size.spec
    if isinstance(spec, QwenSpec):  # text, <vision_start> image <vision_end>, text (the two markers are text)
        sample = [("text", size.text_before), ("image", size.qwen_grid), ("text", size.text_after)]
        data = make_qwen_inputs(spec, [sample] * batch)
    else:
        sizes = [[size.image_size]] * batch if size.image_size else None
        data = make_inputs(
            spec, text_before=[size.text_before] * batch, text_after=[size.text_after] * batch, image_sizes=sizes
        )
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in data.items()}


def build(size: Size, batch: int, device: torch.device, dtype: torch.dtype):
    """The model of `size` on `device` in `dtype` and `batch` copies of its prompt."""
    return build_size_model(size, device, dtype), size_inputs(size, batch, device, dtype)


class FirstUse:
    """A method's context factory whose first use (the warm-up of `timing.measure`) also records the pruning
    session it opened (None for the baseline) and the peak accelerator memory of that one generation (None on
    CPU, where torch keeps no allocator statistics). Later uses are the plain factory: nothing is added to the
    timed repeats."""

    def __init__(self, factory: Callable, device: torch.device) -> None:
        self.factory, self.device = factory, device
        self.used, self.run, self.peak = False, None, None

    @contextlib.contextmanager
    def __call__(self):
        if self.used:
            with self.factory() as run:
                yield run
            return
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        with self.factory() as run:
            yield run
        if cuda:
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        self.used, self.run = True, run


def measure_methods(
    model,
    data: dict,
    strategies: dict[str, tp.Strategy],
    *,
    new_tokens: int,
    repeats: int,
    device: torch.device,
    on_step: Callable[[str], None] | None = None,
    more_repeats: Callable[[float], int] | None = None,
) -> tuple[dict[str, timing.Timing], dict[str, FirstUse]]:
    """The baseline and `strategies` timed side by side (`timing.measure`: one warm-up each, `repeats` interleaved
    repeats); returns the timings and, per method, its `FirstUse` (session and peak memory of the warm-up).

    With `more_repeats` (a time guard), the warm-up and the first repeat run first; then `more_repeats(round_s)`,
    given the seconds one round of every method took, says how many of the other `repeats - 1` to run."""
    captured = {"baseline": FirstUse(contextlib.nullcontext, device)}
    captured.update({label: FirstUse(lambda s=s: tp.prune(model, s), device) for label, s in strategies.items()})
    methods = list(captured.items())

    def generate(n: int, stopping_criteria) -> None:
        model.generate(
            **data,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            num_beams=1,
            stopping_criteria=stopping_criteria,
        )

    if more_repeats is None or repeats == 1:
        timings = timing.measure(methods, generate, new_tokens, repeats=repeats, warmup=1, on_step=on_step)
        return timings, captured
    start = time.perf_counter()
    timings = timing.measure(methods, generate, new_tokens, repeats=1, warmup=1, on_step=on_step)
    round_s = (time.perf_counter() - start) / 2  # the warm-up round (the slower one) and the first repeat
    extra = max(0, min(repeats - 1, more_repeats(round_s)))
    if extra:

        def renumbered(label: str) -> None:  # "repeat 1/2" of this call is repeat 2/3 of the method
            number, _, rest = label.removeprefix("repeat ").partition("/")
            on_step(f"repeat {int(number) + 1}/{extra + 1}:{rest.partition(':')[2]}")

        more = timing.measure(
            methods, generate, new_tokens, repeats=extra, warmup=0, on_step=renumbered if on_step else None
        )
        for name, t in timings.items():
            for part in ("ttft_s", "decode_s", "full_s", "produced"):
                getattr(t, part).extend(getattr(more[name], part))
    return timings, captured


def method_row(strategy, rel: dict, t: timing.Timing, use: FirstUse, reference, batch: int) -> dict:
    """One method's row: times, ratios to the baseline, FLOPs, KV bytes and equivalent visual tokens from its
    report. The baseline has no report: its absolute KV bytes and visual tokens are the `baseline_*` fields and
    the visual token counts of `reference`, a report of the same inputs."""
    report = use.run.report if use.run is not None else None
    flops = report.flops() if report else {}
    source = report or reference
    kv = source.kv_bytes() if source else {}
    key = "" if report else "baseline_"

    def kv_value(part: str, what: str):
        return kv[part][key + what] if kv else None

    total_peak = kv_value("total", "peak")
    if report:
        equivalent = statistics.fmean(report.equivalent_visual_tokens)
    else:
        equivalent = statistics.fmean(reference.visual_tokens) if reference else None
    return {
        "strategy": strategy.describe() if strategy is not None else None,
        **rel,
        "ttft_s": t.ttft,
        "decode_s_per_token": t.decode_per_token,
        "end_to_end_s": t.end_to_end,
        "prefill_flops_ratio": flops.get("prefill_ratio", 1.0),
        "decode_flops_ratio": flops.get("decode_ratio", 1.0),
        "total_flops_ratio": flops.get("total_ratio", 1.0),
        # visual tokens summed over the prefill layers / the layers, mean over the batch (the baseline's: N)
        "equivalent_visual_tokens": equivalent,
        "visual_kv_mean_ratio": kv["visual"]["mean_ratio"] if report else 1.0,
        "total_kv_mean_ratio": kv["total"]["mean_ratio"] if report else 1.0,
        "total_kv_peak_bytes": total_peak,
        "total_kv_mean_bytes": kv_value("total", "mean"),
        "visual_kv_peak_bytes": kv_value("visual", "peak"),
        "visual_kv_mean_bytes": kv_value("visual", "mean"),
        # the largest batch of these sequences whose peak KV fits KV_BUDGET_BYTES (from the KV bytes per sample)
        "kv_budget_batch": KV_BUDGET_BYTES * batch // total_peak if total_peak else None,
        # how many more sequences fit a fixed KV memory budget: baseline peak KV / this method's peak KV
        "kv_budget_batch_ratio": ratio(kv["total"]["baseline_peak"], kv["total"]["peak"]) if report else 1.0,
        "peak_memory_bytes": use.peak,
    }


def method_rows(strategies: dict, timings: dict[str, timing.Timing], captured: dict[str, FirstUse], batch: int):
    """`method_row` of every method timed by `measure_methods`, in its order (the baseline first)."""
    rel = timing.ratios(timings)
    reference = next((use.run.report for use in captured.values() if use.run is not None), None)
    return {
        label: method_row(strategies.get(label), rel[label], timings[label], captured[label], reference, batch)
        for label in timings
    }


def result_header(size: Size, data: dict, *, batch: int, new_tokens: int, repeats: int, device, dtype) -> dict:
    """What every bench result says about its run: size, prompt, batch, generation, device, machine, date."""
    return {
        "size": size.name,
        "spec": dataclasses.asdict(size.spec),
        "prompt_tokens": int(data["input_ids"].shape[1]),
        "batch": batch,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": timing.machine_text(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_model(
    model,
    data: dict,
    size: Size,
    configs: list[tuple[str, dict]],
    *,
    batch: int,
    new_tokens: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    on_step: Callable[[str], None] | None = None,
    more_repeats: Callable[[float], int] | None = None,
) -> dict:
    """The bench of the baseline and `configs` (which must include HOOKS_ONLY) on a built model and its inputs:
    the rows, the raw timings, the hooks' paired-prefill cost and the targets."""
    strategies = {label: tp.resolve_strategy(config) for label, config in configs}
    timings, captured = measure_methods(
        model,
        data,
        strategies,
        new_tokens=new_tokens,
        repeats=repeats,
        device=device,
        on_step=on_step,
        more_repeats=more_repeats,
    )
    done = len(timings["baseline"].ttft_s)
    hooks = hook_cost(model, data, strategies[HOOKS_ONLY], pairs=2 * done + 1)
    rows = method_rows(strategies, timings, captured, batch)
    return {
        **result_header(size, data, batch=batch, new_tokens=new_tokens, repeats=done, device=device, dtype=dtype),
        "rows": rows,
        "timings": {name: t.to_dict() for name, t in timings.items()},
        "hook_cost": hooks,
        "targets": targets(rows, hooks, device, size.name, batch),
    }


def run_size(
    size: Size,
    *,
    batch: int,
    new_tokens: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """`run_model` of every method and the budget sweep (`methods_for`) on the size's model at `batch`."""
    model, data = build(size, batch, device, dtype)
    configs = methods_for(size.spec.layers)
    return run_model(
        model,
        data,
        size,
        configs,
        batch=batch,
        new_tokens=new_tokens,
        repeats=repeats,
        device=device,
        dtype=dtype,
        on_step=on_step,
    )


def hook_cost(model, data, strategy, pairs: int) -> dict:
    """What tokenprune's hooks cost a prefill when they remove nothing: `pairs` pairs of prefill forwards,
    one plain and one inside `tp.prune(model, strategy)`, back to back (which one goes first alternates).

    A ratio within a pair sees the same machine state, so its median resolves a few percent where a ratio
    of two medians over whole generations (the TTFT column) is blurred by drift between repeats."""
    sync = timing.default_sync()

    def forward(hooked: bool) -> float:
        with torch.inference_mode(), tp.prune(model, strategy) if hooked else contextlib.nullcontext():
            sync()
            start = time.perf_counter()
            model(**data, use_cache=True, logits_to_keep=1)  # what generate() runs for the prefill
            sync()
            return time.perf_counter() - start

    forward(False), forward(True)  # warm-up
    ratios, plain = [], []
    for p in range(pairs):
        order = (False, True) if p % 2 == 0 else (True, False)
        times = dict(zip(order, (forward(hooked) for hooked in order), strict=True))
        ratios.append(ratio(times[True], times[False]))
        plain.append(times[False])
    ratios.sort()
    return {
        "pairs": pairs,
        "ratio_median": statistics.median(ratios),
        "ratio_quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]],
        "ratios": ratios,
        "prefill_s_median": statistics.median(plain),
    }


def _target(text: str, value: float, met: bool) -> dict:
    return {"target": text, "value": value, "met": bool(met)}


def targets(rows: dict, hooks: dict, device: torch.device, size: str, batch: int) -> list[dict]:
    """The performance targets (docs/benchmarks.md) this run can check (values are fractions: +0.03 = 3 % over)."""
    cpu = device.type == "cpu"
    limit = 0.02 if cpu else 0.01
    cost = hooks["ratio_median"] - 1.0
    out = [
        _target(
            f"hooks that remove nothing cost <= {limit:.0%} of prefill time (median of {hooks['pairs']} "
            "paired prefills)",
            cost,
            cost <= limit,
        )
    ]
    for label, row in rows.items():
        if row["strategy"] is None or label == HOOKS_ONLY:
            continue
        gap = ratio(row["ttft_ratio"], row["prefill_flops_ratio"]) - 1.0
        out.append(_target(f"{label}: TTFT ratio within 10% of its prefill FLOPs ratio", gap, abs(gap) <= 0.10))
    st3 = rows["st3"]
    if size == "llava15-7b" and batch == 1:
        out += [
            _target("st3 defaults: TTFT >= 2x faster than baseline", 1 / st3["ttft_ratio"], st3["ttft_ratio"] <= 0.5),
            _target(
                "st3 defaults: visual KV <= 30% of baseline over the generation",
                st3["visual_kv_mean_ratio"],
                st3["visual_kv_mean_ratio"] <= 0.30,
            ),
            _target(
                "st3 defaults: decode ms/token no slower than baseline at batch 1",
                st3["decode_ratio"],
                st3["decode_ratio"] <= 1.0,
            ),
        ]
    if size == "llava15-7b" and batch >= 16:
        out += [
            _target(
                f"st3 defaults: >= 1.3x tokens/s at batch {batch}",
                1 / st3["end_to_end_ratio"],
                st3["end_to_end_ratio"] <= 1 / 1.3,
            ),
            _target(
                "st3 defaults: largest batch within a fixed KV memory budget >= 2.5x baseline's",
                st3["kv_budget_batch_ratio"],
                st3["kv_budget_batch_ratio"] >= 2.5,
            ),
        ]
    return out


# ------------------------------------------------------------------------------------------- scoring
class FullAttentionScores(tp.ScoreProvider):
    """FastV's scores read from the full attention matrix of the scoring layer, as eager attention with
    `output_attentions=True` materialises it: every query row, (B, H, L, L) in float32. Used only to
    measure what tokenprune's one-row recomputation (`last_query_attention`) saves."""

    name = "full_attention_matrix"

    def score(self, view: tp.AttentionView) -> torch.Tensor:
        bsz, q_len = view.raw_queries.shape[:2]
        rows = torch.arange(q_len, device=view.raw_queries.device).expand(bsz, -1)
        return view.attention(rows)[:, :, -1].mean(dim=1)  # the last query's row, as in FastV's code


def scoring_comparison(size: Size, *, new_tokens: int, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    """FastV with sdpa and one recomputed attention row vs FastV reading the full attention matrix."""
    from .strategies.decays import NoDecay
    from .strategies.schedules import SingleCut

    model, data = build(size, 1, device, dtype)
    recomputed = tp.resolve_strategy("fastv")
    full = tp.Strategy("fastv", recomputed.params, SingleCut(layer=2, ratio=0.5), NoDecay(), FullAttentionScores())
    methods = [
        timing.baseline_method(),
        ("fastv (sdpa, 1 recomputed row)", lambda: tp.prune(model, recomputed)),
        ("fastv (full attention matrix at the scoring layer)", lambda: tp.prune(model, full)),
    ]

    def generate(n: int, stopping_criteria) -> None:
        model.generate(
            **data,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            num_beams=1,
            stopping_criteria=stopping_criteria,
        )

    timings = timing.measure(methods, generate, new_tokens, repeats=repeats, warmup=1)
    rel = timing.ratios(timings)
    fast, slow = methods[1][0], methods[2][0]
    return {
        "size": size.name,
        "prompt_tokens": int(data["input_ids"].shape[1]),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": timing.machine_text(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ratios": rel,
        "ttft_s": {name: t.ttft for name, t in timings.items()},
        "speedup_of_recomputed_scores": ratio(timings[slow].ttft, timings[fast].ttft),
    }


# ------------------------------------------------------------------------------------------- plot
def plot(result: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1.05], [0, 1.05], color="black", linestyle="--", linewidth=1, label="time = FLOPs (the limit)")
    families = {"fastv": "tab:blue", "st3": "tab:red", "vtw": "tab:green", "hooks": "tab:gray"}
    for label, row in result["rows"].items():
        if row["strategy"] is None:
            continue
        color = next((c for key, c in families.items() if label.startswith(key)), "tab:purple")
        ax.scatter([row["prefill_flops_ratio"]], [row["ttft_ratio"]], color=color, s=36, zorder=3)
        ax.annotate(
            label,
            (row["prefill_flops_ratio"], row["ttft_ratio"]),
            textcoords="offset points",
            xytext=(4, 3),
            fontsize=7,
        )
    ax.set_xlabel("prefill FLOPs ratio (report)")
    ax.set_ylabel("TTFT ratio (measured)")
    ax.set_xlim(0, 1.1)
    ax.set_ylim(0, max(1.1, max(r["ttft_ratio"] for r in result["rows"].values()) + 0.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{result['size']}, batch {result['batch']}: time vs FLOPs", fontsize=10)
    fig.savefig(path, dpi=130, bbox_inches="tight", facecolor="white")


def print_result(result: dict, console: Console) -> None:
    table = Table(
        title=f"tokenprune bench: {result['size']} (prompt {result['prompt_tokens']} tokens, batch "
        f"{result['batch']}, {result['new_tokens']} new tokens), {result['device']} {result['dtype']}",
        caption=f"{result['machine']}; medians of {result['repeats']} interleaved repeats",
    )
    columns = ("method", "TTFT", "prefill FLOPs", "equiv. visual tokens", "decode/tok", "end-to-end", "visual KV")
    for column in (*columns, "total KV", "peak mem"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for label, r in result["rows"].items():
        mem = f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" if r["peak_memory_bytes"] else "-"
        equivalent = r.get("equivalent_visual_tokens")
        table.add_row(
            label,
            f"{r['ttft_ratio']:.3f}",
            f"{r['prefill_flops_ratio']:.3f}",
            "-" if equivalent is None else f"{equivalent:.1f}",
            f"{r['decode_ratio']:.3f}",
            f"{r['end_to_end_ratio']:.3f}",
            f"{r['visual_kv_mean_ratio']:.3f}",
            f"{r['total_kv_mean_ratio']:.3f}",
            mem,
        )
    console.print(table)
    hooks = result["hook_cost"]
    console.print(
        f"  hooks that remove nothing, {hooks['pairs']} paired prefills: median ratio {hooks['ratio_median']:.4f} "
        f"(quartiles {hooks['ratio_quartiles'][0]:.4f}-{hooks['ratio_quartiles'][1]:.4f})"
    )
    for t in result["targets"]:
        mark = "[green]met[/green]" if t["met"] else "[red]missed[/red]"
        console.print(f"  {mark}  {t['target']} (measured {t['value']:.3f})")


# ------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        action="append",
        choices=sorted(SIZES),
        help="model shape(s) to run (default: cpu-medium on CPU; 7B, 13B, NeXT-7B and Qwen2.5-VL-7B shapes on CUDA)",
    )
    parser.add_argument("--batch", type=int, action="append", help="batch size(s) (default 1; 1 and 16 on CUDA)")
    parser.add_argument("--new-tokens", type=int, help="greedy tokens per generation (default 32 on CPU, 128 on CUDA)")
    parser.add_argument(
        "--repeats", type=int, help="interleaved repeats; medians are reported (default 5; 3 with --quick)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument(
        "--out", default="benchmarks/results", metavar="DIR", help="where results go (default benchmarks/results)"
    )
    parser.add_argument(
        "--scoring",
        action="store_true",
        help="instead: FastV's recomputed one-row scores vs the full attention matrix, at LLaVA-NeXT length",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the GPU plan that fits in 8 minutes: 7B, NeXT-7B and Qwen2.5-VL-7B shapes, 5 methods, one JSON and one "
        "markdown table (bench-quick-<device>.*); on a CPU with --size",
    )
    parser.add_argument(
        "--time-guard",
        type=float,
        metavar="SECONDS",
        help="with --quick: start no size, batch or repeat after this many seconds (default 400)",
    )


def command(args: argparse.Namespace, console: Console) -> int:
    from . import bench_quick
    from .models import resolve_device

    bench_quick.check_arguments(args)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    sizes = args.size or (["llava15-7b", "llava15-13b", "llava-next-7b", "qwen25vl-7b"] if cuda else ["cpu-medium"])
    for name in sizes:
        if SIZES[name].gpu_only and not cuda:
            raise ConfigError(
                f"size {name} is a GPU size (7B-class weights); run it on a CUDA device or use cpu-medium"
            )
    batches = args.batch or ([1, 16] if cuda else [1])
    new_tokens = args.new_tokens or (128 if cuda else 32)
    if new_tokens < 2 or (args.repeats is not None and args.repeats < 1) or any(b < 1 for b in batches):
        raise ConfigError("--new-tokens must be >= 2, --repeats and --batch >= 1")
    if args.quick:
        return bench_quick.command(args, console, device=device, new_tokens=new_tokens)
    args.repeats = args.repeats or 5
    dtype = torch.bfloat16 if cuda else torch.float32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.scoring:
        size = SIZES[args.size[0] if args.size else ("llava-next-7b" if cuda else "cpu-next")]
        result = scoring_comparison(size, new_tokens=2, repeats=args.repeats, device=device, dtype=dtype)
        result["command"] = (
            f"tokenprune bench --scoring --size {size.name} --repeats {args.repeats} --device {args.device}"
        )
        (out / f"scoring-{size.name}.json").write_text(json.dumps(result, indent=1))
        for name, rel in result["ratios"].items():
            console.print(f"{name}: TTFT ratio {rel['ttft_ratio']:.3f} ({result['ttft_s'][name]:.2f} s)")
        console.print(
            f"recomputed scores are {result['speedup_of_recomputed_scores']:.2f}x faster to first token "
            f"at {result['prompt_tokens']} tokens; written: {out / f'scoring-{size.name}.json'}"
        )
        return 0
    for name in sizes:
        for batch in batches:
            console.print(
                f"[bold]{name}[/bold], batch {batch}: "
                f"timing {len(methods_for(SIZES[name].spec.layers)) + 1} methods ..."
            )
            result = run_size(
                SIZES[name], batch=batch, new_tokens=new_tokens, repeats=args.repeats, device=device, dtype=dtype
            )
            result["command"] = "tokenprune bench " + " ".join(
                [
                    f"--size {name}",
                    f"--batch {batch}",
                    f"--new-tokens {new_tokens}",
                    f"--repeats {args.repeats}",
                    f"--device {args.device}",
                ]
            )
            stem = f"{name}-b{batch}"
            (out / f"bench-{stem}.json").write_text(json.dumps(result, indent=1))
            plot(result, out / f"time_vs_flops-{stem}.png")
            print_result(result, console)
            console.print(f"[dim]written: {out / f'bench-{stem}.json'}, {out / f'time_vs_flops-{stem}.png'}[/dim]")
            if cuda:
                del result
                torch.cuda.empty_cache()
    return 0
