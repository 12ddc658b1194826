"""The `tokenprune` model through lmms-eval's real command line (`python -m lmms_eval`), offline, on saved tiny
models of two families (LLaVA-1.5 and Qwen2.5-VL) and a local task (tests/lmms_task.py).

The reference is computed here, in this process, without lmms-eval: each document's prompt and image through
the model's processor (batch 1), `model.generate` unpruned and inside `tokenprune.prune`, and the reports of
those runs. The task's answers are made from these reference texts (some right, one wrong), so the
exact-match metric lmms-eval reports is known in advance for the baseline and for ST3.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lmms_task import TASK, write_task
from PIL import Image

import tokenprune as tp
from tokenprune.lmms_eval_plugin import record
from tokenprune.metrics import agreement
from tokenprune.models import load_model, save_tiny, tiny_spec

NEW_TOKENS = 6
FAMILIES = ("llava", "qwen2_5_vl")
LAYERS = 4
SAMPLES = 4


def _env(home: Path) -> dict:
    env = dict(
        os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Setup:
    """A saved tiny model of `family`, its in-process reference outputs, and the task built from them."""

    def __init__(self, root: Path, family: str) -> None:
        self.root, self.family = root, family
        self.model_dir = save_tiny(root / "model", tiny_spec(family, {"layers": LAYERS}))
        task = write_task(root / "task", SAMPLES, NEW_TOKENS)
        docs = [json.loads(line) for line in (task / "docs.jsonl").read_text().splitlines()]
        loaded = load_model(str(self.model_dir), device="cpu", dtype="float32")
        self.base, self.st3, self.reports, self.tokens = [], [], [], {"base": [], "st3": []}
        pad = loaded.processor.tokenizer.pad_token_id
        for doc in docs:
            images = [Image.open(p).convert("RGB") for p in doc["images"]]
            inputs = loaded.inputs(images, doc["question"])
            length = inputs["input_ids"].shape[1]
            settings = dict(max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1)
            with torch.inference_mode():
                plain = loaded.model.generate(**inputs, **settings)[0, length:]
                with tp.prune(loaded.model, "st3") as run:
                    pruned = loaded.model.generate(**inputs, **settings)[0, length:]
            self.base.append(loaded.decode(plain))
            self.st3.append(loaded.decode(pruned))
            for name, row in (("base", plain.tolist()), ("st3", pruned.tolist())):
                while row and row[-1] == pad:  # as the model counts generated tokens: padding after the end is not
                    row.pop()
                self.tokens[name].append(row)
            self.reports.append(run.report)
        # answers: the baseline's text for docs 0 and 1, ST3's for doc 2, a wrong one for doc 3
        self.answers = [self.base[0], self.base[1], self.st3[2], "no such answer"]
        for doc, answer in zip(docs, self.answers, strict=True):
            doc["answer"] = answer
        (task / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        self.task = task

    def expected_exact_match(self, texts: list[str]) -> float:
        return sum(t.strip().lower() == a.strip().lower() for t, a in zip(texts, self.answers, strict=True)) / SAMPLES

    def run(self, name: str, model_args: str, *extra: str, processes: int = 1, task: Path | None = None) -> "Run":
        out = self.root / name
        command = [sys.executable, "-m", "lmms_eval"]
        if processes > 1:
            # `accelerate launch` itself imports timm, which fails without torchvision: its module runs the same
            # launcher; --multi_gpu is its torchrun launcher, which also starts CPU processes (gloo)
            command = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--multi_gpu",
                "--num_processes",
                str(processes),
            ]
            command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
            command += ["--main_process_port", str(_free_port()), "-m", "lmms_eval"]
        command += ["--model", "tokenprune", "--model_args", f"pretrained={self.model_dir},{model_args}"]
        command += ["--tasks", TASK, "--include_path", str(task or self.task), "--device", "cpu"]
        command += ["--output_path", str(out), "--log_samples", *extra]
        done = subprocess.run(command, capture_output=True, text=True, env=_env(self.root / "hf"), timeout=600)
        return Run(out, done.stdout + done.stderr)


class Run:
    def __init__(self, out: Path, log: str) -> None:
        self.out, self.log = out, log
        self.results_files = glob.glob(str(out / "*" / "*_results.json"))

    @property
    def results(self) -> dict:
        assert len(self.results_files) == 1, f"no results file; lmms-eval said:\n{self.log[-3000:]}"
        return json.loads(Path(self.results_files[0]).read_text())

    @property
    def samples(self) -> dict[int, dict]:
        (path,) = glob.glob(str(self.out / "*" / f"*_samples_{TASK}.jsonl"))
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        return {row["doc_id"]: row for row in rows}

    def texts(self) -> list[str]:
        samples = self.samples
        return [samples[i]["filtered_resps"] for i in range(SAMPLES)]

    def records(self) -> list[dict]:
        samples = self.samples
        return [samples[i]["token_counts"][0]["tokenprune"] for i in range(SAMPLES)]

    def summary(self) -> dict:
        prefix = "avg_" + record.PREFIX
        throughput = self.results["throughput"]
        return {k.removeprefix(prefix): v for k, v in throughput.items() if k.startswith(prefix)}

    def metric(self) -> float:
        return self.results["results"][TASK]["exact_match,none"]


def _without_times(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("seconds", "baseline_seconds", "process")}


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request, tmp_path_factory) -> Setup:
    return Setup(tmp_path_factory.mktemp(f"lmms-{request.param}"), request.param)


@pytest.fixture(scope="module")
def st3_run(setup) -> Run:
    return setup.run("st3", "strategy=st3")


@pytest.fixture(scope="module")
def baseline_run(setup) -> Run:
    return setup.run("none", "strategy=none", "--force_simple")


def test_baseline_run_reproduces_the_unpruned_model(setup, baseline_run):
    run = baseline_run
    assert run.texts() == setup.base
    assert run.metric() == setup.expected_exact_match(setup.base)
    assert run.results["config"]["model_backend"].endswith("TokenpruneModel (simple)")
    for rec, report in zip(run.records(), setup.reports, strict=True):
        assert rec["strategy"] == {"name": "none"}
        assert rec["visual_tokens"] == report.visual_tokens[0]  # as a pruned run's report counts them
        assert rec["visual_tokens_per_layer"] == [report.visual_tokens[0]] * LAYERS
        assert rec["prefill_flops_ratio"] == rec["visual_kv_ratio"] == 1.0
    summary = run.summary()
    assert summary["samples"] == SAMPLES
    assert summary["prefill_flops_ratio"] == summary["total_kv_ratio"] == 1.0


def test_st3_run_matches_tokenprune_in_process(setup, st3_run):
    run = st3_run
    assert run.texts() == setup.st3
    assert run.metric() == setup.expected_exact_match(setup.st3)
    assert run.results["config"]["model_backend"].endswith("TokenpruneChat (chat)")  # lmms-eval's default
    records = run.records()
    for rec, report, tokens in zip(records, setup.reports, setup.tokens["st3"], strict=True):
        expected = report.sample_summary(0)
        assert {k: rec[k] for k in expected} == expected
        assert rec["strategy"] == tp.resolve_strategy("st3").describe()
        assert rec["new_tokens"] == len(tokens)
        assert 0 < rec["seconds"]["prefill"] < rec["seconds"]["total"]
    summary = run.summary()
    flops = {k: sum(r.flops()[k] for r in setup.reports) for k in ("prefill", "baseline_prefill")}
    assert summary["prefill_flops_ratio"] == pytest.approx(flops["prefill"] / flops["baseline_prefill"], rel=1e-12)
    assert summary["prefill_flops_ratio"] < 1
    for layer in range(LAYERS):
        per_layer = [r.prefill_visual_tokens[layer][0] for r in setup.reports]
        assert summary[f"visual_tokens_layer_{layer:02d}"] == pytest.approx(sum(per_layer) / SAMPLES)
    assert summary["visual_tokens_layer_00"] > summary[f"visual_tokens_layer_{LAYERS - 1:02d}"]


@pytest.mark.slow  # a further lmms-eval run (20 s each); the default run keeps one per family
def test_two_processes_equal_one(setup, st3_run):
    parallel = setup.run("st3-dp", "strategy=st3", processes=2)
    assert {r["process"] for r in parallel.records()} == {0, 1}  # each process generated its shard
    assert {r["process"] for r in st3_run.records()} == {0}
    assert parallel.texts() == st3_run.texts()
    assert [_without_times(r) for r in parallel.records()] == [_without_times(r) for r in st3_run.records()]
    one, two = st3_run.summary(), parallel.summary()
    timed = {k for k in one if k.endswith("_seconds")}
    assert {k: v for k, v in two.items() if k not in timed} == {k: v for k, v in one.items() if k not in timed}
    assert parallel.metric() == st3_run.metric()


@pytest.mark.slow
def test_batches_equal_samples_one_by_one(setup, st3_run):
    batched = setup.run("st3-b2", "strategy=st3,paired_baseline=true", "--batch_size", "2", "--force_simple")
    assert batched.texts() == st3_run.texts()
    pairs = zip(batched.records(), st3_run.records(), setup.tokens["st3"], setup.tokens["base"], strict=True)
    for rec, single, st3_tokens, base_tokens in pairs:
        for key in ("visual_tokens", "visual_tokens_per_layer", "kv_entries", "prompt_tokens", "new_tokens"):
            assert rec[key] == single[key]
        assert rec["agreement"] == agreement(st3_tokens, base_tokens)
        assert rec["baseline_seconds"]["total"] > 0
    summary = batched.summary()
    assert summary["agreement"] == pytest.approx(sum(r["agreement"] for r in batched.records()) / SAMPLES)
    for key in ("time_ratio", "ttft_ratio", "decode_ratio"):
        assert summary[key] > 0


@pytest.mark.slow
def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path_factory):
    """lmms-eval prints the error and exits 0 (its command line does so for any error), writing no results."""
    setup_root = tmp_path_factory.mktemp("lmms-bad")
    model = save_tiny(setup_root / "model", tiny_spec("llava", {"layers": LAYERS}))
    task = write_task(setup_root / "task", 2, NEW_TOKENS)
    no_image = write_task(setup_root / "no-image", 2, NEW_TOKENS, images_per_doc=[1, 0])
    for args, task_dir, message in (
        ("strategy=st3,bogus=2", task, "bogus: unknown key (parameters of 'st3'"),
        ("strategy=nope", task, "unknown strategy 'nope'"),
        ("strategy=none,ratio=0.5", task, "strategy 'none' (the unpruned baseline) takes no parameters; got ratio"),
        ("strategy=st3,max_new_tokens=0", task, "max_new_tokens must be a positive integer, not 0"),
        ("strategy=st3", no_image, f"document 1 of task '{TASK}' gives no image"),
    ):
        out = setup_root / "out"
        command = [sys.executable, "-m", "lmms_eval", "--model", "tokenprune"]
        command += ["--model_args", f"pretrained={model},{args}", "--tasks", TASK, "--include_path", str(task_dir)]
        command += ["--device", "cpu", "--output_path", str(out), "--log_samples"]
        done = subprocess.run(command, capture_output=True, text=True, env=_env(setup_root / "hf"), timeout=300)
        assert message in done.stdout + done.stderr
        assert not out.exists()  # nothing written as if it had succeeded


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("lmms-llava"), tiny_spec("llava", {"layers": LAYERS}))


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ({"strategy": "st3", "bogus": 2}, tp.InvalidParameterError, "bogus: unknown key"),
        ({"strategy": "st3", "ratio": 2.0}, tp.InvalidParameterError, "ratio"),
        ({"strategy": "nope"}, tp.UnknownStrategyError, "unknown strategy 'nope'"),
        ({"strategy": "none", "k": 2}, tp.InvalidParameterError, "takes no parameters; got k"),
        ({"strategy": "vtw", "k": 99}, tp.TokenpruneError, "99"),
        ({"batch_size": 0}, tp.InvalidParameterError, "batch_size must be a positive integer, not 0"),
        ({"batch_size": "auto"}, tp.InvalidParameterError, "batch_size must be a positive integer, not 'auto'"),
        ({"paired_baseline": "yes"}, tp.InvalidParameterError, "paired_baseline must be true or false"),
        ({"adapter_options": "[1]"}, tp.InvalidParameterError, "adapter_options must be a JSON object"),
        ({"adapter_options": '{"nope": 1}'}, tp.InvalidParameterError, "nope"),
        ({"dtype": "float8"}, tp.ConfigError, "bad dtype 'float8'"),
    ],
)
def test_bad_model_args_are_refused_before_any_request(llava_dir, args, error, message):
    from tokenprune.lmms_eval_plugin.model import TokenpruneModel

    with pytest.raises(error, match=re.escape(message)):
        TokenpruneModel(pretrained=str(llava_dir), device="cpu", **args)


def test_a_directory_of_an_unsupported_family_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenprune.lmms_eval_plugin.model import TokenpruneModel

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(tp.UnsupportedModelError, match="holds a model of type 'llama' .*tokenprune serves Llava"):
        TokenpruneModel(pretrained=str(tmp_path), strategy="st3", device="cpu")


def test_compare_puts_lmms_eval_runs_side_by_side(setup, baseline_run, st3_run, tmp_path):
    from tokenprune.cli import main
    from tokenprune.lmms_results import read_run

    assert main(["compare", "--lmms-eval", str(baseline_run.out), str(st3_run.out), "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "results.md").read_text().splitlines()
    assert lines[0].startswith(f"| Run | {TASK} exact_match | Prefill FLOPs %")
    base, st3 = (line.split(" | ") for line in lines[2:])
    assert base[0] == "| strategy=none" and st3[0] == "| strategy=st3"
    assert float(base[1]) == baseline_run.metric() and float(st3[1]) == st3_run.metric()
    assert base[2] == "100.0" and float(st3[2]) == round(100 * st3_run.summary()["prefill_flops_ratio"], 1)
    with pytest.raises(tp.DataError, match="no lmms-eval results file"):
        read_run(tmp_path / "nothing")
    assert main(["compare", "--lmms-eval", str(tmp_path / "nothing")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "qwen3_vl"])
def test_the_other_families_through_lmms_eval(family, tmp_path):
    """LLaVA-NeXT (crops per image differ with the aspect ratio, so a batch pads them), Qwen2-VL, Qwen3-VL: ST3
    through lmms-eval equals tokenprune in process, and a batch of 4 equals the documents one by one."""
    setup = Setup(tmp_path, family)
    single = setup.run("st3", "strategy=st3")
    assert single.texts() == setup.st3
    assert single.metric() == setup.expected_exact_match(setup.st3)
    for rec, report in zip(single.records(), setup.reports, strict=True):
        expected = report.sample_summary(0)
        assert {k: rec[k] for k in expected} == expected
    batched = setup.run("st3-b4", "strategy=st3", "--batch_size", "4")
    assert batched.texts() == single.texts()
    for rec, one in zip(batched.records(), single.records(), strict=True):
        for key in ("visual_tokens", "visual_tokens_per_layer", "kv_entries", "prompt_tokens", "new_tokens"):
            assert rec[key] == one[key]


@pytest.mark.slow  # a further lmms-eval run (20 s each); the default run keeps one per family
def test_generation_stops_at_the_tasks_stop_string(setup):
    """A stop string taken from the middle of document 0's ST3 text: generation of that document ends there (fewer
    tokens) and its text is what came before; documents without it are unchanged."""
    stop = " " + setup.st3[0].split()[2]
    task = write_task(setup.root / "stop-task", SAMPLES, NEW_TOKENS, until=[stop])
    (task / "docs.jsonl").write_text((setup.task / "docs.jsonl").read_text())
    run = setup.run("st3-stop", "strategy=st3", task=task)
    assert run.texts() == [text.split(stop, 1)[0].strip() for text in setup.st3]
    assert run.texts()[0] != setup.st3[0]
    assert run.records()[0]["new_tokens"] < len(setup.tokens["st3"][0])
