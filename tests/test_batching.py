"""A left-padded batch gives each sample the result it gets when run alone; padding changes nothing."""

import pytest
import torch
from conftest import STRATEGY_CASES, greedy, spec, tiny_model

import tokenprune as tp
from tokenprune.tiny import make_inputs

STEPS = 12
BEFORE, AFTER = [4, 2, 3], [8, 5, 1]


def alone(b: int) -> dict:
    batch = make_inputs(spec(), BEFORE, AFTER, seed=0)
    row = batch["attention_mask"][b].bool()
    return {
        "input_ids": batch["input_ids"][b : b + 1, row],
        "attention_mask": batch["attention_mask"][b : b + 1, row],
        "pixel_values": batch["pixel_values"][b : b + 1],
    }


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_batch_equals_per_sample(attn, name, params, ref_method):
    model = tiny_model(attn)
    batch = make_inputs(spec(attn), BEFORE, AFTER, seed=0)
    with tp.prune(model, name, **params) as run:
        out = greedy(model, batch, STEPS)
    batch_report = run.report
    prompt = batch["input_ids"].shape[1]
    for b in range(len(BEFORE)):
        single = alone(b)
        with tp.prune(model, name, **params) as run_b:
            ref = greedy(model, single, STEPS)
        assert torch.equal(out.sequences[b, prompt:], ref.sequences[0, single["input_ids"].shape[1]:])
        for a, r in zip(out.logits, ref.logits):
            torch.testing.assert_close(a[b], r[0], atol=1e-4, rtol=0)
        assert [layer[b] for layer in batch_report.prefill_visual_tokens] == [
            layer[0] for layer in run_b.report.prefill_visual_tokens
        ]
        assert [[layer[b] for layer in step] for step in batch_report.visual_cache_entries] == [
            [layer[0] for layer in step] for step in run_b.report.visual_cache_entries
        ]


def test_samples_without_image_in_a_batch_are_untouched():
    model = tiny_model("sdpa")
    batch = make_inputs(spec(), [3, 2], [6, 4], images=[1, 0])
    with tp.prune(model, "fastv", k=1, ratio=0.75) as run:
        out = greedy(model, batch, STEPS)
    assert [layer[1] for layer in run.report.prefill_visual_tokens] == [0] * len(run.report.prefill_visual_tokens)
    text_only = {k: v[1:2, batch["attention_mask"][1].bool()] for k, v in batch.items() if k != "pixel_values"}
    ref = greedy(model, text_only, STEPS)
    assert torch.equal(out.sequences[1, batch["input_ids"].shape[1]:], ref.sequences[0, text_only["input_ids"].shape[1]:])
