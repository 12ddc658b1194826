"""`tokenprune bench --quick`: the GPU measurements that matter, in one command that fits in 8 minutes.

The default plan (CUDA only): the LLaVA-1.5-7B shape at batch 1 and 16, the LLaVA-NeXT-7B and Qwen2.5-VL-7B
shapes at batch 1; bf16, sdpa, random weights built directly on the GPU (`bench.build_size_model`), each
freed before the next. Methods: baseline, hooks only (fastv ratio=0), FastV, VTW (k = half the depth) and ST3,
defaults (`bench.default_methods`); one warm-up, 3 interleaved repeats of a 128-token greedy generation. Per
method: TTFT, decode ms/token, end-to-end time, peak memory, KV bytes (mean / peak, total and visual), the
largest batch within a 16 GiB KV budget, FLOPs % and equivalent visual tokens (`bench.method_row`).

A time guard (`--time-guard`, default 400 s from the start) keeps the whole run under 8 minutes: no size or
batch starts after it, and an entry runs only as many of its repeats as end before it (at least one). What
was not run is marked "not run" in the output. Results (rewritten after every entry, so a run cut short keeps
what it measured): `<out>/bench-quick-<device>.json` and `.md`. `--size` / `--batch` replace the plan (on a
CPU `--size` is required: `--size tiny` runs the same code path in seconds).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from . import bench, timing
from .errors import ConfigError

#: (size, batch) pairs of the default plan, in order; a size's batches share one built model
PLAN: list[tuple[str, int]] = [("llava15-7b", 1), ("llava15-7b", 16), ("llava-next-7b", 1), ("qwen25vl-7b", 1)]
#: seconds after which no entry (size, batch) and no repeat starts
TIME_GUARD_S = 400.0
REPEATS = 3
NOT_RUN = "not run"


def device_slug(device: torch.device) -> str:
    """A file-name form of what the run measures on: "nvidia-h200" for an NVIDIA H200, "cpu" on a CPU."""
    if device.type != "cuda":
        return device.type
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-") or "cuda"


def plan_of(args: argparse.Namespace, cuda: bool) -> list[tuple[str, int]]:
    """The (size, batch) entries to run: the default plan, or `--size` x `--batch` (batch 1 if not given)."""
    if not args.size and not cuda:
        raise ConfigError(
            "--quick runs 7B shapes by default, which needs a CUDA device; on a CPU pass a CPU size, "
            f"e.g. --size tiny (allowed: {', '.join(n for n, s in bench.SIZES.items() if not s.gpu_only)})"
        )
    if not args.size and not args.batch:
        return list(PLAN)
    sizes = args.size or list(dict.fromkeys(name for name, _ in PLAN))
    return [(name, batch) for name in sizes for batch in args.batch or [1]]


def not_run_entry(size: bench.Size, batch: int, reason: str) -> dict:
    """An entry the time guard did not start: every method row marked as not run."""
    labels = ["baseline"] + [label for label, _ in bench.default_methods(size.spec.layers)]
    return {
        "size": size.name,
        "batch": batch,
        "status": NOT_RUN,
        "reason": reason,
        "rows": {label: {"status": NOT_RUN} for label in labels},
    }


def run_quick(
    plan: list[tuple[str, int]],
    *,
    new_tokens: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    time_guard_s: float,
    write,
    console: Console,
) -> dict:
    """Run `plan` under the time guard; `write(result)` is called after every entry and at the end."""
    start = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - start

    def say(text: str) -> None:
        console.print(f"[dim][{elapsed():6.1f} s][/dim] {text}", highlight=False)

    guard = f"not started: the time guard ({time_guard_s:.0f} s) had passed"
    result = {
        "kind": "bench-quick",
        "plan": [{"size": name, "batch": batch} for name, batch in plan],
        "new_tokens": new_tokens,
        "repeats": repeats,
        "time_guard_s": time_guard_s,
        "kv_budget_bytes": bench.KV_BUDGET_BYTES,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": timing.machine_text(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entries": [not_run_entry(bench.SIZES[name], batch, "pending") for name, batch in plan],
    }
    cuda = device.type == "cuda"
    write(result)
    model = model_size = data = None
    for index, (name, batch) in enumerate(plan):
        size = bench.SIZES[name]
        if elapsed() >= time_guard_s:
            result["entries"][index] = not_run_entry(size, batch, guard)
            say(f"{name}, batch {batch}: {guard}")
            continue
        try:
            if model_size != name:
                model = model_size = data = None
                _free(cuda)
                say(f"building {name} on {device} in {result['dtype']} ...")
                model = bench.build_size_model(size, device, dtype)
                model_size = name
            data = bench.size_inputs(size, batch, device, dtype)
            methods = bench.default_methods(size.spec.layers)
            prompt = int(data["input_ids"].shape[1])
            say(f"{name}, batch {batch} ({prompt} prompt tokens): timing {len(methods) + 1} methods ...")

            def more_repeats(round_s: float) -> int:
                return int(max(0.0, time_guard_s - elapsed()) // round_s)

            entry = bench.run_model(
                model,
                data,
                size,
                methods,
                batch=batch,
                new_tokens=new_tokens,
                repeats=repeats,
                device=device,
                dtype=dtype,
                on_step=lambda label, name=name, batch=batch: say(f"{name}, batch {batch}: {label}"),
                more_repeats=more_repeats,
            )
        except Exception as exc:  # one size failing (e.g. out of memory) must not lose the others' numbers
            model = model_size = data = None
            _free(cuda)
            failed = not_run_entry(size, batch, f"failed: {type(exc).__name__}: {exc}")
            failed["status"] = "failed"
            result["entries"][index] = failed
            say(f"[red]{name}, batch {batch} failed[/red]: {escape(f'{type(exc).__name__}: {exc}')}")
            write(result)
            continue
        done = entry["repeats"]
        entry["status"] = "measured" if done == repeats else f"measured ({done} of {repeats} repeats: time guard)"
        entry["elapsed_s"] = elapsed()
        for row in entry["rows"].values():
            row["status"] = "measured"
        result["entries"][index] = entry
        result["elapsed_s"] = elapsed()
        write(result)
        bench.print_result(entry, console)
    model = data = None
    _free(cuda)
    result["elapsed_s"] = elapsed()
    write(result)
    return result


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- markdown
COLUMNS = [
    ("size", lambda e, r: e["size"]),
    ("batch", lambda e, r: str(e["batch"])),
    ("method", None),
    ("TTFT ms", lambda e, r: f"{r['ttft_s'] * 1e3:.1f}"),
    ("decode ms/token", lambda e, r: f"{r['decode_s_per_token'] * 1e3:.2f}"),
    ("end-to-end s", lambda e, r: f"{r['end_to_end_s']:.2f}"),
    ("TTFT ratio", lambda e, r: f"{r['ttft_ratio']:.3f}"),
    ("decode ratio", lambda e, r: f"{r['decode_ratio']:.3f}"),
    ("end-to-end ratio", lambda e, r: f"{r['end_to_end_ratio']:.3f}"),
    ("peak mem GiB", lambda e, r: _gib(r["peak_memory_bytes"])),
    ("KV total mean / peak MiB", lambda e, r: _mib_pair(r["total_kv_mean_bytes"], r["total_kv_peak_bytes"])),
    ("KV visual mean / peak MiB", lambda e, r: _mib_pair(r["visual_kv_mean_bytes"], r["visual_kv_peak_bytes"])),
    ("batch in 16 GiB KV", lambda e, r: "-" if r["kv_budget_batch"] is None else str(r["kv_budget_batch"])),
    ("prefill FLOPs %", lambda e, r: f"{100 * r['prefill_flops_ratio']:.1f}"),
    ("total FLOPs %", lambda e, r: f"{100 * r['total_flops_ratio']:.1f}"),
    ("equiv. visual tokens", lambda e, r: f"{r['equivalent_visual_tokens']:.1f}"),
]


def _gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def _mib_pair(mean, peak) -> str:
    return "-" if mean is None else f"{mean / 2**20:.1f} / {peak / 2**20:.1f}"


def markdown(result: dict) -> str:
    header = [title for title, _ in COLUMNS]
    lines = [
        f"# tokenprune bench --quick: {result['machine']}",
        "",
        f"{result['device']} {result['dtype']}, sdpa, random weights; {result['new_tokens']} greedy new tokens; "
        f"medians of up to {result['repeats']} interleaved repeats after one warm-up; time guard "
        f"{result['time_guard_s']:.0f} s; whole run {result.get('elapsed_s', 0.0):.0f} s. Date: {result['date']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|",
    ]
    for entry in result["entries"]:
        for label, row in entry["rows"].items():
            if row.get("status") == NOT_RUN:
                cells = [entry["size"], str(entry["batch"]), label, NOT_RUN] + [""] * (len(COLUMNS) - 4)
            else:
                cells = [label if fn is None else fn(entry, row) for _, fn in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios are to the baseline measured in the same process on the same inputs. KV: the cache's bytes over "
        "the generation (mean and peak, padding included; visual: the visual tokens' entries). Batch in 16 GiB "
        "KV: the largest batch of these sequences whose peak KV fits 16 GiB. Equivalent visual tokens: visual "
        "tokens summed over the prefill layers / the layers (the baseline's: N).",
    ]
    for entry in result["entries"]:
        title = f"{entry['size']}, batch {entry['batch']}"
        if entry["status"] in (NOT_RUN, "failed"):
            lines += ["", f"{title}: {NOT_RUN} ({entry['reason']})."]
            continue
        hooks = entry["hook_cost"]
        lines += [
            "",
            f"{title} ({entry['prompt_tokens']} prompt tokens, {entry['status']}, done at {entry['elapsed_s']:.0f} s): "
            f"hooks that remove nothing, {hooks['pairs']} paired prefills: median ratio {hooks['ratio_median']:.4f}.",
        ]
        lines += [
            f"- {'met' if t['met'] else 'missed'}: {t['target']} (measured {t['value']:.3f})" for t in entry["targets"]
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- command
def check_arguments(args: argparse.Namespace) -> None:
    """Options that do not go with --quick, or a time guard without it."""
    if args.time_guard is not None and not args.quick:
        raise ConfigError("--time-guard applies to --quick only; add --quick or drop --time-guard")
    if not args.quick:
        return
    if args.scoring:
        raise ConfigError("--quick and --scoring are separate runs; pass one of them")
    if args.time_guard is not None and args.time_guard < 0:
        raise ConfigError(f"--time-guard must be >= 0 seconds, not {args.time_guard:g}")


def command(args: argparse.Namespace, console: Console, *, device, new_tokens: int) -> int:
    """`tokenprune bench --quick` (arguments already checked by `bench.command`)."""
    cuda = device.type == "cuda"
    plan = plan_of(args, cuda)
    repeats = args.repeats or REPEATS
    guard = TIME_GUARD_S if args.time_guard is None else args.time_guard
    dtype = torch.bfloat16 if cuda else torch.float32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-quick-{device_slug(device)}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    command_text = " ".join(
        ["tokenprune bench --quick"]
        + [f"--size {name}" for name in args.size or []]
        + [f"--batch {b}" for b in args.batch or []]
        + [f"--new-tokens {new_tokens}", f"--repeats {repeats}", f"--time-guard {guard:g}", f"--device {args.device}"]
    )

    def write(result: dict) -> None:
        result["command"] = command_text
        json_path.write_text(json.dumps(result, indent=1))
        md_path.write_text(markdown(result))

    console.print(
        f"[bold]tokenprune bench --quick[/bold]: {len(plan)} entries ({', '.join(f'{n} b{b}' for n, b in plan)}), "
        f"{new_tokens} new tokens, {repeats} repeats, time guard {guard:g} s"
    )
    result = run_quick(
        plan,
        new_tokens=new_tokens,
        repeats=repeats,
        device=device,
        dtype=dtype,
        time_guard_s=guard,
        write=write,
        console=console,
    )
    measured = sum(entry["status"].startswith("measured") for entry in result["entries"])
    failed = sum(entry["status"] == "failed" for entry in result["entries"])
    console.print(
        f"done in {result['elapsed_s']:.0f} s ({measured} of {len(plan)} entries measured"
        + (f", {failed} failed" if failed else "")
        + f"); written: {json_path}, {md_path}"
    )
    return 1 if failed else 0
