"""Where prefill time goes under pruning: time inside tokenprune's own code vs the whole prefill (CPU).

Timing ratios between runs are noisy on a shared 2-core machine (baseline TTFT repeats vary by about
+-8 %), too noisy to resolve a 2 % overhead. This measures the overhead directly instead: cProfile over
one prefill forward of the cpu-medium shape (16 layers, hidden 1024, 576 visual + 64 text tokens). The
cost of tokenprune is the cumulative time of its entry points: functions in tokenprune's files called from
outside them (the hooks torch calls, the cache's `update` that attention calls), including the tensor work
they issue (layout gathers, scoring, cache metadata), divided by the forward's wall time. The baseline's
own DynamicCache.update is not subtracted, so this is an upper bound. Median of the repeats.

    python benchmarks/hook_cost_cpu.py [--repeats 5]   ->  benchmarks/results/hook_cost_cpu.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import tokenprune as tp
from tokenprune.bench import SIZES, build
from tokenprune.timing import machine_text

PACKAGE = Path(tp.__file__).resolve().parent.parent  # tokenprune/, strategies/, adapters/ all live under here
OWN = ("tokenprune/", "strategies/", "adapters/")


def _own(func: tuple) -> bool:
    file = func[0]
    return str(PACKAGE) in file and "/tests/" not in file and any(part in file for part in OWN)


def tokenprune_seconds(profile: cProfile.Profile) -> float:
    """Cumulative seconds of tokenprune's entry points (callers outside tokenprune), callees included."""
    total = 0.0
    for func, (_, _, _, _, callers) in pstats.Stats(profile).stats.items():
        if _own(func):
            total += sum(ct for caller, (_, _, _, ct) in callers.items() if not _own(caller))
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model, data = build(SIZES["cpu-medium"], 1, torch.device("cpu"), torch.float32)
    cases = {
        "hooks only (fastv ratio=0)": {"name": "fastv", "ratio": 0.0},
        "fastv": {"name": "fastv"},
        "st3": {"name": "st3"},
        "st3 ratio=0.1": {"name": "st3", "ratio": 0.1},
    }
    results = {}
    with torch.inference_mode():
        model(**data)  # warm-up
        for label, config in cases.items():
            shares, walls = [], []
            for _ in range(args.repeats):
                with tp.prune(model, config):
                    profile = cProfile.Profile()
                    start = time.perf_counter()
                    profile.enable()
                    model(**data, use_cache=True)
                    profile.disable()
                    walls.append(time.perf_counter() - start)
                shares.append(tokenprune_seconds(profile) / walls[-1])
            results[label] = {
                "tokenprune_share_median": statistics.median(shares),
                "tokenprune_share_all": shares,
                "prefill_s_median_profiled": statistics.median(walls),
            }
            print(
                f"{label}: {statistics.median(shares):.2%} of the prefill in tokenprune's hooks and cache", flush=True
            )
    out = {
        "machine": machine_text(torch.device("cpu")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python benchmarks/hook_cost_cpu.py --repeats {args.repeats}",
        "size": "cpu-medium",
        "prompt_tokens": int(data["input_ids"].shape[1]),
        "results": results,
        "note": "cProfile adds a per-call cost and the baseline cache update is not subtracted: upper bounds",
    }
    path = Path(__file__).parent / "results" / "hook_cost_cpu.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
