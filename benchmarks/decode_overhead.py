"""What tokenprune adds to each forward, counted in operations and timed where operations dominate.

A decode step at batch 1 on a GPU is bound by the host issuing kernels, not by the GPU running them: each
ATen operation costs a few microseconds of dispatch and launch, whatever its size. Work that tokenprune
adds to a step therefore shows up in proportion to the operations it issues, and removing visual KV
entries cannot pay for it (reading a few hundred fewer entries saves next to nothing at batch 1). This
script measures both sides:
- *operations*: ATen calls that produce a new tensor (views and no-op `.to` excluded: they launch nothing),
  per prefill and per decode step, counted by a TorchDispatchMode around `generate()`. The counts do not
  depend on the machine or on the model's width, only on its layer count, so a CPU count predicts the
  host-side cost on a GPU;
- *time*: TTFT and decode ms/token as ratios to the unpruned baseline, side by side in one process
  (`tokenprune.timing`: warm-up, interleaved repeats, medians), on a model small enough that, like a GPU
  decode step, a step is dominated by issuing operations (the `tiny` size: 4 layers, hidden 64).

It uses only tokenprune's public API, `tokenprune.timing` and the bench's model shapes, so it also runs
against an older checkout for a before/after comparison.

    python benchmarks/decode_overhead.py [--size tiny] [--new-tokens 64] [--repeats 9] [--device cpu]
        -> benchmarks/results/decode_overhead-<size>.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tokenprune as tp
from tokenprune import timing
from tokenprune.bench import SIZES, build, machine, methods_for


class OpCounter(TorchDispatchMode):
    """Counts ATen operations that produce a new tensor (not views, not `.to` that returns its input)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and not any(out is a for a in args):
            self.count += 1
        return out


def count_ops(model, data, factory, new_tokens: int) -> tuple[int, float]:
    """(operations of a prefill, operations per decode step) under the method `factory`."""

    def ops(n: int) -> int:
        with torch.inference_mode(), factory(), OpCounter() as counter:
            model.generate(**data, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1)
        return counter.count

    prefill = ops(1)  # generate() with one new token runs the prefill forward only
    return prefill, (ops(new_tokens + 1) - prefill) / new_tokens


def revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(tp.__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = SIZES[args.size]
    model, data = build(size, 1, device, dtype)
    layers = size.spec.layers
    methods = [timing.baseline_method()] + [
        (label, (lambda c=config: tp.prune(model, c))) for label, config in methods_for(layers)
    ]

    def generate(n: int, stopping_criteria) -> None:
        model.generate(**data, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                       stopping_criteria=stopping_criteria)

    ops = {label: count_ops(model, data, factory, args.new_tokens) for label, factory in methods}
    timings = timing.measure(methods, generate, args.new_tokens + 1, repeats=args.repeats, warmup=1)
    ratios = timing.ratios(timings)
    base_prefill, base_decode = ops["baseline"]
    rows = {}
    for label, (prefill, decode) in ops.items():
        rows[label] = {
            "prefill_ops": prefill,
            "decode_ops_per_step": decode,
            "extra_prefill_ops_per_layer": (prefill - base_prefill) / layers,
            "extra_decode_ops_per_step_per_layer": (decode - base_decode) / layers,
            **ratios[label],
            "decode_ms_per_token": timings[label].decode_per_token * 1e3,
        }
        print(f"{label:28s} decode ops/step {decode:7.1f} ({rows[label]['extra_decode_ops_per_step_per_layer']:+6.2f}"
              f" per layer)  decode ratio {ratios[label]['decode_ratio']:.3f}  TTFT ratio {ratios[label]['ttft_ratio']:.3f}")
    result = {
        "size": size.name,
        "layers": layers,
        "prompt_tokens": int(data["input_ids"].shape[1]),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": machine(device),
        "revision": revision(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python benchmarks/decode_overhead.py --size {size.name} --new-tokens {args.new_tokens} "
                   f"--repeats {args.repeats} --device {args.device}",
        "rows": rows,
        "timings": {name: t.to_dict() for name, t in timings.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"decode_overhead-{size.name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
