"""The pruning record of an lmms-eval run: one per sample, and their aggregate over the run.

A sample's record is `Report.sample_summary` (tokens, FLOPs and KV entries vs the same sample unpruned) plus
what the generation took: its share of its batch's prefill and decode seconds, the tokens it generated, and,
with a paired baseline, the same for the unpruned model on the same batch and the greedy-token agreement.
The unpruned baseline (`strategy=none`) records its visual tokens and times, with every ratio exactly 1.

The aggregate is what a table needs: FLOPs and KV as ratios of sums over the samples (so a long prompt
weighs as much as it costs), visual tokens per layer and equivalent visual tokens as means, and time
ratios as ratios of summed seconds. This module does not import lmms-eval, so it is tested without it.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..ratios import ratio

#: the keys of the aggregate, prefixed with this in lmms-eval's results (`throughput`, as `avg_<key>`)
PREFIX = "tokenprune_"


def baseline_record(prompt_tokens: int, visual_tokens: int, num_layers: int) -> dict:
    """The record of a sample generated without pruning: all of its visual tokens in every layer."""
    return {
        "prompt_tokens": prompt_tokens,
        "visual_tokens": visual_tokens,
        "visual_tokens_per_layer": [visual_tokens] * num_layers,
        "equivalent_visual_tokens": float(visual_tokens),
        "prefill_flops_ratio": 1.0,
        "total_flops_ratio": 1.0,
        "visual_kv_ratio": 1.0,
        "total_kv_ratio": 1.0,
    }


def aggregate(records: list[dict]) -> dict[str, float]:
    """Flat numbers over `records` (each with its `task` and `doc_id`), keyed without `PREFIX`."""
    if not records:
        return {}
    out: dict[str, float] = {"samples": float(len(records))}
    if all("flops" in r for r in records):
        flops = {key: sum(r["flops"][key] for r in records) for key in records[0]["flops"]}
        out["prefill_flops_ratio"] = ratio(flops["prefill"], flops["baseline_prefill"])
        out["total_flops_ratio"] = ratio(
            flops["prefill"] + flops["decode"], flops["baseline_prefill"] + flops["baseline_decode"]
        )
        for part in ("visual", "total"):
            value = sum(r["kv_entries"][part]["mean"] for r in records)
            base = sum(r["kv_entries"][part]["baseline_mean"] for r in records)
            out[f"{part}_kv_ratio"] = ratio(value, base)
    else:  # the unpruned baseline: nothing removed
        out.update(prefill_flops_ratio=1.0, total_flops_ratio=1.0, visual_kv_ratio=1.0, total_kv_ratio=1.0)
    out["visual_tokens"] = statistics.fmean(r["visual_tokens"] for r in records)
    out["equivalent_visual_tokens"] = statistics.fmean(r["equivalent_visual_tokens"] for r in records)
    layers = {len(r["visual_tokens_per_layer"]) for r in records}
    if len(layers) == 1:
        for layer, counts in enumerate(zip(*(r["visual_tokens_per_layer"] for r in records), strict=True)):
            out[f"visual_tokens_layer_{layer:02d}"] = statistics.fmean(counts)
    seconds = _sum_seconds(records, "seconds")
    out.update({f"{part}_seconds": value for part, value in seconds.items()})
    out["new_tokens"] = float(sum(r["new_tokens"] for r in records))
    if all("baseline_seconds" in r for r in records):
        base = _sum_seconds(records, "baseline_seconds")
        for part, name in (("total", "time_ratio"), ("prefill", "ttft_ratio"), ("decode", "decode_ratio")):
            if part in seconds and part in base:
                out[name] = ratio(seconds[part], base[part])
        out["agreement"] = statistics.fmean(r["agreement"] for r in records)
    return out


def _sum_seconds(records: list[dict], key: str) -> dict[str, float]:
    """Summed seconds: total always; prefill and decode when every sample has them (beam search has not)."""
    parts = set.intersection(*(set(r[key]) for r in records))
    return {part: sum(r[key][part] for r in records) for part in ("total", "prefill", "decode") if part in parts}


def unique(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per (task, doc_id), in the order of the documents: data-parallel shards gathered from the
    processes, each sample once."""
    seen: dict[tuple, dict] = {}
    for r in records:
        seen.setdefault((r["task"], r["doc_id"]), r)
    return [seen[key] for key in sorted(seen, key=lambda k: (str(k[0]), k[1]))]
