"""Plugins: the example third-party package installed for real, broken plugins isolated, `tokenprune list`.

Broken plugins are real distributions too: a generated `.dist-info` (METADATA + entry_points.txt) on
sys.path is exactly what `pip install` leaves behind, and importlib.metadata finds it the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch
from conftest import inputs, tiny_model

import tokenprune as tp
from tokenprune import registry
from tokenprune.cli import main

EXAMPLE = Path(__file__).parent.parent / "examples" / "tokenprune-pyramid"


def fake_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write modules and the .dist-info of an installed distribution `name` with these tokenprune entry points."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tokenprune]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """The example plugin, pip-installed (its own pyproject, built by setuptools) into a fresh target folder."""
    work = tmp_path_factory.mktemp("example")
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = work / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


@pytest.fixture
def with_example(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    return installed_example


def test_example_declares_a_tokenprune_entry_point():
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["tokenprune"] == {"pyramid": "tokenprune_pyramid"}


def test_installed_example_registers_its_parts_and_strategy(with_example):
    reg = registry.load()
    assert not reg.problems
    assert "pyramid_knorm" in tp.available_strategies()
    for kind, name in [("strategy", "pyramid_knorm"), ("score", "key_norm"), ("schedule", "pyramid")]:
        origin = reg.origins[(kind, name)]
        assert (origin.plugin, origin.distribution) == ("pyramid", "tokenprune-pyramid 0.1.0")
    assert reg.origins[("strategy", "st3")].distribution.startswith("tokenprune ")


def test_example_strategy_by_name_keeps_lowest_key_norms(with_example):
    """Kept tokens at each cut = the visual tokens with the smallest key norm at the layer before, computed
    here from that layer's k_proj outputs (RoPE is a rotation, it does not change norms)."""
    model, data = tiny_model(), inputs("single")
    layers = model.model.language_model.layers
    keys: dict[int, torch.Tensor] = {}

    def record(i):
        def hook(module, args, out):
            keys.setdefault(i, out.detach())  # the prefill's keys; returns None so the output is unchanged

        return hook

    hooks = [layer.self_attn.k_proj.register_forward_hook(record(i)) for i, layer in enumerate(layers)]
    try:
        with tp.prune(model, "pyramid_knorm", stages=3, retain=0.5) as run:
            model.generate(**data, max_new_tokens=2, do_sample=False)
    finally:
        for h in hooks:
            h.remove()
    cuts = [round(s * len(layers) / 3) for s in (1, 2)]
    assert sorted(run.report.kept_visual) == cuts
    ids = data["input_ids"][0]
    present = torch.nonzero(ids == model.config.image_token_id).flatten().tolist()
    text = [p for p in range(len(ids)) if p not in set(present)]
    kv_heads = model.config.text_config.num_key_value_heads
    for cut in cuts:
        held = sorted(text + present)  # batch 1: the layer before the cut computed exactly these tokens, in order
        k = keys[cut - 1][0]
        assert k.shape[0] == len(held)
        norms = k.view(len(held), kv_heads, -1).float().norm(dim=-1).mean(-1)
        ranked = sorted(present, key=lambda p: (float(norms[held.index(p)]), p))  # smallest norm first
        expected = sorted(ranked[: round(len(present) * 0.5)])
        assert run.report.kept_visual[cut][0] == expected
        present = expected


def test_example_parts_compose_with_builtin_parts(with_example):
    model, data = tiny_model(), inputs("single")
    mixed = tp.compose(
        score="key_norm",
        schedule={"name": "progressive", "start_layer": 1, "stride": 2, "ratio": 0.5},
        decay={"name": "cosine", "final_fraction": 0.5, "evict_every": 2},
    )
    with tp.prune(model, mixed) as run:
        model.generate(**data, max_new_tokens=4, do_sample=False)
    counts = [layer[0] for layer in run.report.prefill_visual_tokens]
    assert counts == [36, 18, 18, 9, 9, 4]
    assert run.report.visual_cache_entries[-1][-1][0] < 4  # the decay evicts during decoding


def test_composed_equals_builtin_exactly():
    """fastv == last_query_attention + single_cut + none; vtw == withdraw; st3 == progressive + cosine."""
    model, data = tiny_model(), inputs("padded")
    pairs = [
        (
            ("fastv", dict(k=2, ratio=0.5)),
            dict(score="last_query_attention", schedule={"name": "single_cut", "layer": 2, "ratio": 0.5}),
        ),
        (("vtw", dict(k=3)), dict(schedule={"name": "withdraw", "layer": 3})),
        (("st3", dict()), dict(score="last_query_attention", schedule="progressive", decay="cosine")),
    ]
    for (name, params), parts in pairs:
        outs = []
        for strategy in (tp.resolve_strategy(name, **params), tp.compose(**parts)):
            with tp.prune(model, strategy) as run:
                out = model.generate(
                    **data, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
                )
            outs.append((out, run.report.to_dict()))
        (a, ra), (b, rb) = outs
        assert torch.equal(a.sequences, b.sequences)
        assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits, strict=True))
        ra.pop("strategy"), rb.pop("strategy")
        assert ra == rb


