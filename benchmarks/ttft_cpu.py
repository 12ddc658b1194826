"""TTFT and decode ratios on the medium CPU configuration (16 layers, hidden 1024, 576 visual + 64 text).

Baseline, FastV(k=2, ratio=0.5) and ST3 defaults side by side in one process: same inputs, one warm-up,
interleaved repeats, medians (tokenprune.timing.measure). Writes benchmarks/results/ttft_cpu.json.

    python benchmarks/ttft_cpu.py [--repeats 5] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

import tokenprune as tp
from tokenprune.timing import baseline_method, measure, ratios
from tokenprune.tiny import TinySpec, build_model, make_inputs

SPEC = TinySpec(layers=16, hidden=1024, heads=16, kv_heads=16, intermediate=2816, vocab=32000, grid=24)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    model = build_model(SPEC)
    data = make_inputs(SPEC, text_before=35, text_after=28)  # 1 + 35 + 576 + 28 = 640 tokens
    methods = [
        baseline_method(),
        ("fastv(k=2,ratio=0.5)", lambda: tp.prune(model, "fastv", k=2, ratio=0.5)),
        ("st3(defaults)", lambda: tp.prune(model, "st3")),
    ]
    reports = {}

    def generate(n: int, stopping_criteria) -> None:
        model.generate(**data, max_new_tokens=n, min_new_tokens=n, do_sample=False, stopping_criteria=stopping_criteria)

    timings = measure(methods, generate, args.new_tokens, repeats=args.repeats,
                      on_step=lambda label: print(label, flush=True))
    for name, factory in methods[1:]:
        with torch.inference_mode(), factory() as run:
            generate(args.new_tokens, None)
        flops = run.report.flops()
        reports[name] = {"prefill_flops_ratio": flops["prefill_ratio"], "decode_flops_ratio": flops["decode_ratio"]}
    result = {
        "machine": f"{_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python benchmarks/ttft_cpu.py --repeats {args.repeats} --new-tokens {args.new_tokens}",
        "config": {"layers": SPEC.layers, "hidden": SPEC.hidden, "visual": SPEC.visual_tokens, "prompt": int(data["input_ids"].shape[1])},
        "ratios": ratios(timings),
        "flops": reports,
        "timings": {name: t.to_dict() for name, t in timings.items()},
    }
    path = Path(__file__).parent / "results" / "ttft_cpu.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({"ratios": result["ratios"], "flops": reports}, indent=1))


if __name__ == "__main__":
    main()
