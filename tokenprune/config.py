"""Comparison config files (YAML or TOML), validated by pydantic.

    model:       {source: tiny | DIR, family, tiny, adapter, adapter_options, dtype, device, attn, seed}
    data:        {format: synthetic | jsonl | scienceqa | pope | caption, path, limit, image_root, seed}
    strategies:  - {name: st3, ratio: 0.3}                       # a registered strategy and its parameters
                 - {name: vtw, k: auto, eta: 0.003}              # VTW with k calibrated by find_k
                 - {label: mine, compose: {score: ..., schedule: ..., decay: ...}}   # registered parts
    generation:  {max_new_tokens}
    metrics:     [fidelity, accuracy, timing]                    # FLOPs and KV are always reported
    timing:      {samples, repeats, warmup}
    pictures:    {samples}
    seed, output

Every error names the file and the path of the bad field (`strategies[2].ratio`). Strategy parameters
are validated by the same pydantic models `tp.prune` uses, so a strategy from a file is exactly the one
built in Python. Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import registry
from .api import compose
from .errors import ConfigError, InvalidParameterError, TokenpruneError, validation_problems
from .interfaces import Strategy
from .models import ATTENTION, DTYPES, FAMILIES


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(Section):
    source: str = Field(
        "tiny", description="'tiny' (the embedded random model) or a local Hugging Face model directory"
    )
    family: Literal[FAMILIES] = Field("llava", description="family of the tiny model (ignored for a directory)")
    tiny: dict[str, int] | None = Field(None, description="TinySpec overrides for the tiny model, e.g. {layers: 8}")
    adapter: str | None = Field(None, description="adapter name; default: found from the model class")
    adapter_options: dict[str, Any] = Field(default_factory=dict)
    dtype: Literal[("auto", *DTYPES)] = "auto"
    device: str = "auto"
    attn: Literal[ATTENTION] = "sdpa"
    seed: int = Field(0, description="weights seed of the tiny model")


class DataSection(Section):
    format: Literal["synthetic", "jsonl", "scienceqa", "pope", "caption"] = "synthetic"
    path: str | None = Field(None, description="JSONL file, parquet file or folder of parquet files")
    limit: int | None = Field(None, ge=1, description="use the first N samples")
    image_root: str | None = Field(None, description="folder that relative image paths of a JSONL file start from")
    seed: int = 0


class GenerationSection(Section):
    max_new_tokens: int = Field(32, ge=1, description="greedy tokens per sample")


class TimingSection(Section):
    samples: int = Field(2, ge=0, description="samples timed (0 = no timing)")
    repeats: int = Field(3, ge=1, description="interleaved repeats of baseline and strategy; medians are reported")
    warmup: int = Field(1, ge=0)


class PicturesSection(Section):
    samples: int = Field(1, ge=0, description="samples drawn with the visual tokens each strategy kept (0 = none)")


class VTWCalibration(Section):
    eta: float = Field(0.003, ge=0.0, description="largest mean first-token KL allowed")
    calibration_samples: int = Field(4, ge=1, description="the first N samples of the data calibrate k")


Metric = Literal["fidelity", "accuracy", "timing"]


class CompareConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    strategies: list[dict[str, Any]] = Field(min_length=1)
    generation: GenerationSection = Field(default_factory=GenerationSection)
    metrics: list[Metric] = Field(default_factory=lambda: ["fidelity", "accuracy", "timing"])
    timing: TimingSection = Field(default_factory=TimingSection)
    pictures: PicturesSection = Field(default_factory=PicturesSection)
    seed: int = 0
    output: str | None = Field(None, description="output folder when --out is not given")


@dataclass(frozen=True)
class StrategySpec:
    """One configured strategy: its table label, the Strategy (None until VTW's k is calibrated) and its config."""

    label: str
    config: dict
    strategy: Strategy | None
    calibration: VTWCalibration | None = None


def _errors(source: str, exc: ValidationError, prefix: tuple = ()) -> ConfigError:
    return ConfigError(f"{source}: " + "; ".join(validation_problems(exc, prefix=prefix)))


def read_file(path: str | Path) -> dict:
    """The raw mapping of a .yaml/.yml/.toml file; ConfigError names the file and, for syntax errors, the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not path.exists() else f"{path} is not a file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config format '{suffix}'; use .yaml, .yml or .toml")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{path}:{line} invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not a {type(data).__name__}")
    return data


def parse(data: dict, source: str = "<config>", base: Path | None = None) -> CompareConfig:
    """Validate a raw mapping; relative paths are resolved against `base` (the config file's folder)."""
    try:
        config = CompareConfig.model_validate(data)
    except ValidationError as exc:
        raise _errors(source, exc) from None
    if base is not None:
        config = _resolve_paths(config, base)
    strategy_specs(config, source)  # every strategy error now, with its path, before anything runs
    return config


def load_config(path: str | Path) -> CompareConfig:
    path = Path(path)
    return parse(read_file(path), str(path), path.resolve().parent)


def _resolve_paths(config: CompareConfig, base: Path) -> CompareConfig:
    def resolve(value: str | None) -> str | None:
        return value if value is None or Path(value).is_absolute() else str(base / value)

    model = config.model
    if model.source != "tiny":
        model = model.model_copy(update={"source": resolve(model.source)})
    data = config.data.model_copy(
        update={"path": resolve(config.data.path), "image_root": resolve(config.data.image_root)}
    )
    return config.model_copy(update={"model": model, "data": data, "output": resolve(config.output)})


def _label(entry: dict) -> str:
    if "label" in entry:
        return str(entry["label"])
    if "name" in entry:
        params = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "name")
        return f"{entry['name']}({params})" if params else str(entry["name"])
    return "composed"


def strategy_specs(config: CompareConfig, source: str = "<config>") -> list[StrategySpec]:
    """Build every configured strategy, or raise ConfigError naming `strategies[i].field`."""
    reg = registry.current()
    specs: list[StrategySpec] = []
    for i, raw in enumerate(config.strategies):
        entry = {k: v for k, v in raw.items() if k != "label"}
        where = f"strategies[{i}]"
        try:
            spec = _strategy_spec(reg, entry, where, source)
        except TokenpruneError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{source}: {where}: {exc}") from None
        specs.append(StrategySpec(_label(raw), raw, *spec))
    labels = [s.label for s in specs]
    if "baseline" in labels:
        i = labels.index("baseline")
        raise ConfigError(
            f"{source}: strategies[{i}].label: 'baseline' is reserved for the unpruned row; choose another label"
        )
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"{source}: strategies: labels must be unique, {duplicates} appear twice; add `label:` keys")
    if any(re.search(r"[/\\]", label) for label in labels):
        raise ConfigError(f"{source}: strategies: labels may not contain slashes: {labels}")
    return specs