def test_list_shows_example_with_distribution_and_parameter_ranges(with_example, capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    strategy = next(e for e in listing["strategy"] if e["name"] == "pyramid_knorm")
    assert strategy["distribution"] == "tokenprune-pyramid 0.1.0" and strategy["plugin"] == "pyramid"
    retain = next(p for p in strategy["parameters"] if p["name"] == "retain")
    assert (retain["type"], retain["default"], retain["range"]) == ("float", 0.5, ">= 0.0, <= 1.0")
    st3 = next(e for e in listing["strategy"] if e["name"] == "st3")
    decay = next(p for p in st3["parameters"] if p["name"] == "decay")
    assert decay["type"] == "'cosine' | 'linear' | 'none'"
    assert {e["name"] for e in listing["score"]} >= {"key_norm", "last_query_attention", "text_mean_attention"}
    assert {e["name"] for e in listing["adapter"]} == {"llava", "llava_next", "qwen_vl"}
    assert listing["problems"] == []


def test_list_in_a_fresh_process_sees_the_installed_example(installed_example):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(installed_example), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tokenprune", "list"], capture_output=True, text=True, env=env, check=True
    )
    for name in ("pyramid_knorm", "key_norm", "pyramid", "tokenprune-pyramid 0.1.0", "retain: float = 0.5"):
        assert name in result.stdout


BROKEN = {
    # entry point -> (module source, what the warning must say)
    "needs_missing_lib": ("import not_a_real_module_xyz\n", "cannot be imported"),
    "clashes": (
        "from tokenprune import hookimpl\nfrom tokenprune.strategies import FASTV\n"
        "import dataclasses\n"
        "@hookimpl\ndef tokenprune_strategies():\n    return [dataclasses.replace(FASTV, description='impostor')]\n",
        "strategy 'fastv' is already registered by plugin 'builtin_strategies'",
    ),
    "bad_params": (
        "from tokenprune import hookimpl, StrategyFactory\n"
        "@hookimpl\ndef tokenprune_strategies():\n    return [StrategyFactory('odd', dict, lambda p: None)]\n",
        "not a pydantic BaseModel subclass",
    ),
    "raises": (
        "from tokenprune import hookimpl\n@hookimpl\ndef tokenprune_cache_decays():\n    raise RuntimeError('boom')\n",
        "tokenprune_cache_decays() raised RuntimeError('boom')",
    ),
    "wrong_type": (
        "from tokenprune import hookimpl\n@hookimpl\ndef tokenprune_score_providers():\n    return ['key_norm']\n",
        "returned 'key_norm', not a ScoreFactory",
    ),
    "typo_hook": (
        "from tokenprune import hookimpl\n@hookimpl\ndef tokenprune_strategy():\n    return []\n",
        "unknown hook 'tokenprune_strategy'",
    ),
}


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    for name, (source, _) in BROKEN.items():
        fake_distribution(tmp_path, f"broken-{name}", {name: f"broken_{name}"}, {f"broken_{name}": source})
    monkeypatch.syspath_prepend(str(tmp_path))


def test_each_broken_plugin_is_named_and_the_others_still_work(broken_plugins, with_example):
    reg = registry.load()
    messages = {p.plugin: (p.distribution, p.message) for p in reg.problems}
    assert set(messages) == set(BROKEN)
    for name, (_, expected) in BROKEN.items():
        distribution, message = messages[name]
        assert distribution == f"broken-{name} 1.0"
        assert expected in message, (name, message)
    # built-ins and the working third-party plugin are all there; the clash kept the built-in
    assert {"fastv", "st3", "vtw", "pyramid_knorm"} <= set(reg.components["strategy"])
    assert reg.components["strategy"]["fastv"].description != "impostor"
    with pytest.warns(tp.PluginWarning, match="'needs_missing_lib' .*cannot be imported"):
        with tp.prune(tiny_model(), "pyramid_knorm") as run:
            tiny_model().generate(**inputs("single"), max_new_tokens=2, do_sample=False)
    assert run.report.prefill_visual_tokens


def test_list_reports_broken_plugins_and_still_lists_the_rest(broken_plugins, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # `list` shows problems in its output, it does not warn
        assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "Broken plugins" in out and "needs_missing_lib" in out and "typo_hook" in out
    assert "st3" in out and "single_cut" in out


def test_unknown_part_names_list_the_registered_ones():
    with pytest.raises(
        tp.InvalidParameterError,
        match=r"unknown score provider 'key_nrm'; available score providers: last_query_attention, text_mean_attention",
    ):
        tp.compose(score="key_nrm", schedule="single_cut")
    with pytest.raises(tp.InvalidParameterError, match=r"invalid parameters for layer schedule 'single_cut': ratio=2"):
        tp.compose(score="last_query_attention", schedule={"name": "single_cut", "ratio": 2})
    with pytest.raises(tp.InvalidParameterError, match="needs a score provider"):
        tp.compose(schedule="progressive")
    with pytest.raises(tp.InvalidParameterError, match="unknown part"):
        tp.compose(schedule="withdraw", cache="none")
    with pytest.raises(tp.InvalidParameterError, match="only 'compose'"):
        tp.resolve_strategy({"compose": {"schedule": "withdraw"}, "k": 2})
