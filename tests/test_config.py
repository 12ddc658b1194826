"""Comparison config files: YAML and TOML, paths relative to the file, errors naming the file and the
field path, and strategies from a file that are exactly the strategies built in Python."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import inputs, tiny_model
from test_plugins import installed_example, with_example  # noqa: F401 - the pip-installed example plugin

import tokenprune as tp
from tokenprune.config import CompareConfig, load_config, parse, strategy_specs

EXAMPLES = Path(__file__).parent.parent / "examples"

SMALL_TINY = {"layers": 4, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 512, "grid": 6}

STRATEGIES = [
    {"name": "st3", "start_layer": 1, "stride": 2, "ratio": 0.3, "decay": "linear", "final_fraction": 0.5},
    {"name": "fastv", "label": "fastv-text_mean", "query": "text_mean", "k": 1, "ratio": 0.7},
    {"name": "vtw", "k": 3},
    {
        "label": "mine",
        "compose": {
            "score": "text_mean_attention",
            "schedule": {"name": "progressive", "start_layer": 2, "stride": 2, "ratio": 0.5},
            "decay": {"name": "linear", "final_fraction": 0.3},
        },
    },
    {"name": "vtw", "label": "vtw-auto", "k": "auto", "eta": 0.5, "calibration_samples": 2},
]

TOML = """\
metrics = ["fidelity", "accuracy"]
seed = 3
output = "results"

[model]
source = "weights/tiny"
dtype = "float32"
device = "cpu"
attn = "eager"

[data]
format = "jsonl"
path = "data/questions.jsonl"
image_root = "data/images"
limit = 2

[generation]
max_new_tokens = 3

[timing]
samples = 1
repeats = 1
warmup = 0

[pictures]
samples = 0

[[strategies]]
name = "st3"
start_layer = 1
stride = 2
ratio = 0.3
decay = "linear"
final_fraction = 0.5

[[strategies]]
name = "fastv"
label = "fastv-text_mean"
query = "text_mean"
k = 1
ratio = 0.7

[[strategies]]
name = "vtw"
k = 3

[[strategies]]
label = "mine"
[strategies.compose]
score = "text_mean_attention"
schedule = {name = "progressive", start_layer = 2, stride = 2, ratio = 0.5}
decay = {name = "linear", final_fraction = 0.3}

