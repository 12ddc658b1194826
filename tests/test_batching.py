"""A left-padded batch gives each sample the result it gets when run alone; padding changes nothing."""

import pytest
import torch
from conftest import FAMILIES, STRATEGY_CASES, greedy, inputs, sample_of, tiny_model

import tokenprune as tp

STEPS = 12


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_batch_equals_per_sample(attn, name, params, ref_method, family):
    """Different text lengths and left padding (and, for LLaVA-NeXT, different visual counts) in one batch."""
    model = tiny_model(attn, family=family)
    batch = inputs("padded", attn, family=family)
    with tp.prune(model, name, **params) as run:
        out = greedy(model, batch, STEPS)
    batch_report = run.report
    prompt = batch["input_ids"].shape[1]
    for b in range(3):
        single = sample_of(batch, b, [1, 1, 1])
        with tp.prune(model, name, **params) as run_b:
            ref = greedy(model, single, STEPS)
        assert torch.equal(out.sequences[b, prompt:], ref.sequences[0, single["input_ids"].shape[1] :])
        for a, r in zip(out.logits, ref.logits, strict=True):
            torch.testing.assert_close(a[b], r[0], atol=1e-4, rtol=0)
        assert [layer[b] for layer in batch_report.prefill_visual_tokens] == [
            layer[0] for layer in run_b.report.prefill_visual_tokens
        ]
        assert [[layer[b] for layer in step] for step in batch_report.visual_cache_entries] == [
            [layer[0] for layer in step] for step in run_b.report.visual_cache_entries
        ]


def test_samples_without_image_in_a_batch_are_untouched():
    from conftest import spec

    from tokenprune.tiny import make_inputs

    model = tiny_model("sdpa")
    batch = make_inputs(spec(), [3, 2], [6, 4], images=[1, 0])
    with tp.prune(model, "fastv", k=1, ratio=0.75) as run:
        out = greedy(model, batch, STEPS)
    assert [layer[1] for layer in run.report.prefill_visual_tokens] == [0] * len(run.report.prefill_visual_tokens)
    text_only = {k: v[1:2, batch["attention_mask"][1].bool()] for k, v in batch.items() if k != "pixel_values"}
    ref = greedy(model, text_only, STEPS)
    assert torch.equal(
        out.sequences[1, batch["input_ids"].shape[1] :], ref.sequences[0, text_only["input_ids"].shape[1] :]
    )
