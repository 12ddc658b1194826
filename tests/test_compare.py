"""`tokenprune compare`: end to end on a tiny model, numbers checked against an independent computation,
resuming, interrupts, failing strategies, task metrics, VTW calibration and bad inputs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console

import tokenprune as tp
from tokenprune import cli
from tokenprune import data as datasets
from tokenprune import timing as timing_module
from tokenprune.calibration import find_k
from tokenprune.compare import Comparison
from tokenprune.config import load_config
from tokenprune.metrics import agreement, first_token_kl, yes_no_scores
from tokenprune.models import load_model

EXAMPLES = Path(__file__).parent.parent / "examples"
TINY = {"layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 512, "grid": 6}
MODEL = {"source": "tiny", "tiny": TINY, "device": "cpu", "dtype": "float32"}
NEW_TOKENS = 3
SAMPLES = 2

FASTV0 = {"name": "fastv", "label": "fastv-0", "ratio": 0.0}
ST3 = {"name": "st3", "start_layer": 1, "stride": 1, "ratio": 0.4, "final_fraction": 0.5}
COMPOSED = {
    "label": "composed",
    "compose": {"score": "text_mean_attention", "schedule": {"name": "single_cut", "layer": 2, "ratio": 0.75}},
}
VTW = {"name": "vtw", "k": 2}
TIMING = {"samples": 1, "repeats": 1, "warmup": 0}


def write_config(folder: Path, strategies: list[dict], name: str = "compare.yaml", **sections) -> Path:
    config = {
        "model": MODEL,
        "data": {"format": "synthetic", "limit": SAMPLES},
        "generation": {"max_new_tokens": NEW_TOKENS},
        "strategies": strategies,
        "metrics": ["fidelity", "accuracy"],
        "pictures": {"samples": 0},
    }
    config.update(sections)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(config: Path, out: Path | None, *extra: str) -> tuple[int, str]:
    text = io.StringIO()
    argv = ["compare", str(config)] + (["--out", str(out)] if out is not None else []) + list(extra)
    code = cli.main(argv, console=Console(file=text, width=250, color_system=None))
    return code, text.getvalue()


def rows_of(out: Path) -> dict[str, dict]:
    results = json.loads((out / "results.json").read_text())
    return {row["label"]: row for row in results["rows"]}


def cell_times(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "cells").rglob("*")) if p.is_file()}


@pytest.fixture
def spy(monkeypatch):
    """Counts the work compare does: greedy generations (by method label), timing runs, calibrations.

    `spy.fail = {label: (call number, exception)}` raises that exception in that method's n-th generation.
    """

    class Spy:
        generate: list[str]
        timing: list[str]
        find_k: int
        fail: dict

    spy = Spy()
    spy.generate, spy.timing, spy.find_k, spy.fail = [], [], 0, {}
    quality, generate = Comparison._quality, Comparison._generate
    measure, find_k = timing_module.measure, tp.find_k

    def spy_quality(self, method):
        self._spy_label = method.label
        return quality(self, method)

    def spy_generate(self, inputs, **extra):
        label = self._spy_label
        spy.generate.append(label)
        if label in spy.fail and spy.generate.count(label) == spy.fail[label][0]:
            raise spy.fail[label][1]
        return generate(self, inputs, **extra)

    def spy_measure(methods, *args, **kwargs):
        spy.timing.append(methods[1][0])
        return measure(methods, *args, **kwargs)

    def spy_find_k(*args, **kwargs):
        spy.find_k += 1
        return find_k(*args, **kwargs)

    monkeypatch.setattr(Comparison, "_quality", spy_quality)
    monkeypatch.setattr(Comparison, "_generate", spy_generate)
    monkeypatch.setattr(timing_module, "measure", spy_measure)
    monkeypatch.setattr(tp, "find_k", spy_find_k)
    return spy


def independent(strategy: tp.Strategy, samples: int = SAMPLES) -> dict:
    """What compare should report for `strategy`, computed here: the same model and samples, tp.prune per sample."""
    loaded = load_model("tiny", tiny=TINY, device="cpu", dtype="float32")
    flops = {"prefill": 0, "baseline_prefill": 0, "decode": 0, "baseline_decode": 0}
    kls, agreements, equivalent = [], [], []
    for sample in datasets.load_samples("synthetic", limit=samples):
        data = loaded.inputs(sample.images, sample.prompt)
        length = data["input_ids"].shape[1]
        settings = dict(max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True)
        with torch.inference_mode():
            base = loaded.model.generate(**data, **settings)
            with tp.prune(loaded.model, strategy) as session:
                pruned = loaded.model.generate(**data, **settings)
        counted = session.report.flops()
        equivalent.append(session.report.equivalent_visual_tokens[0])
        for key in flops:
            flops[key] += counted[key]
        kls.append(first_token_kl(pruned.logits[0][0], base.logits[0][0]))
        agreements.append(agreement(pruned.sequences[0, length:].tolist(), base.sequences[0, length:].tolist()))
    return {
        "prefill_flops_ratio": flops["prefill"] / flops["baseline_prefill"],
        "total_flops_ratio": (flops["prefill"] + flops["decode"])
        / (flops["baseline_prefill"] + flops["baseline_decode"]),
        "first_token_kl": sum(kls) / len(kls),
        "agreement": sum(agreements) / len(agreements),
        "equivalent_visual_tokens": sum(equivalent) / len(equivalent),
    }


# ------------------------------------------------------------------------------------------- end to end
def test_compare_end_to_end(tmp_path, spy):
    config = write_config(
        tmp_path,
        [FASTV0, ST3, COMPOSED],
        timing=TIMING,
        pictures={"samples": 1},
        metrics=["fidelity", "accuracy", "timing"],
    )
    out = tmp_path / "out"
    code, text = run(config, out)
    assert code == 0, text
    st3_label = "st3(start_layer=1, stride=1, ratio=0.4, final_fraction=0.5)"
    labels = ["baseline", "fastv-0", st3_label, "composed"]
    assert spy.generate == [label for label in labels for _ in range(SAMPLES)]
    assert spy.timing == labels[1:]

    for name in ("results.json", "results.csv", "results.md"):
        assert (out / name).is_file()
    for name in ("tradeoff.png", "visual_tokens_per_layer.png", "visual_kv_per_step.png", "pictures/kept_tokens_0.png"):
        with Image.open(out / name) as image:
            image.load()
            assert image.format == "PNG" and image.width > 100 and image.height > 100, name
    assert not (out / "pictures" / "kept_tokens_1.png").exists()

    results = json.loads((out / "results.json").read_text())
    rows = {row["label"]: row for row in results["rows"]}
    assert [row["label"] for row in results["rows"]] == labels
    assert results["model"] == {
        "description": "tiny random LLaVA-1.5 (4 layers, hidden 64)",
        "source": "tiny",
        "layers": 4,
    }
    assert results["data"]["samples"] == SAMPLES and results["data"]["task"] == "open"
    assert set(results["plots"]) == {"tradeoff", "visual_tokens_per_layer", "visual_kv_per_step"}
    assert results["pictures"] == ["pictures/kept_tokens_0.png"]
    for row in rows.values():
        assert row["samples"] == SAMPLES and "error" not in row
        assert set(row["task"]) >= {"accuracy", "contains", "n"}
        assert row["ttft_ratio"] > 0 and row["decode_ratio"] > 0 and row["end_to_end_ratio"] > 0

    base = rows["baseline"]
    assert base["strategy"] is None
    for key in (
        "prefill_flops_ratio",
        "total_flops_ratio",
        "visual_kv_ratio",
        "total_kv_ratio",
        "ttft_ratio",
        "decode_ratio",
        "agreement",
    ):
        assert base[key] == 1.0, key
    assert base["first_token_kl"] == 0.0
    visual = TINY["grid"] ** 2  # N of every sample: the unpruned model's equivalent visual tokens
    assert base["equivalent_visual_tokens"] == visual

    # removing nothing costs exactly what the baseline costs and gives exactly its outputs
    zero = rows["fastv-0"]
    assert zero["strategy"] == tp.resolve_strategy("fastv", ratio=0.0).describe()
    for key in ("prefill_flops_ratio", "total_flops_ratio", "visual_kv_ratio", "total_kv_ratio", "agreement"):
        assert zero[key] == 1.0, key
    assert zero["first_token_kl"] == 0.0
    assert zero["equivalent_visual_tokens"] == visual
    assert zero["task"] == base["task"]

    # the pruning strategies: the same numbers as computed here, independently
    for label, strategy in [
        (st3_label, tp.resolve_strategy("st3", start_layer=1, stride=1, ratio=0.4, final_fraction=0.5)),
        ("composed", tp.compose(**COMPOSED["compose"])),
    ]:
        row, expected = rows[label], independent(strategy)
        assert row["strategy"] == strategy.describe()
        assert row["prefill_flops_ratio"] == pytest.approx(expected["prefill_flops_ratio"], rel=0, abs=1e-9)
        assert row["total_flops_ratio"] == pytest.approx(expected["total_flops_ratio"], rel=0, abs=1e-9)
        assert row["first_token_kl"] == pytest.approx(expected["first_token_kl"], rel=0, abs=1e-6)
        assert row["agreement"] == pytest.approx(expected["agreement"], abs=1e-12)
        assert row["equivalent_visual_tokens"] == pytest.approx(expected["equivalent_visual_tokens"], rel=1e-12)
        assert row["equivalent_visual_tokens"] < visual
        assert row["prefill_flops_ratio"] < 0.95 and row["visual_kv_ratio"] < 1.0
        assert row["first_token_kl"] > 0

    # the tables say the same
    with open(out / "results.csv", newline="") as f:
        table = {r["label"]: r for r in csv.DictReader(f)}
    assert list(table) == labels
    for label in ("baseline", "fastv-0"):
        assert table[label]["prefill_flops_pct"] == table[label]["total_flops_pct"] == "100.0"
        assert table[label]["agreement_pct"] == "100.0" and float(table[label]["first_token_kl"]) == 0.0
    assert table[st3_label]["prefill_flops_pct"] == f"{100 * rows[st3_label]['prefill_flops_ratio']:.1f}"
    assert table["baseline"]["equivalent_visual_tokens"] == f"{visual:.1f}"
    assert table[st3_label]["equivalent_visual_tokens"] == f"{rows[st3_label]['equivalent_visual_tokens']:.1f}"
    assert table["baseline"]["samples"] == str(SAMPLES) and table["baseline"]["error"] == ""
    markdown = (out / "results.md").read_text()
    for label in labels:
        assert f"| {label} |" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| Strategy"))
    assert "| Total FLOPs % | Equiv. visual tokens |" in header
    assert f"| {rows['composed']['equivalent_visual_tokens']:.1f} |" in markdown
    assert "![tradeoff](tradeoff.png)" in markdown and "pictures/kept_tokens_0.png" in markdown
    assert "tiny random LLaVA-1.5" in text and "baseline" in text and "results.md" in text


# ------------------------------------------------------------------------------------------- resuming
def test_rerun_resumes_adds_and_forces(tmp_path, spy):
    out = tmp_path / "out"
    config = write_config(tmp_path, [ST3, VTW], timing=TIMING, metrics=["fidelity", "accuracy", "timing"])
    assert run(config, out)[0] == 0
    assert len(spy.generate) == 3 * SAMPLES and len(spy.timing) == 2
    first, times = rows_of(out), cell_times(out)

    # the same config again: nothing is recomputed, the rows are the same
    spy.generate.clear()
    spy.timing.clear()
    assert run(config, out)[0] == 0
    assert spy.generate == [] and spy.timing == []
    assert cell_times(out) == times
    assert rows_of(out) == first

    # one more strategy: only it runs
    config = write_config(tmp_path, [ST3, VTW, COMPOSED], timing=TIMING, metrics=["fidelity", "accuracy", "timing"])
    assert run(config, out)[0] == 0
    assert spy.generate == ["composed"] * SAMPLES and spy.timing == ["composed"]
    added = rows_of(out)
    assert list(added) == list(first) + ["composed"]
    assert {label: added[label] for label in first} == first
    assert all(cell_times(out)[name] == time for name, time in times.items())

    # --force: everything again
    spy.generate.clear()
    spy.timing.clear()
    assert run(config, out, "--force")[0] == 0
    assert len(spy.generate) == 4 * SAMPLES and len(spy.timing) == 3
    forced = rows_of(out)
    for label, row in forced.items():  # deterministic: the same numbers, timing aside
        for key in (
            "prefill_flops_ratio",
            "total_flops_ratio",
            "visual_kv_ratio",
            "first_token_kl",
            "agreement",
            "task",
        ):
            assert row[key] == added[label][key], (label, key)
    rewritten = cell_times(out)
    assert set(times) <= set(rewritten) and all(rewritten[name] != time for name, time in times.items())


def test_changed_settings_do_not_reuse_cells(tmp_path, spy):
    out = tmp_path / "out"
    assert run(write_config(tmp_path, [VTW]), out)[0] == 0
    spy.generate.clear()
    assert run(write_config(tmp_path, [{"name": "vtw", "k": 3}]), out)[0] == 0
    assert spy.generate == ["vtw(k=3)"] * SAMPLES  # the baseline is reused, the changed strategy is not
    spy.generate.clear()
    assert run(write_config(tmp_path, [{"name": "vtw", "k": 3}], generation={"max_new_tokens": 2}), out)[0] == 0
    assert spy.generate == ["baseline"] * SAMPLES + ["vtw(k=3)"] * SAMPLES


def test_interrupted_run_keeps_finished_cells_and_resumes(tmp_path, spy, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path, [ST3, VTW, COMPOSED])
    st3_label = "st3(start_layer=1, stride=1, ratio=0.4, final_fraction=0.5)"
    spy.fail = {"vtw(k=2)": (2, KeyboardInterrupt())}  # the 2nd strategy, in its 2nd sample
    code, _ = run(config, out)
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert spy.generate == ["baseline"] * SAMPLES + [st3_label] * SAMPLES + ["vtw(k=2)"] * 2
    cells = {p.name for p in (out / "cells").iterdir()}
    assert any(name.startswith("baseline-") and name.endswith(".jsonl") for name in cells)
    assert any(name.startswith("st3_") and name.endswith(".jsonl") for name in cells)
    markdown = (out / "results.md").read_text()
    assert "| baseline |" in markdown and f"| {st3_label} |" in markdown and "composed" not in markdown
    partial = rows_of(out)
    assert partial["baseline"]["samples"] == partial[st3_label]["samples"] == SAMPLES
    assert partial["vtw(k=2)"]["samples"] == 1  # its first sample finished and was kept

    spy.generate.clear()
    spy.fail = {}
    assert run(config, out)[0] == 0
    assert spy.generate == ["vtw(k=2)"] + ["composed"] * SAMPLES
    rows = rows_of(out)
    assert list(rows) == ["baseline", st3_label, "vtw(k=2)", "composed"]
    assert all(row["samples"] == SAMPLES for row in rows.values())
    assert rows[st3_label] == partial[st3_label]
    expected = independent(tp.resolve_strategy("vtw", k=2))
    assert rows["vtw(k=2)"]["first_token_kl"] == pytest.approx(expected["first_token_kl"], rel=0, abs=1e-6)
    assert rows["vtw(k=2)"]["prefill_flops_ratio"] == pytest.approx(expected["prefill_flops_ratio"], rel=0, abs=1e-9)


def test_a_failing_strategy_gets_an_error_and_the_others_finish(tmp_path, spy):
    out = tmp_path / "out"
    config = write_config(tmp_path, [ST3, VTW, COMPOSED])
    spy.fail = {"vtw(k=2)": (1, tp.UnsupportedInputError("inputs this strategy cannot serve"))}
    code, text = run(config, out)
    assert code == 1
    assert "strategy 'vtw(k=2)' failed" in text and "inputs this strategy cannot serve" in text
    rows = rows_of(out)
    assert list(rows) == [
        "baseline",
        "st3(start_layer=1, stride=1, ratio=0.4, final_fraction=0.5)",
        "vtw(k=2)",
        "composed",
    ]
    assert rows["vtw(k=2)"]["error"] == "inputs this strategy cannot serve" and rows["vtw(k=2)"]["samples"] == 0
    for label, row in rows.items():
        if label != "vtw(k=2)":
            assert "error" not in row and row["samples"] == SAMPLES and row["prefill_flops_ratio"] is not None
    assert "vtw(k=2) failed: inputs this strategy cannot serve" in (out / "results.md").read_text()
    with open(out / "results.csv", newline="") as f:
        table = {r["label"]: r for r in csv.DictReader(f)}
    assert table["vtw(k=2)"]["error"] == "inputs this strategy cannot serve" and table["composed"]["error"] == ""

    # the pruning session of the failed strategy was closed: the next strategy ran on a clean model
    expected = independent(tp.compose(**COMPOSED["compose"]))
    assert rows["composed"]["first_token_kl"] == pytest.approx(expected["first_token_kl"], rel=0, abs=1e-6)

    # a re-run retries only the failed strategy
    spy.generate.clear()
    spy.fail = {}
    assert run(config, out)[0] == 0
    assert spy.generate == ["vtw(k=2)"] * SAMPLES


# ------------------------------------------------------------------------------------------- data, calibration
@pytest.mark.parametrize(
    "format, keys", [("jsonl", {"accuracy", "contains"}), ("pope", {"accuracy", "precision", "recall", "f1"})]
)
def test_task_metrics_on_data_with_answers(tmp_path, spy, monkeypatch, format, keys):
    folder = tmp_path / "configs"
    path = datasets.write_synthetic(format, folder / "data", n=4, seed=1)
    relative = str(path.relative_to(folder))
    config = write_config(folder, [VTW], data={"format": format, "path": relative, "limit": SAMPLES}, output="results")
    monkeypatch.chdir(tmp_path)  # the data path and the output folder are relative to the config file
    code, text = run(config, None)
    assert code == 0, text
    out = folder / "results"
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["task"] == {"jsonl": "open", "pope": "yes_no"}[format]
    assert results["data"]["path"] == str(path.resolve())
    samples = datasets.load_samples(format, str(path), limit=SAMPLES)
    assert all(s.answer is not None for s in samples)
    cells = out / "cells"
    for row in results["rows"]:
        assert keys <= set(row["task"]) and row["task"]["n"] == SAMPLES
        cell = next(cells.glob(f"{'baseline' if row['label'] == 'baseline' else 'vtw'}*.jsonl"))
        predictions = [json.loads(line)["prediction"] for line in cell.read_text().splitlines()]
        assert row["task"] == datasets.score_predictions(datasets.task_of(format), predictions, samples)
        if format == "pope":
            assert row["task"] == yes_no_scores(predictions, [s.answer for s in samples])
    header = next(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| Strategy |"))
    numeric = [
        key for key in keys if isinstance(results["rows"][0]["task"][key], float)
    ]  # None (no "yes") has no column
    assert "accuracy" in numeric and all(f" {key} |" in header for key in numeric), header


def test_vtw_k_auto_is_calibrated_with_find_k(tmp_path, spy):
    out = tmp_path / "out"
    eta, calibration_samples = 0.05, 2
    config = write_config(
        tmp_path,
        [{"name": "vtw", "label": "vtw-auto", "k": "auto", "eta": eta, "calibration_samples": calibration_samples}],
        data={"format": "synthetic", "limit": 3},
    )
    assert run(config, out)[0] == 0
    assert spy.find_k == 1
    row = rows_of(out)["vtw-auto"]
    calibration = row["calibration"]

    loaded = load_model("tiny", tiny=TINY, device="cpu", dtype="float32")
    chosen = datasets.load_samples("synthetic", limit=3)[:calibration_samples]
    direct = find_k(loaded.model, [loaded.inputs(s.images, s.prompt) for s in chosen], eta)
    assert 0 < direct.k < 4  # eta picks a k inside the curve, so an off-by-one in the samples or eta would show
    assert calibration["k"] == direct.k and calibration["eta"] == eta and calibration["samples"] == calibration_samples
    assert [point["k"] for point in calibration["curve"]] == list(direct.curve) == list(range(5))
    assert [point["kl"] for point in calibration["curve"]] == pytest.approx(
        list(direct.curve.values()), rel=0, abs=1e-6
    )
    assert row["strategy"] == tp.resolve_strategy("vtw", k=direct.k).describe()
    markdown = (out / "results.md").read_text()
    assert f"vtw-auto: k={direct.k} calibrated with eta {eta} on {calibration_samples} samples" in markdown

    # resumed: the calibration is a cell too
    assert run(config, out)[0] == 0
    assert spy.find_k == 1


# ------------------------------------------------------------------------------------------- bad inputs
def test_missing_data_file_exits_2_naming_it(tmp_path, spy, capsys):
    config = write_config(tmp_path, [VTW], data={"format": "jsonl", "path": "missing/questions.jsonl"})
    code, _ = run(config, tmp_path / "out")
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing" / "questions.jsonl") in err and "not found" in err and "Traceback" not in err
    assert spy.generate == []


@pytest.mark.parametrize(
    "strategy, label",
    [({"name": "fastv", "k": 10}, "fastv(k=10)"), ({"name": "vtw", "label": "late-vtw", "k": 5}, "late-vtw")],
)
def test_a_strategy_deeper_than_the_model_exits_2_before_generating(tmp_path, spy, capsys, strategy, label):
    out = tmp_path / "out"
    code, _ = run(write_config(tmp_path, [VTW, strategy]), out)
    assert code == 2
    err = capsys.readouterr().err
    assert f"strategy '{label}'" in err and "4 decoder layers" in err and "Traceback" not in err
    assert spy.generate == [] and not (out / "cells").exists()


def test_config_errors_exit_2(tmp_path, capsys):
    config = write_config(tmp_path, [{"name": "st3", "ratio": 2}])
    assert run(config, tmp_path / "out")[0] == 2
    err = capsys.readouterr().err
    assert str(config) in err and "strategies[0].ratio" in err
    assert run(tmp_path / "none.yaml", tmp_path / "out")[0] == 2
    assert "config file not found" in capsys.readouterr().err


def test_example_config_parses():
    config = load_config(EXAMPLES / "compare-tiny.yaml")
    assert len(config.strategies) >= 3 and "timing" in config.metrics


# ------------------------------------------------------------------------------------------- pictures
def test_pictures_are_kept_on_rerun_and_redrawn_when_a_strategy_is_added(tmp_path):
    out = tmp_path / "out"
    picture = out / "pictures" / "kept_tokens_0.png"
    config = write_config(tmp_path, [ST3], pictures={"samples": 1})
    assert run(config, out)[0] == 0
    before, drawn_at = picture.read_bytes(), picture.stat().st_mtime_ns
    assert run(config, out)[0] == 0
    assert picture.stat().st_mtime_ns == drawn_at  # nothing changed: not redrawn
    assert run(write_config(tmp_path, [ST3, COMPOSED], pictures={"samples": 1}), out)[0] == 0
    assert picture.read_bytes() != before  # it now shows the composed strategy's kept tokens too
    with Image.open(picture) as image:
        assert (
            image.height > Image.open(io.BytesIO(before)).height or image.width > Image.open(io.BytesIO(before)).width
        )


def test_force_redraws_pictures(tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path, [ST3], pictures={"samples": 1})
    assert run(config, out)[0] == 0
    picture = out / "pictures" / "kept_tokens_0.png"
    Image.new("RGB", (1, 1)).save(picture)  # stands for a picture left by another config
    assert run(config, out, "--force")[0] == 0
    with Image.open(picture) as image:
        assert image.size != (1, 1)


def test_force_with_a_bad_config_keeps_the_finished_cells(tmp_path, spy):
    out = tmp_path / "out"
    assert run(write_config(tmp_path, [VTW]), out)[0] == 0
    cells = sorted(p.name for p in (out / "cells").iterdir())
    too_deep = write_config(tmp_path, [{"name": "fastv", "k": 10}])
    assert run(too_deep, out, "--force")[0] == 2
    assert sorted(p.name for p in (out / "cells").iterdir()) == cells


def test_a_line_cut_short_by_a_crash_is_redone_once(tmp_path, spy):
    out = tmp_path / "out"
    config = write_config(tmp_path, [VTW])
    assert run(config, out)[0] == 0
    first = rows_of(out)
    cell = next((out / "cells").glob("vtw*.jsonl"))
    text = cell.read_text()
    cell.write_text(text[: len(text) - 20])  # the last record half written, no newline: a crash mid-write
    spy.generate.clear()
    assert run(config, out)[0] == 0
    assert spy.generate == ["vtw(k=2)"]  # only the cut sample
    assert rows_of(out)["vtw(k=2)"] == first["vtw(k=2)"]
    spy.generate.clear()
    assert run(config, out)[0] == 0
    assert spy.generate == []  # and it was saved: the next run recomputes nothing
    assert rows_of(out)["vtw(k=2)"] == first["vtw(k=2)"]
