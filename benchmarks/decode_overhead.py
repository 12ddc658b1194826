"""What tokenprune adds to each forward, counted in operations and timed where operations dominate.

A decode step at batch 1 on a GPU is bound by the host issuing kernels, not by the GPU running them: each
ATen operation costs a few microseconds of dispatch and launch, whatever its size. Work that tokenprune
adds to a step therefore shows up in proportion to the operations it issues, and removing visual KV
entries cannot pay for it (reading a few hundred fewer entries saves next to nothing at batch 1). This
script measures both sides:
- *operations*: ATen calls that produce a new tensor or change one in place (views and no-op `.to` excluded:
  they launch nothing),
  per prefill and per decode step, counted by a TorchDispatchMode around `generate()`. The counts do not
  depend on the machine or on the model's width, only on its layer count, so a CPU count predicts the
  host-side cost on a GPU;
- *time*: TTFT and decode ms/token as ratios to the unpruned baseline, side by side in one process
  (`tokenprune.timing`: warm-up, interleaved repeats, medians), on a model small enough that, like a GPU
  decode step, a step is dominated by issuing operations (`tiny`: 4 layers, hidden 64; `narrow-7b`: the
  7B depth and token layout at hidden 128).

It uses only tokenprune's public API, `tokenprune.timing` and the bench's model shapes, so it also runs
against an older checkout for a before/after comparison.

    python benchmarks/decode_overhead.py [--size tiny|narrow-7b|...] [--new-tokens 64] [--repeats 9] [--device cpu]
        -> benchmarks/results/decode_overhead-<size>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tokenprune as tp
from tokenprune import timing
from tokenprune.bench import SIZES, Size, build, methods_for
from tokenprune.tiny import TinySpec

try:
    from tokenprune.timing import machine_text
except ImportError:  # an older checkout, for a before/after comparison: its bench.machine was this one line
    from tokenprune.bench import machine as machine_text

# The LLaVA-1.5-7B depth and token layout (32 layers, 576 visual + 63 text tokens) at a width where a CPU
# step is host-bound the way a GPU batch-1 decode step is: operation counts equal the 7B shape's.
NARROW_7B = Size(
    "narrow-7b", TinySpec(layers=32, hidden=128, heads=4, kv_heads=4, intermediate=256, vocab=512, grid=24)
)
SHAPES = {**SIZES, NARROW_7B.name: NARROW_7B}


aten = torch.ops.aten
READS = {aten._local_scalar_dense.default, aten.nonzero.default}  # a value back on the host: the host waits


class OpCounter(TorchDispatchMode):
    """Counts ATen operations that produce a new tensor (not views, not `.to` that returns its input), and
    host reads of accelerator tensors (`.item()`, `bool()`, `.tolist()`, nonzero, copies to the CPU), each of
    which makes the host wait for the device. On the CPU there is no device to wait for: reads count 0."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # in-place operations (add_, masked_fill_, ...) return their input but launch a kernel all the same
        if not func.is_view and (func._schema.is_mutable or not any(out is a for a in args)):
            self.count += 1
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is not None and source.device.type not in ("cpu", "meta"):
            to_host = func is aten._to_copy.default and str(kwargs.get("device", "")) == "cpu"
            if func in READS or to_host:
                self.reads += 1
        return out


def count_ops(model, data, factory, new_tokens: int) -> dict:
    """Operations and host reads of a prefill, and per decode step, under the method `factory`."""

    def ops(n: int) -> OpCounter:
        with torch.inference_mode(), factory(), OpCounter() as counter:
            model.generate(**data, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1)
        return counter

    prefill = ops(1)  # generate() with one new token runs the prefill forward only
    full = ops(new_tokens + 1)
    return {
        "prefill_ops": prefill.count,
        "decode_ops_per_step": (full.count - prefill.count) / new_tokens,
        "prefill_host_reads": prefill.reads,
        "decode_host_reads_per_step": (full.reads - prefill.reads) / new_tokens,
    }