[[strategies]]
name = "vtw"
label = "vtw-auto"
k = "auto"
eta = 0.5
calibration_samples = 2
"""

RAW = {
    "metrics": ["fidelity", "accuracy"],
    "seed": 3,
    "output": "results",
    "model": {"source": "weights/tiny", "dtype": "float32", "device": "cpu", "attn": "eager"},
    "data": {"format": "jsonl", "path": "data/questions.jsonl", "image_root": "data/images", "limit": 2},
    "generation": {"max_new_tokens": 3},
    "timing": {"samples": 1, "repeats": 1, "warmup": 0},
    "pictures": {"samples": 0},
    "strategies": STRATEGIES,
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- formats and paths
def test_yaml_and_toml_give_the_same_config_with_paths_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    (folder / "weights" / "tiny").mkdir(parents=True)
    from_yaml = load_config(write(folder / "compare.yaml", yaml.safe_dump(RAW, sort_keys=False)))
    from_yml = load_config(write(folder / "compare.yml", yaml.safe_dump(RAW)))
    from_toml = load_config(write(folder / "compare.toml", TOML))
    assert isinstance(from_yaml, CompareConfig)
    assert from_yaml == from_toml == from_yml

    # relative to the config file's folder, not to the working directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "configs" / "compare.toml")
    base = folder.resolve()
    assert config.model.source == str(base / "weights" / "tiny") and Path(config.model.source).is_dir()
    assert config.data.path == str(base / "data" / "questions.jsonl")
    assert config.data.image_root == str(base / "data" / "images")
    assert config.output == str(base / "results")
    assert config == from_toml

    # the values themselves, and that absolute paths and the tiny model are left alone
    assert (config.model.dtype, config.model.attn, config.data.format, config.data.limit) == (
        "float32",
        "eager",
        "jsonl",
        2,
    )
    assert (config.generation.max_new_tokens, config.timing.repeats, config.pictures.samples, config.seed) == (
        3,
        1,
        0,
        3,
    )
    assert config.strategies == STRATEGIES
    absolute = dict(
        RAW, model={"source": "tiny"}, data={"format": "jsonl", "path": str(tmp_path / "q.jsonl")}, output=None
    )
    kept = load_config(write(folder / "absolute.yaml", yaml.safe_dump(absolute)))
    assert (kept.model.source, kept.data.path, kept.output) == ("tiny", str(tmp_path / "q.jsonl"), None)


def test_defaults_and_labels(tmp_path):
    config = load_config(write(tmp_path / "c.yaml", "strategies: [{name: st3}, {name: fastv, ratio: 0.25}]\n"))
    assert config.model.source == "tiny" and config.data.format == "synthetic" and config.output is None
    assert config.metrics == ["fidelity", "accuracy", "timing"]
    specs = strategy_specs(config)
    assert [s.label for s in specs] == ["st3", "fastv(ratio=0.25)"]
    assert specs[1].strategy == tp.resolve_strategy("fastv", ratio=0.25)


# ------------------------------------------------------------------------------------------- errors
ERRORS = [
    pytest.param("strategies: [{name: st3}]\nfoo: 1\n", [r"foo: unknown key"], id="unknown-top-level-key"),
    pytest.param(
        "model: {dtyp: float32}\nstrategies: [{name: st3}]\n", [r"model\.dtyp: unknown key"], id="unknown-model-key"
    ),
    pytest.param(
        "data: {limit: x}\nstrategies: [{name: st3}]\n", [r"data\.limit: ", r"integer", r"'x'"], id="wrong-type"
    ),
    pytest.param(
        "data: {format: coco}\nstrategies: [{name: st3}]\n", [r"data\.format: ", "synthetic"], id="bad-format"
    ),
    pytest.param(
        "strategies: [{name: st3}, {name: fastv}, {name: st3, label: strong, ratio: 1.5}]\n",
        [r"(?<![\w.\]])strategies\[2\]\.ratio: ", r"less than or equal to 1", r"1\.5"],
        id="ratio-out-of-range",
    ),
    pytest.param(
        "strategies: [{name: st3, ratioo: 0.3}]\n", [r"strategies\[0\]\.ratioo: unknown key"], id="unknown-param"
    ),
    pytest.param(
        "strategies: [{name: st4}]\n",
        [r"strategies\[0\]\.name: ", r"'st4'", r"available strategies: fastv, st3, vtw"],
        id="unknown-strategy",
    ),
    pytest.param(
        "strategies: [{name: st3}, {compose: {score: last_query_attention, schedule: {name: pyramdi}}}]\n",
        [r"strategies\[1\]\.compose\.schedule\.name: ", r"'pyramdi'", r"progressive, single_cut, withdraw"],
        id="unknown-part",
    ),
    pytest.param(
        "strategies: [{name: st3}, {compose: {score: last_query_attention, schedule: {name: single_cut, ratio: 2}}}]\n",
        [r"strategies\[1\]\.compose\.schedule\.ratio: ", r"less than or equal to 1"],
        id="bad-part-parameter",
    ),
    pytest.param(
        "strategies: [{compose: {score: last_query_attenton, schedule: single_cut}}]\n",
        [r"strategies\[0\]\.compose\.score\.name: ", r"'last_query_attenton'"],
        id="unknown-score-by-name",
    ),
    pytest.param(
        "strategies: [{compose: {schedule: withdraw, cache: none}}]\n",
        [r"strategies\[0\]\.compose\.cache: unknown part"],
        id="unknown-part-kind",
    ),
    pytest.param(
        "strategies: [{compose: {schedule: withdraw}, k: 2}]\n",
        [r"strategies\[0\]: unknown key\(s\) \['k'\] next to 'compose'"],
        id="key-next-to-compose",
    ),
    pytest.param("strategies: [{ratio: 0.3}]\n", [r"strategies\[0\]: needs `name`"], id="no-name"),
    pytest.param("strategies: [st3]\n", [r"strategies\[0\]: ", r"dictionary"], id="strategy-not-a-mapping"),
    pytest.param(
        "strategies: [{name: st3}, {name: fastv}, {name: st3}]\n",
        [r"strategies: labels must be unique", r"\['st3'\]"],
        id="duplicate-labels",
    ),
    pytest.param(
        "strategies: [{name: st3, label: a}, {name: fastv, label: a}]\n",
        [r"labels must be unique", r"\['a'\]"],
        id="duplicate-explicit-labels",
    ),
    pytest.param(
        "strategies: [{name: vtw, k: auto, eta: -1}]\n",
        [r"strategies\[0\]\.eta: ", r"greater than or equal to 0"],
        id="vtw-auto-negative-eta",
    ),
    pytest.param(
        "strategies: [{name: vtw, k: auto, eta: x}]\n",
        [r"strategies\[0\]\.eta: ", r"number", r"'x'"],
        id="vtw-auto-eta-not-a-number",
    ),
    pytest.param(
        "strategies: [{name: vtw, k: auto, calibration_samples: 0}]\n",
        [r"strategies\[0\]\.calibration_samples: "],
        id="vtw-auto-no-samples",
    ),
    pytest.param(
        "strategies: [{name: vtw, k: 2, eta: 0.1}]\n", [r"strategies\[0\]\.eta: unknown key"], id="eta-without-auto"
    ),
    pytest.param(
        "strategies: [{name: fastv, k: auto}]\n", [r"strategies\[0\]\.k: ", r"integer"], id="auto-only-for-vtw"
    ),
    pytest.param("strategies: []\n", [r"strategies: ", r"at least 1"], id="empty-strategies"),
    pytest.param("model: {dtype: float32}\n", [r"strategies: Field required"], id="missing-strategies"),
    pytest.param("", [r"strategies: Field required"], id="empty-file"),
    pytest.param("- 1\n- 2\n", [r"top level must be a mapping", r"list"], id="top-level-list"),
    pytest.param("just text\n", [r"top level must be a mapping", r"str"], id="top-level-scalar"),
    pytest.param(
        "model:\n  dtype: float32\ndata: a: b\nstrategies: [{name: st3}]\n",
        [r"line 3, column \d+:", r"invalid YAML"],
        id="invalid-yaml",
    ),
    pytest.param("model:\n  dtype: float32\n\tdevice: cpu\n", [r"line 3, column \d+:", r"invalid YAML"], id="yaml-tab"),
]


@pytest.mark.parametrize("text, expected", ERRORS)
def test_errors_name_the_file_and_the_field(tmp_path, text, expected):
    path = write(tmp_path / "bad config.yaml", text)
    with pytest.raises(tp.ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:"), message
    for pattern in expected:
        assert re.search(pattern, message), (pattern, message)
    assert "Traceback" not in message and "pydantic" not in message.lower()


def test_config_errors_are_tokenprune_errors():
    assert issubclass(tp.ConfigError, tp.TokenpruneError)
    with pytest.raises(tp.ConfigError, match=r"<config>: strategies\[0\]\.ratio"):
        parse({"strategies": [{"name": "fastv", "ratio": -0.1}]})


def test_file_errors(tmp_path):
    with pytest.raises(tp.ConfigError, match=re.escape(f"config file not found: {tmp_path / 'nope.yaml'}")):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(tp.ConfigError, match=f"{re.escape(str(tmp_path))} is not a file"):
        load_config(tmp_path)
    json_file = write(tmp_path / "compare.json", '{"strategies": [{"name": "st3"}]}')
    with pytest.raises(
        tp.ConfigError, match=re.escape(f"{json_file}: unknown config format '.json'; use .yaml, .yml or .toml")
    ):
        load_config(json_file)
    toml_file = write(tmp_path / "compare.toml", "[model]\ndtype = 'float32'\nstrategies = [\n  {name = 'st3'\n")
    with pytest.raises(tp.ConfigError) as info:
        load_config(toml_file)
    assert str(info.value).startswith(f"{toml_file}: invalid TOML: ") and re.search(r"line \d+", str(info.value))
    toml_bad = write(tmp_path / "bad.toml", "[data]\nlimit = 'x'\n[[strategies]]\nname = 'st3'\n")
    with pytest.raises(tp.ConfigError, match=re.escape(f"{toml_bad}: data.limit: ")):
        load_config(toml_bad)


def test_the_baseline_label_is_reserved(tmp_path):
    path = write(tmp_path / "c.yaml", "strategies: [{name: st3, label: baseline}]\n")
    with pytest.raises(tp.ConfigError, match=r"strategies.*baseline"):
        load_config(path)


# ------------------------------------------------------------------------------------------- same as Python
def _generate(model, data, strategy):
    with tp.prune(model, strategy) as run:
        out = model.generate(
            **data, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return out, run.report.to_dict()


def _assert_same_run(model, data, a, b):
    (out_a, report_a), (out_b, report_b) = _generate(model, data, a), _generate(model, data, b)
    assert torch.equal(out_a.sequences, out_b.sequences)
    assert len(out_a.logits) == len(out_b.logits) == 4
    assert all(torch.equal(x, y) for x, y in zip(out_a.logits, out_b.logits, strict=True))
    assert report_a == report_b


def test_a_strategy_from_a_file_is_the_strategy_built_in_python(tmp_path):
    config = load_config(write(tmp_path / "c.yaml", yaml.safe_dump({"strategies": STRATEGIES}, sort_keys=False)))
    specs = strategy_specs(config)
    assert [s.label for s in specs] == [
        "st3(start_layer=1, stride=2, ratio=0.3, decay=linear, final_fraction=0.5)",
        "fastv-text_mean",
        "vtw(k=3)",
        "mine",
        "vtw-auto",
    ]
    python = [
        tp.resolve_strategy("st3", start_layer=1, stride=2, ratio=0.3, decay="linear", final_fraction=0.5),
        tp.resolve_strategy("fastv", query="text_mean", k=1, ratio=0.7),
        tp.resolve_strategy("vtw", k=3),
        tp.compose(
            score="text_mean_attention",
            schedule={"name": "progressive", "start_layer": 2, "stride": 2, "ratio": 0.5},
            decay={"name": "linear", "final_fraction": 0.3},
        ),
    ]
    for spec, built in zip(specs, python, strict=False):  # specs[4] (vtw k: auto) has no strategy to compare
        assert spec.strategy == built, spec.label
        assert spec.strategy.describe() == built.describe()
        assert spec.calibration is None
        assert spec.config in STRATEGIES
    # VTW with k: auto has no strategy until calibrated; its settings are kept
    auto = specs[4]
    assert auto.strategy is None and (auto.calibration.eta, auto.calibration.calibration_samples) == (0.5, 2)

    model, data = tiny_model(), inputs("single")
    for spec, built in zip(specs, python, strict=False):  # not specs[4]: no strategy until calibrated
        _assert_same_run(model, data, spec.strategy, built)
    # and the runs did prune (otherwise identical outputs would prove little)
    _, report = _generate(model, data, specs[0].strategy)
    assert report != _generate(model, data, specs[2].strategy)[1]


# ------------------------------------------------------------------------------------------- plugins
PLUGIN_CONFIG = """\
strategies:
  - {name: pyramid_knorm, retain: 0.5}
  - compose:
      score: key_norm
      schedule: {name: pyramid, stages: 2}
