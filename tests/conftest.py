"""Shared fixtures: tiny random LLaVA models (fp32, CPU) and the one list of strategy cases every test uses."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reference import RefMethod  # noqa: E402

from tokenprune.tiny import TinySpec, build_model, make_inputs  # noqa: E402

LAYERS = 6

# (strategy name, tokenprune params, the same method for the masked reference)
STRATEGY_CASES = [
    pytest.param("fastv", dict(k=2, ratio=0.5), RefMethod("fastv", k=2, ratio=0.5), id="fastv-last"),
    pytest.param(
        "fastv", dict(k=1, ratio=0.7, query="text_mean"), RefMethod("fastv", k=1, ratio=0.7, query="text_mean"),
        id="fastv-text_mean",
    ),
    pytest.param("vtw", dict(k=3), RefMethod("vtw", k=3), id="vtw"),
    pytest.param(
        "st3", dict(), RefMethod("st3", start_layer=2, stride=3, ratio=0.2, decay="cosine", final_fraction=0.2),
        id="st3-defaults",
    ),
    pytest.param(
        "st3", dict(start_layer=1, stride=1, ratio=0.4, decay="linear", final_fraction=0.2, horizon=6),
        RefMethod("st3", start_layer=1, stride=1, ratio=0.4, decay="linear", final_fraction=0.2, horizon=6),
        id="st3-linear",
    ),
]

# Settings that remove nothing: they must reproduce the unmodified model bit for bit.
ZERO_REMOVAL = [
    pytest.param("fastv", dict(k=2, ratio=0.0), id="fastv-ratio0"),
    pytest.param("fastv", dict(k=LAYERS, ratio=0.5), id="fastv-k=layers"),
    pytest.param("vtw", dict(k=LAYERS), id="vtw-k=layers"),
    pytest.param("st3", dict(ratio=0.0, final_fraction=1.0), id="st3-ratio0-f1"),
    pytest.param("st3", dict(start_layer=LAYERS, final_fraction=1.0), id="st3-start=layers"),
]


@functools.lru_cache(maxsize=None)
def tiny_model(attn: str = "sdpa", layers: int = LAYERS, seed: int = 0):
    return build_model(TinySpec(layers=layers, attn=attn), seed=seed)


def spec(attn: str = "sdpa", layers: int = LAYERS) -> TinySpec:
    return TinySpec(layers=layers, attn=attn)


BATCHES = {
    "single": dict(text_before=4, text_after=8),
    "padded": dict(text_before=[4, 2, 3], text_after=[8, 5, 1]),
}


def inputs(kind: str, attn: str = "sdpa", seed: int = 0) -> dict:
    return make_inputs(spec(attn), seed=seed, **BATCHES[kind])


def greedy(model, batch: dict, steps: int, **kwargs):
    with torch.no_grad():
        return model.generate(
            **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
            output_logits=True, return_dict_in_generate=True, **kwargs,
        )
