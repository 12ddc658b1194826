"""`tokenprune bench`: what it writes and that its bookkeeping is right (never its timings: those are
measurements, made by running the command, cited in docs/benchmarks.md)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from rich.console import Console

from tokenprune import cli
from tokenprune.bench import SIZES, methods_for


def run(argv):
    text = io.StringIO()
    code = cli.main(["bench", *argv], console=Console(file=text, width=200, color_system=None))
    return code, text.getvalue()


def test_bench_writes_ratios_plot_and_targets(tmp_path):
    code, text = run(
        ["--size", "tiny", "--repeats", "1", "--new-tokens", "2", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert code == 0, text
    result = json.loads((tmp_path / "bench-tiny-b1.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["baseline"] + [label for label, _ in methods_for(SIZES["tiny"].spec.layers)]
    base = rows["baseline"]
    assert base["strategy"] is None and base["ttft_ratio"] == base["decode_ratio"] == base["end_to_end_ratio"] == 1.0
    hooks = rows["hooks only (fastv ratio=0)"]
    # removing nothing: exactly the baseline's FLOPs and KV (no scoring is done for ratio 0)
    assert hooks["prefill_flops_ratio"] == hooks["total_kv_mean_ratio"] == 1.0
    assert (
        rows["fastv ratio=0.75"]["prefill_flops_ratio"]
        < rows["fastv"]["prefill_flops_ratio"]
        < rows["fastv ratio=0.25"]["prefill_flops_ratio"]
        < 1
    )
    assert (
        rows["st3"]["visual_kv_mean_ratio"] < rows["st3"]["prefill_flops_ratio"]
    )  # VTA shrinks the cache while decoding
    assert all(r["peak_memory_bytes"] is None for r in rows.values())  # CPU: no allocator statistics, none claimed
    assert len(result["timings"]["baseline"]["ttft_s_all"]) == 1
    hook_cost = result["hook_cost"]
    assert hook_cost["pairs"] == 3 and len(hook_cost["ratios"]) == 3  # 2 * repeats + 1 paired prefills
    assert hook_cost["ratio_quartiles"][0] <= hook_cost["ratio_median"] <= hook_cost["ratio_quartiles"][1]
    assert result["targets"][0]["target"].startswith("hooks that remove nothing cost <= 2%")
    assert len(result["targets"]) == len(rows) - 1  # the hooks target + one per strategy (not baseline, not no-op)
    assert result["command"].startswith("tokenprune bench --size tiny")
    with Image.open(tmp_path / "time_vs_flops-tiny-b1.png") as image:
        assert image.size[0] > 300
    assert "hooks that remove nothing" in text and ("met" in text or "missed" in text)


def test_scoring_comparison_writes_its_speedup(tmp_path):
    code, text = run(["--scoring", "--size", "tiny", "--repeats", "1", "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0, text
    result = json.loads((tmp_path / "scoring-tiny.json").read_text())
    assert set(result["ratios"]) == {
        "baseline",
        "fastv (sdpa, 1 recomputed row)",
        "fastv (full attention matrix at the scoring layer)",
    }
    assert result["speedup_of_recomputed_scores"] > 0


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--size", "llava15-7b", "--device", "cpu"], "GPU size"),
        (["--size", "tiny", "--new-tokens", "1", "--device", "cpu"], "--new-tokens must be >= 2"),
    ],
)
def test_bad_bench_arguments_exit_2(tmp_path, capsys, argv, expected):
    assert cli.main(["bench", *argv, "--out", str(tmp_path)]) == 2
    assert expected in capsys.readouterr().err


def test_gpu_targets_are_judged_from_the_rows():
    import torch

    from tokenprune.bench import targets

    def row(strategy, **values):
        base = dict(
            ttft_ratio=1.0,
            prefill_flops_ratio=1.0,
            decode_ratio=1.0,
            end_to_end_ratio=1.0,
            visual_kv_mean_ratio=1.0,
            kv_budget_batch_ratio=1.0,
        )
        return {"strategy": strategy, **base, **values}

    rows = {
        "baseline": row(None),
        "hooks only (fastv ratio=0)": row({"name": "fastv"}, ttft_ratio=1.05),
        "st3": row(
            {"name": "st3"},
            ttft_ratio=0.45,
            prefill_flops_ratio=0.46,
            decode_ratio=1.02,
            visual_kv_mean_ratio=0.24,
            end_to_end_ratio=0.7,
            kv_budget_batch_ratio=1.6,
        ),
    }
    hooks = {"pairs": 5, "ratio_median": 1.005}  # judged from the paired prefills, not from the TTFT row
    gpu = torch.device("cuda")
    single = {t["target"]: t["met"] for t in targets(rows, hooks, gpu, "llava15-7b", 1)}
    assert single["hooks that remove nothing cost <= 1% of prefill time (median of 5 paired prefills)"]
    assert not targets(rows, {"pairs": 5, "ratio_median": 1.015}, gpu, "llava15-7b", 1)[0]["met"]
    assert single["st3 defaults: TTFT >= 2x faster than baseline"]
    assert single["st3 defaults: visual KV <= 30% of baseline over the generation"]
    assert not single["st3 defaults: decode ms/token no slower than baseline at batch 1"]
    batched = {t["target"]: t["met"] for t in targets(rows, hooks, gpu, "llava15-7b", 16)}
    assert batched["st3 defaults: >= 1.3x tokens/s at batch 16"]
    assert not batched["st3 defaults: largest batch within a fixed KV memory budget >= 2.5x baseline's"]
    assert len(targets(rows, hooks, torch.device("cpu"), "cpu-medium", 1)) == 2  # hooks + the one strategy


def test_bench_on_a_qwen_vl_size(tmp_path):
    """The Qwen-VL sizes run through the same bench: visual tokens from the image grid, FLOPs ratios below 1."""
    code, text = run(
        ["--size", "tiny-qwen25vl", "--repeats", "1", "--new-tokens", "2", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert code == 0, text
    result = json.loads((tmp_path / "bench-tiny-qwen25vl-b1.json").read_text())
    rows = result["rows"]
    assert rows["hooks only (fastv ratio=0)"]["prefill_flops_ratio"] == 1.0
    assert rows["fastv"]["prefill_flops_ratio"] < 1 and rows["st3"]["visual_kv_mean_ratio"] < 1
    assert result["command"].startswith("tokenprune bench --size tiny-qwen25vl")
