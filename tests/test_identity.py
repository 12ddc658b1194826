"""Removing nothing must reproduce the unmodified model bit for bit."""

import pytest
import torch
from conftest import FAMILIES, ZERO_REMOVAL, greedy, inputs, tiny_model

import tokenprune as tp

STEPS = 24


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
# "holes" (padding between real tokens) only changes rows no output reads here; test_outputs.py reads them
@pytest.mark.parametrize("batch", ["single", "padded", "right", pytest.param("holes", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name,params", ZERO_REMOVAL)
def test_zero_removal_is_bit_identical(attn, batch, name, params, family):
    model = tiny_model(attn, family=family)
    data = inputs(batch, attn, family=family)
    base = greedy(model, data, STEPS)
    with tp.prune(model, name, **params) as run:
        pruned = greedy(model, data, STEPS)
    assert torch.equal(pruned.sequences, base.sequences)
    assert len(pruned.logits) == STEPS
    for a, b in zip(pruned.logits, base.logits, strict=True):
        assert torch.equal(a, b)
    report = run.report.to_dict()
    assert report["flops"]["prefill_ratio"] == 1.0
    assert report["kv_bytes"]["visual"]["mean_ratio"] == 1.0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_direct_forward_zero_removal_bit_identical(attn):
    model = tiny_model(attn)
    data = inputs("padded", attn)
    with torch.no_grad():
        base = model(**data).logits
        with tp.prune(model, "fastv", ratio=0.0):
            pruned = model(**data).logits
    assert torch.equal(base, pruned)


def test_model_bit_identical_after_context_even_after_exception():
    model = tiny_model("sdpa")
    data = inputs("padded")
    before = greedy(model, data, 8)
    hooks_before = _hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with tp.prune(model, "st3"):
            greedy(model, data, 4)
            raise RuntimeError("boom")
    after = greedy(model, data, 8)
    assert torch.equal(before.sequences, after.sequences)
    for a, b in zip(before.logits, after.logits, strict=True):
        assert torch.equal(a, b)
    assert _hooks(model) == hooks_before  # every hook tokenprune added is gone


def _hooks(model):
    return {name: (list(m._forward_pre_hooks), list(m._forward_hooks)) for name, m in model.named_modules()}