def paired_decode_ratios(timings: dict) -> dict:
    """Per method, two estimates less spread by slow stretches of a shared machine than the ratio of two
    medians (reported beside them): the median and quartiles of its decode time per token over the baseline's
    in the same interleaved repeat, and the median of its 16-step blocks (`timing.Timing.blocks_s`) over the
    baseline's, with the quartiles of its blocks over that median."""
    base = timings["baseline"].to_dict()["decode_s_per_token_all"]
    out = {}
    for label, t in timings.items():
        ratios = [a / b for a, b in zip(t.to_dict()["decode_s_per_token_all"], base, strict=True)]
        q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
        out[label] = {"decode_ratio_paired": median, "decode_ratio_paired_q1": q1, "decode_ratio_paired_q3": q3}
        blocks = t.to_dict().get("decode_blocks_s_all")  # (an older checkout's timing has no blocks)
        if blocks:
            base_blocks = statistics.median(timings["baseline"].to_dict()["decode_blocks_s_all"])
            q1, median, q3 = statistics.quantiles(blocks, n=4)
            out[label].update(
                decode_ratio_blocks=median / base_blocks,
                decode_ratio_blocks_q1=q1 / base_blocks,
                decode_ratio_blocks_q3=q3 / base_blocks,
            )
    return out


def revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(tp.__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's own). 1 makes a host-bound CPU step issue operations the "
        "way a GPU's host does, one at a time, without the multi-threading noise of tiny kernels",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = SHAPES[args.size]
    model, data = build(size, 1, device, dtype)
    layers = size.spec.layers
    # ST3's eviction rounds set how often its decode steps pay for scoring and eviction: the every-step mode
    # and a longer round beside the default
    rounds = [(f"st3 evict_every={e}", {"name": "st3", "evict_every": e}) for e in (1, 16)]
    methods = [timing.baseline_method()] + [
        (label, (lambda c=config: tp.prune(model, c))) for label, config in methods_for(layers) + rounds
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

    ops = {label: count_ops(model, data, factory, args.new_tokens) for label, factory in methods}
    timings = timing.measure(methods, generate, args.new_tokens + 1, repeats=args.repeats, warmup=1)
    ratios = timing.ratios(timings)
    paired = paired_decode_ratios(timings)
    base = ops["baseline"]
    rows = {}
    for label, counts in ops.items():
        extra_prefill = counts["prefill_ops"] - base["prefill_ops"]
        extra_decode = counts["decode_ops_per_step"] - base["decode_ops_per_step"]
        rows[label] = {
            **counts,
            "extra_prefill_ops": extra_prefill,
            "extra_decode_ops_per_step": extra_decode,
            "extra_prefill_host_reads": counts["prefill_host_reads"] - base["prefill_host_reads"],
            "extra_decode_host_reads_per_step": counts["decode_host_reads_per_step"]
            - base["decode_host_reads_per_step"],
            **ratios[label],
            **paired[label],
            "ttft_ms": timings[label].ttft * 1e3,
            "decode_ms_per_token": timings[label].decode_per_token * 1e3,
        }
        print(
            f"{label:28s} extra ops: prefill {extra_prefill:+5d}, decode step {extra_decode:+7.1f}"
            f" ({extra_decode / layers:+6.2f} per layer)   decode ratio {ratios[label]['decode_ratio']:.3f}"
            f" (paired {paired[label]['decode_ratio_paired']:.3f},"
            f" blocks {paired[label].get('decode_ratio_blocks', float('nan')):.3f})"
            f"  TTFT ratio {ratios[label]['ttft_ratio']:.3f}"
        )
    result = {
        "size": size.name,
        "layers": layers,
        "prompt_tokens": int(data["input_ids"].shape[1]),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": machine_text(device),
        "revision": revision(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python benchmarks/decode_overhead.py --size {size.name} --new-tokens {args.new_tokens} "
        f"--repeats {args.repeats} --device {args.device}" + (f" --threads {args.threads}" if args.threads else ""),
        "threads": torch.get_num_threads(),
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