def _strategy_spec(reg, entry: dict, where: str, source: str):
    if "compose" in entry:
        extra = sorted(set(entry) - {"compose"})
        if extra:
            raise ConfigError(f"{source}: {where}: unknown key(s) {extra} next to 'compose' (allowed: compose, label)")
        parts = entry["compose"]
        if not isinstance(parts, dict):
            raise ConfigError(f"{source}: {where}.compose: expected a mapping of score / schedule / decay")
        for kind, part in parts.items():
            if kind not in ("score", "schedule", "decay"):
                raise ConfigError(
                    f"{source}: {where}.compose.{kind}: unknown part; the parts are score, schedule, decay"
                )
            _check_part(reg, kind, part, f"{where}.compose.{kind}", source)
        return compose(**parts), None
    if "name" not in entry:
        raise ConfigError(f"{source}: {where}: needs `name` (a registered strategy) or `compose` (registered parts)")
    params = dict(entry)
    name = params.pop("name")
    if name not in reg.components["strategy"]:
        available = ", ".join(sorted(reg.components["strategy"]))
        raise ConfigError(f"{source}: {where}.name: unknown strategy {name!r}; available strategies: {available}")
    calibration = None
    if name == "vtw" and params.get("k") == "auto":
        settings = {key: params.pop(key) for key in ("eta", "calibration_samples") if key in params}
        params.pop("k")
        try:
            calibration = VTWCalibration(**settings)
        except ValidationError as exc:
            raise _errors(source, exc, (where,)) from None
    factory = reg.get("strategy", name)
    try:
        factory.params.model_validate(params)
    except ValidationError as exc:
        raise _errors(source, exc, (where,)) from None
    if calibration is not None:
        return None, calibration
    return factory(**params), None


def _check_part(reg, kind: str, part, where: str, source: str) -> None:
    spec = {"name": part} if isinstance(part, str) else part
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{source}: {where}: expected a name or a mapping with `name` and parameters")
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        factory = reg.get(kind, spec["name"])
    except InvalidParameterError as exc:
        raise ConfigError(f"{source}: {where}.name: {exc}") from None
    try:
        factory.params.model_validate(params)
    except ValidationError as exc:
        raise _errors(source, exc, (where,)) from None
