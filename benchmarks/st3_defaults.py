"""Derive ST3's defaults for the LLaVA-1.5 shapes: counts from real engine runs, FLOPs at the real dimensions.

The engine runs on a random 32-layer LLaVA with the LLaVA-1.5-7B token layout (576 visual + 64 text
tokens, 128 new tokens) but a tiny hidden size: token counts per layer and per decode step depend only on
the schedule, not on the width. The recorded counts are then priced with the 7B / 13B dimensions by the
report's own FLOPs and KV formulas (docs/st3-defaults.md explains the choice).

    python benchmarks/st3_defaults.py            # writes benchmarks/results/st3_defaults.json
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import torch

import tokenprune as tp
from tokenprune.tiny import TinySpec, build_model, make_inputs

SHAPES = {
    "llava-1.5-7b": dict(
        layers=32,
        hidden_size=4096,
        intermediate_size=11008,
        num_heads=32,
        num_kv_heads=32,
        head_dim=128,
        vocab_size=32064,
    ),
    "llava-1.5-13b": dict(
        layers=40,
        hidden_size=5120,
        intermediate_size=13824,
        num_heads=40,
        num_kv_heads=40,
        head_dim=128,
        vocab_size=32064,
    ),
}
TEXT_BEFORE, TEXT_AFTER, NEW_TOKENS = 35, 28, 128  # 1 bos + 35 + 576 + 28 = 640 prompt tokens


def run(layers: int, strategy: str, new_tokens: int, **params) -> tp.Report:
    spec = TinySpec(layers=layers, hidden=64, heads=4, kv_heads=4, intermediate=128, vocab=512, grid=24)
    model = build_model(spec)
    data = make_inputs(spec, TEXT_BEFORE, TEXT_AFTER)
    with torch.no_grad(), tp.prune(model, strategy, **params) as session:
        model.generate(**data, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return session.report


def priced(report: tp.Report, shape: str) -> dict:
    arch = dataclasses.replace(report.arch, **SHAPES[shape])
    repriced = dataclasses.replace(report, arch=arch, kv_dtype_bytes=2)  # fp16/bf16 KV cache
    flops, kv = repriced.flops(), repriced.kv_bytes()
    return {
        "prefill_flops_ratio": round(flops["prefill_ratio"], 4),
        "fastv_formula_prefill_ratio": round(flops["fastv_formula"]["prefill_ratio"], 4),
        "decode_flops_ratio": round(flops["decode_ratio"], 4),
        "visual_kv_mean_ratio": round(kv["visual"]["mean_ratio"], 4),
        "total_kv_mean_ratio": round(kv["total"]["mean_ratio"], 4),
        "total_kv_peak_ratio": round(kv["total"]["peak_ratio"], 4),
    }


def main() -> None:
    out: dict = {"setup": {"visual": 576, "prompt": 640, "new_tokens": NEW_TOKENS}, "pvtp_grid": [], "vta_grid": []}
    # 1) prefill schedule: prefill FLOPs of every (start, stride, ratio) on the 7B shape, one forward each
    for start, stride, ratio in itertools.product([1, 2, 3], [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4, 0.5]):
        report = run(32, "st3", 1, start_layer=start, stride=stride, ratio=ratio, decay="none")
        row = {"start_layer": start, "stride": stride, "ratio": ratio, **priced(report, "llava-1.5-7b")}
        out["pvtp_grid"].append(row)
    # 2) decay on top of the chosen schedule, over a 128-token generation
    defaults = tp.resolve_strategy("st3").params
    for f in [0.0, 0.1, 0.2, 0.3, 0.5, 1.0]:
        report = run(
            32,
            "st3",
            NEW_TOKENS,
            start_layer=defaults.start_layer,
            stride=defaults.stride,
            ratio=defaults.ratio,
            final_fraction=f,
        )
        out["vta_grid"].append({"final_fraction": f, **priced(report, "llava-1.5-7b")})
    # 3) VTA's eviction rounds: the visual KV the round length costs (counts are met at rounds only)
    out["rounds_grid"] = [
        {"evict_every": e, **priced(run(32, "st3", NEW_TOKENS, evict_every=e), "llava-1.5-7b")} for e in (1, 4, 8, 16)
    ]
    # 4) the defaults, and the baselines, on both shapes
    out["defaults"] = defaults.model_dump()
    for shape in SHAPES:
        layers = SHAPES[shape]["layers"]
        out[shape] = {
            "st3": priced(run(layers, "st3", NEW_TOKENS), shape),
            "fastv_k2_r0.5": priced(run(layers, "fastv", NEW_TOKENS, k=2, ratio=0.5), shape),
            "vtw_k16": priced(run(layers, "vtw", NEW_TOKENS, k=16), shape),
        }
    path = Path(__file__).parent / "results" / "st3_defaults.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("defaults", *SHAPES)}, indent=1))


if __name__ == "__main__":
    main()