"""


def test_a_third_party_plugin_works_from_a_config_file(with_example, tmp_path):  # noqa: F811
    config = load_config(write(tmp_path / "plugin.yaml", PLUGIN_CONFIG))
    specs = strategy_specs(config)
    assert [s.label for s in specs] == ["pyramid_knorm(retain=0.5)", "composed"]
    assert specs[0].strategy == tp.resolve_strategy("pyramid_knorm", retain=0.5)
    assert specs[1].strategy == tp.compose(score="key_norm", schedule={"name": "pyramid", "stages": 2})
    model, data = tiny_model(), inputs("single")
    _assert_same_run(model, data, specs[0].strategy, tp.resolve_strategy("pyramid_knorm", retain=0.5))
    _assert_same_run(
        model, data, specs[1].strategy, tp.compose(score="key_norm", schedule={"name": "pyramid", "stages": 2})
    )

    bad = write(tmp_path / "bad.yaml", PLUGIN_CONFIG.replace("retain: 0.5", "retain: 2"))
    with pytest.raises(
        tp.ConfigError, match=re.escape(f"{bad}: strategies[0].retain: Input should be less than or equal to 1")
    ):
        load_config(bad)
    bad_part = write(tmp_path / "bad_part.yaml", PLUGIN_CONFIG.replace("stages: 2", "stages: 0"))
    with pytest.raises(tp.ConfigError, match=re.escape(f"{bad_part}: strategies[1].compose.schedule.stages: ")):
        load_config(bad_part)


def test_plugin_strategies_are_unknown_without_the_plugin(tmp_path):
    path = write(tmp_path / "plugin.yaml", PLUGIN_CONFIG)
    if "pyramid_knorm" in tp.available_strategies():
        pytest.skip("the example plugin is installed in this environment")
    with pytest.raises(
        tp.ConfigError, match=re.escape(f"{path}: strategies[0].name: unknown strategy 'pyramid_knorm'")
    ):
        load_config(path)


# ------------------------------------------------------------------------------------------- the example
def test_example_config_parses():
    config = load_config(EXAMPLES / "compare-tiny.yaml")
    labels = [s.label for s in strategy_specs(config)]
    assert len(labels) == len(set(labels)) == len(config.strategies) >= 3
    assert "vtw-auto" in labels and "composed-progressive-linear" in labels
    assert config.model.source == "tiny" and config.data.format == "synthetic"


#: decoder layers of the model each paper config names (from the models' published configs)
PAPER_DEPTHS = {"llava15-7b": 32, "llava15-13b": 40, "llava-next-7b": 32, "qwen25vl-7b": 28, "qwen3vl-8b": 36}


@pytest.mark.parametrize("name", sorted(PAPER_DEPTHS))
def test_paper_configs_parse_with_vtw_at_half_the_depth(name):
    config = load_config(EXAMPLES / "paper" / f"{name}.yaml")
    specs = strategy_specs(config)
    assert len({s.label for s in specs}) == len(specs)
    assert {s.config["name"] for s in specs} == {"fastv", "vtw", "st3"}
    fixed = [s.config["k"] for s in specs if s.config["name"] == "vtw" and s.config["k"] != "auto"]
    assert fixed == [PAPER_DEPTHS[name] // 2]
    assert config.model.device == "cuda" and config.data.format == "scienceqa"


def test_every_paper_config_is_listed():
    assert sorted(p.stem for p in (EXAMPLES / "paper").glob("*.yaml")) == sorted(PAPER_DEPTHS)
