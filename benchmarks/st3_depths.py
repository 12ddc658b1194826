"""ST3's defaults on the Qwen2.5-VL-7B (28 layers) and Qwen3-VL-8B (36 layers) shapes: do they still meet
prefill FLOPs <= 50 % and visual KV <= 30 % of baseline, the targets they were sized for on LLaVA-1.5-7B?

Same method as benchmarks/st3_defaults.py: the engine really runs, here on a random narrow Qwen2.5-VL /
Qwen3-VL (tokenprune.tiny_qwen, hidden 64) with the real decoder depth and the real visual token counts,
greedy, exactly 128 new tokens; the per-layer and per-step counts it records depend only on the schedule,
so they are priced at the real widths through the report's own FLOPs and KV formulas (KV at 2 bytes).

Inputs (64 text tokens around the visual block, as the 1 + 35 + 28 of the LLaVA layout: 30 before,
<vision_start>, the placeholders, <vision_end>, 32 after):
  image: a 56 x 92 patch grid -> 28 x 46 = 1288 tokens (both families)
  video: 16 frames of 448 x 448; Qwen2.5-VL (patch 14) 8 temporal patches x 16 x 16 = 2048 tokens;
         Qwen3-VL (patch 16) 8 x 14 x 14 = 1568 tokens, written as 8 runs each with a 3-token timestamp and
         its own start/end pair (40 more text tokens, as the real processor lays a video out)
Two checks then separate depth from input size: the ST3 defaults on LLaVA-1.5's own layout (a 48 x 48 patch
image -> 576 tokens + the same 64 text tokens) at each Qwen depth, and a depth sweep of the defaults on the
1288-token image priced at the Qwen2.5-VL-7B width with the depth replaced (where they stop meeting the targets).

    python benchmarks/st3_depths.py            # writes benchmarks/results/st3_depths.json (~20 min on 2 cores)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

import tokenprune as tp
from tokenprune.tiny_qwen import QwenSpec, build_qwen_model, make_qwen_inputs

# text decoders of the public checkpoints (Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen3-VL-8B-Instruct config.json)
SHAPES = {
    "qwen2.5-vl-7b": dict(
        family="qwen2_5_vl",
        video=(16, 32, 32),  # 16 frames of 448/14 = 32 x 32 patches
        dims=dict(
            layers=28,
            hidden_size=3584,
            intermediate_size=18944,
            num_heads=28,
            num_kv_heads=4,
            head_dim=128,
            vocab_size=152064,
        ),
    ),
    "qwen3-vl-8b": dict(
        family="qwen3_vl",
        video=(16, 28, 28),  # 16 frames of 448/16 = 28 x 28 patches
        dims=dict(
            layers=36,
            hidden_size=4096,
            intermediate_size=12288,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=151936,
        ),
    ),
}
IMAGE = (56, 92)  # patches -> 1288 tokens
LLAVA_IMAGE = (48, 48)  # patches -> 576 tokens, LLaVA-1.5's count
TEXT_BEFORE, TEXT_AFTER, NEW_TOKENS = 30, 32, 128
METHODS = {  # label -> (strategy, params); VTW at its default k
    "st3": ("st3", {}),
    "fastv_k2_r0.5": ("fastv", {"k": 2, "ratio": 0.5}),
    "vtw_k16": ("vtw", {}),
}
SWEEP_DEPTHS = [20, 22, 24, 26, 28, 30, 32, 36, 40]
TARGETS = {"prefill_flops_ratio": 0.5, "visual_kv_mean_ratio": 0.3}


def run(family: str, layers: int, item: tuple, strategy: str, **params) -> tp.Report:
    spec = QwenSpec(family=family, layers=layers, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=512)
    model = build_qwen_model(spec)
    data = make_qwen_inputs(spec, [[("text", TEXT_BEFORE), item, ("text", TEXT_AFTER)]])
    with torch.no_grad(), tp.prune(model, strategy, **params) as session:
        model.generate(**data, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return session.report


def priced(report: tp.Report, dims: dict) -> dict:
    arch = dataclasses.replace(report.arch, **dims)
    repriced = dataclasses.replace(report, arch=arch, kv_dtype_bytes=2)  # fp16/bf16 KV cache
    flops, kv = repriced.flops(), repriced.kv_bytes()
    row = {
        "prompt_tokens": report.prompt_tokens[0],
        "visual_tokens": report.visual_tokens[0],
        "prefill_flops_ratio": round(flops["prefill_ratio"], 4),
        "fastv_formula_prefill_ratio": round(flops["fastv_formula"]["prefill_ratio"], 4),
        "decode_flops_ratio": round(flops["decode_ratio"], 4),
        "visual_kv_mean_ratio": round(kv["visual"]["mean_ratio"], 4),
        "total_kv_mean_ratio": round(kv["total"]["mean_ratio"], 4),
        "total_kv_peak_ratio": round(kv["total"]["peak_ratio"], 4),
    }
    row["meets_targets"] = all(row[k] <= v for k, v in TARGETS.items())
    return row


def main() -> None:
    out: dict = {
        "setup": {
            "text_tokens": TEXT_BEFORE + 2 + TEXT_AFTER,
            "image_patches": list(IMAGE),
            "new_tokens": NEW_TOKENS,
            "kv_bytes": 2,
            "targets": TARGETS,
        },
        "defaults": tp.resolve_strategy("st3").params.model_dump(),
        "shapes": {name: s["dims"] for name, s in SHAPES.items()},
        "results": {},
        "llava_layout": {},
        "depth_sweep": [],
    }
    reports = {}
    for name, shape in SHAPES.items():
        inputs = {"image": ("image", IMAGE), "video": ("video", shape["video"])}
        out["results"][name] = {}
        for kind, item in inputs.items():
            out["results"][name][kind] = {}
            for label, (strategy, params) in METHODS.items():
                report = run(shape["family"], shape["dims"]["layers"], item, strategy, **params)
                reports[name, kind, label] = report
                out["results"][name][kind][label] = priced(report, shape["dims"])
                print(name, kind, label, out["results"][name][kind][label], flush=True)
    # ST3 defaults with LLaVA-1.5's 576 visual tokens at the Qwen depths and widths
    for name, shape in SHAPES.items():
        report = run(shape["family"], shape["dims"]["layers"], ("image", LLAVA_IMAGE), "st3")
        out["llava_layout"][name] = priced(report, shape["dims"])
        print("llava layout", name, out["llava_layout"][name], flush=True)
    # ST3 defaults at other depths, image input, Qwen2.5-VL-7B width
    base = SHAPES["qwen2.5-vl-7b"]
    for layers in SWEEP_DEPTHS:
        if layers == base["dims"]["layers"]:
            report = reports["qwen2.5-vl-7b", "image", "st3"]
        else:
            report = run(base["family"], layers, ("image", IMAGE), "st3")
        cuts = list(range(2, layers, 3))
        row = {"layers": layers, "cuts": len(cuts), **priced(report, {**base["dims"], "layers": layers})}
        out["depth_sweep"].append(row)
        print("sweep", row, flush=True)
    path = Path(__file__).parent / "results" / "st3_depths.json"
    path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
