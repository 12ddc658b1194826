"""`tokenprune bench`: what it writes and that its bookkeeping is right (never its timings: those are
measurements, made by running the command, cited in docs/benchmarks.md)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from rich.console import Console

from tokenprune import cli
from tokenprune.bench import KV_BUDGET_BYTES, SIZES, methods_for


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
    # equivalent visual tokens (N = 36 on 4 layers): the baseline's and the no-op's N, FastV k=2 keeps 18 from
    # layer 2 on, VTW k=2 withdraws all 36
    assert base["equivalent_visual_tokens"] == hooks["equivalent_visual_tokens"] == 36
    assert rows["fastv"]["equivalent_visual_tokens"] == (2 * 36 + 2 * 18) / 4
    assert rows["vtw k=2"]["equivalent_visual_tokens"] == 2 * 36 / 4
    # the baseline's KV bytes are the unpruned cache's, the same as the no-op's
    assert base["total_kv_peak_bytes"] == hooks["total_kv_peak_bytes"] > rows["fastv"]["total_kv_peak_bytes"]
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
    assert "equiv. visual tokens" in text


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


# ------------------------------------------------------------------------------------------- --quick
QUICK_LABELS = ["baseline", "hooks only (fastv ratio=0)", "fastv", "vtw k=2", "st3"]  # 4-layer tiny sizes
QUICK_FIELDS = {
    "ttft_s",
    "decode_s_per_token",
    "end_to_end_s",
    "ttft_ratio",
    "decode_ratio",
    "end_to_end_ratio",
    "peak_memory_bytes",
    "total_kv_mean_bytes",
    "total_kv_peak_bytes",
    "visual_kv_mean_bytes",
    "visual_kv_peak_bytes",
    "kv_budget_batch",
    "kv_budget_batch_ratio",
    "prefill_flops_ratio",
    "total_flops_ratio",
    "equivalent_visual_tokens",
}


def test_quick_writes_one_json_and_one_markdown_table_with_every_method(tmp_path):
    argv = ["--quick", "--size", "tiny", "--size", "tiny-qwen25vl", "--new-tokens", "3", "--repeats", "2"]
    code, text = run([*argv, "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-quick-cpu.json", "bench-quick-cpu.md"]
    result = json.loads((tmp_path / "bench-quick-cpu.json").read_text())
    assert result["plan"] == [{"size": "tiny", "batch": 1}, {"size": "tiny-qwen25vl", "batch": 1}]
    assert result["command"].startswith("tokenprune bench --quick --size tiny --size tiny-qwen25vl --new-tokens 3")
    assert result["kv_budget_bytes"] == KV_BUDGET_BYTES and result["elapsed_s"] > 0
    markdown = (tmp_path / "bench-quick-cpu.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| size"))
    for column in ("TTFT ms", "decode ms/token", "peak mem GiB", "batch in 16 GiB KV", "equiv. visual tokens"):
        assert f"| {column} |" in header + " |"
    for entry, visual in zip(result["entries"], [36, 16], strict=True):  # N: a 6x6 grid; an 8x8 patch grid / 4
        assert entry["status"] == "measured" and entry["repeats"] == 2 and entry["new_tokens"] == 3
        rows = entry["rows"]
        assert list(rows) == QUICK_LABELS
        for label, row in rows.items():
            assert QUICK_FIELDS <= set(row) and row["status"] == "measured", label
            assert len(entry["timings"][label]["ttft_s_all"]) == 2
            # the largest batch whose peak KV fits the budget, from the measured bytes per sample (batch 1)
            assert row["kv_budget_batch"] == KV_BUDGET_BYTES // row["total_kv_peak_bytes"]
            assert f"| {entry['size']} | 1 | {label} | {row['ttft_s'] * 1e3:.1f} |" in markdown
        base, hooks = rows["baseline"], rows["hooks only (fastv ratio=0)"]
        assert base["equivalent_visual_tokens"] == hooks["equivalent_visual_tokens"] == visual
        assert rows["fastv"]["equivalent_visual_tokens"] == (2 * visual + 2 * round(visual * 0.5)) / 4
        assert rows["vtw k=2"]["equivalent_visual_tokens"] == 2 * visual / 4
        for key in ("total_kv_mean_bytes", "total_kv_peak_bytes", "visual_kv_mean_bytes", "visual_kv_peak_bytes"):
            assert base[key] == hooks[key] > 0, key
        assert rows["vtw k=2"]["visual_kv_peak_bytes"] < base["visual_kv_peak_bytes"]
        assert rows["vtw k=2"]["kv_budget_batch"] > base["kv_budget_batch"]
        assert base["prefill_flops_ratio"] == hooks["prefill_flops_ratio"] == 1.0 > rows["fastv"]["prefill_flops_ratio"]
        assert entry["hook_cost"]["pairs"] == 5 and entry["targets"]
    assert "tiny-qwen25vl, batch 1: repeat 2/2: st3" in text and "done in" in text


def test_quick_with_a_time_guard_of_0_marks_every_method_not_run(tmp_path):
    argv = ["--quick", "--size", "tiny", "--batch", "1", "--batch", "2", "--time-guard", "0", "--device", "cpu"]
    code, text = run([*argv, "--out", str(tmp_path)])
    assert code == 0, text
    result = json.loads((tmp_path / "bench-quick-cpu.json").read_text())
    assert [(e["size"], e["batch"], e["status"]) for e in result["entries"]] == [
        ("tiny", 1, "not run"),
        ("tiny", 2, "not run"),
    ]
    for entry in result["entries"]:
        assert "time guard (0 s)" in entry["reason"]
        assert entry["rows"] == {label: {"status": "not run"} for label in QUICK_LABELS}
    markdown = (tmp_path / "bench-quick-cpu.md").read_text()
    assert "| tiny | 2 | st3 | not run |" in markdown and "tiny, batch 1: not run" in markdown
    assert "0 of 2 entries measured" in text


def test_quick_builds_each_size_once_for_all_its_batches(tmp_path, monkeypatch):
    from tokenprune import bench

    built = []
    original = bench.build_size_model

    def counting(size, device, dtype):
        built.append(size.name)
        return original(size, device, dtype)

    monkeypatch.setattr(bench, "build_size_model", counting)
    argv = ["--quick", "--size", "tiny", "--batch", "1", "--batch", "2", "--new-tokens", "2", "--repeats", "1"]
    code, text = run([*argv, "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0, text
    assert built == ["tiny"]
    result = json.loads((tmp_path / "bench-quick-cpu.json").read_text())
    one, two = (entry["rows"]["fastv"] for entry in result["entries"])
    assert two["total_kv_peak_bytes"] == 2 * one["total_kv_peak_bytes"]  # the same prompt twice
    assert two["kv_budget_batch"] == one["kv_budget_batch"]


def test_the_time_guard_cuts_repeats_to_what_fits():
    import torch

    import tokenprune as tp
    from tokenprune.bench import build, measure_methods

    model, data = build(SIZES["tiny"], 1, torch.device("cpu"), torch.float32)
    strategies = {"fastv": tp.resolve_strategy("fastv")}
    asked = []

    def guard(answer):
        def more_repeats(round_s):
            asked.append(round_s)
            return answer

        return more_repeats

    for answer, done in [(0, 1), (1, 2), (10, 3)]:  # never fewer than one repeat, never more than asked for
        timings, captured = measure_methods(
            model, data, strategies, new_tokens=2, repeats=3, device=torch.device("cpu"), more_repeats=guard(answer)
        )
        assert [len(t.ttft_s) for t in timings.values()] == [done, done]
        assert captured["baseline"].run is None and captured["fastv"].run.report.decode_steps == 1
    assert len(asked) == 3 and all(r > 0 for r in asked)


def test_sizes_are_built_directly_in_the_requested_dtype():
    import torch

    from tokenprune.bench import build

    for name in ("tiny", "tiny-qwen25vl"):
        model, data = build(SIZES[name], 1, torch.device("cpu"), torch.bfloat16)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}, name
        assert torch.get_default_dtype() == torch.float32  # restored
        with torch.inference_mode():
            out = model.generate(**data, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        assert out.shape[1] == data["input_ids"].shape[1] + 2


def test_the_quick_plans_7b_shapes_are_constructed_on_the_target_device_in_bf16():
    """Never an fp32 init on the CPU (minutes for 7B random weights): on the meta device nothing is computed,
    and every parameter and buffer must be there, in bf16 (integer index buffers aside)."""
    import torch

    from tokenprune.bench import build_size_model
    from tokenprune.bench_quick import PLAN

    assert PLAN == [("llava15-7b", 1), ("llava15-7b", 16), ("llava-next-7b", 1), ("qwen25vl-7b", 1)]
    for name, billions in [("llava15-7b", 6.7), ("llava-next-7b", 6.7), ("qwen25vl-7b", 7.6)]:
        model = build_size_model(SIZES[name], torch.device("meta"), torch.bfloat16)
        params = list(model.parameters())
        assert sum(p.numel() for p in params) / 1e9 == pytest.approx(billions, abs=0.1), name
        assert {(p.device.type, p.dtype) for p in params} == {("meta", torch.bfloat16)}, name
        assert {b.device.type for b in model.buffers()} == {"meta"}, name
        assert {b.dtype for b in model.buffers() if b.is_floating_point()} <= {torch.bfloat16}, name


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--quick", "--scoring", "--size", "tiny"], "--quick and --scoring are separate runs"),
        (["--time-guard", "10", "--size", "tiny"], "--time-guard applies to --quick only"),
        (["--quick", "--size", "tiny", "--time-guard", "-1"], "--time-guard must be >= 0 seconds, not -1"),
        (["--quick"], "needs a CUDA device; on a CPU pass a CPU size, e.g. --size tiny (allowed: cpu-medium"),
        (["--quick", "--batch", "2"], "needs a CUDA device; on a CPU pass a CPU size"),
        (["--quick", "--size", "llava15-7b"], "GPU size"),
        (["--quick", "--size", "tiny", "--repeats", "0"], "--repeats and --batch >= 1"),
    ],
)
def test_bad_quick_arguments_exit_2(tmp_path, capsys, argv, expected):
    assert cli.main(["bench", *argv, "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert expected in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_the_documented_gpu_commands_parse_and_name_their_files(monkeypatch):
    """docs/benchmarks.md names the two GPU scripts; the bench command of run_quick.sh parses as the quick plan,
    and the transformers wheel prepare.sh fetches is one the project accepts."""
    import re
    import tomllib
    from pathlib import Path

    import torch
    from packaging.requirements import Requirement

    from tokenprune.bench_quick import device_slug

    root = Path(__file__).resolve().parent.parent
    docs = (root / "docs" / "benchmarks.md").read_text()
    assert "bash benchmarks/gpu/prepare.sh" in docs and 'bash benchmarks/gpu/run_quick.sh "$OUT"' in docs
    run = (root / "benchmarks" / "gpu" / "run_quick.sh").read_text()
    line = next(x for x in run.splitlines() if x.startswith("python3 -m tokenprune.cli bench"))
    args = cli.build_parser().parse_args(line.replace('"$out"', "OUT").split()[3:])
    assert args.quick and args.out == "OUT" and args.size is None and args.batch is None
    pinned = re.search(r"transformers==(\S+)", (root / "benchmarks" / "gpu" / "prepare.sh").read_text()).group(1)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = next(Requirement(d) for d in project if d.startswith("transformers"))
    assert wanted.specifier.contains(pinned)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert device_slug(torch.device("cuda")) == "nvidia-h200" and device_slug(torch.device("cpu")) == "cpu"


def test_a_failing_quick_entry_is_marked_and_the_others_still_run(tmp_path, monkeypatch):
    from tokenprune import bench

    original = bench.run_model

    def failing_on_batch_2(model, data, size, configs, *, batch, **kwargs):
        if batch == 2:
            raise RuntimeError("CUDA out of memory [simulated]")
        return original(model, data, size, configs, batch=batch, **kwargs)

    monkeypatch.setattr(bench, "run_model", failing_on_batch_2)
    argv = ["--quick", "--size", "tiny", "--batch", "2", "--batch", "1", "--new-tokens", "2", "--repeats", "1"]
    code, text = run([*argv, "--device", "cpu", "--out", str(tmp_path)])
    assert code == 1, text
    result = json.loads((tmp_path / "bench-quick-cpu.json").read_text())
    failed, measured = result["entries"]
    assert failed["status"] == "failed" and failed["reason"] == "failed: RuntimeError: CUDA out of memory [simulated]"
    assert set(failed["rows"]) == set(QUICK_LABELS) and measured["status"] == "measured"
    assert "1 of 2 entries measured, 1 failed" in text and "[simulated]" in text
