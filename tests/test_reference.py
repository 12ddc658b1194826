"""Each strategy equals the masked reference (keeps every token, hides removed ones per layer).

Tolerance: both sides run fp32; dropping tokens vs masking them changes only the summation order of
softmax denominators and matmuls, so logits agree to ~1e-6 on these models. 1e-4 leaves headroom for
that reordering while any wrong kept set, position or mask moves logits by >1e-2.
"""

import pytest
import torch
from conftest import FAMILIES, STRATEGY_CASES, greedy, inputs, reference_prunable, right_padded, spec, tiny_model
from reference import reference_generate

import tokenprune as tp

STEPS = 10
ATOL = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
# "holes" (padding between real tokens) only changes rows no output reads here; test_outputs.py reads them
@pytest.mark.parametrize("batch", ["single", "padded", "right", pytest.param("holes", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_matches_masked_reference(attn, batch, name, params, ref_method, family):
    model = tiny_model(attn, family=family)
    data = inputs(batch, attn, family=family)
    with tp.prune(model, name, **params) as run:
        out = greedy(model, data, STEPS)
    eager = tiny_model("eager", family=family)
    ref = reference_generate(eager, data, ref_method, STEPS, prunable=reference_prunable(eager, data))
    prompt = data["input_ids"].shape[1]
    assert run.report.kept_visual == ref.kept
    assert run.report.visual_cache_entries == ref.visual_per_step
    assert torch.equal(out.sequences[:, prompt:], ref.tokens)
    for step, (a, b) in enumerate(zip(out.logits, ref.logits, strict=True)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"step {step}")


def test_reference_detects_a_wrong_kept_set():
    """Guard for the test above: the reference really depends on which tokens are kept."""
    model = tiny_model("eager")
    data = inputs("single", "eager")
    from reference import RefMethod

    a = reference_generate(model, data, RefMethod("fastv", k=2, ratio=0.5), 4)
    b = reference_generate(model, data, RefMethod("fastv", k=2, ratio=0.5, query="text_mean"), 4)
    assert a.kept != b.kept
    assert (a.logits[0] - b.logits[0]).abs().max() > 100 * ATOL


@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_prefill_logits_of_every_position_without_cache(name, params, ref_method):
    """A direct forward with use_cache=False (keys come from k_proj, not the cache) scores the same."""
    model = tiny_model("sdpa")
    data = inputs("padded")
    with torch.no_grad(), tp.prune(model, name, **params) as run:
        logits = model(**data, use_cache=False).logits
    ref = reference_generate(tiny_model("eager"), data, ref_method, 1)
    assert logits.shape[:2] == data["input_ids"].shape  # removed tokens are put back: outputs keep their length
    assert run.report.kept_visual == ref.kept
    torch.testing.assert_close(logits[:, -1], ref.logits[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(
    "layout",
    [
        dict(text_before=[20, 1], text_after=[19, 1], images=[0, 1]),
        dict(text_before=[2, 1], text_after=[50, 1]),
        dict(text_before=[1, 3], text_after=[0, 2]),
    ],
    ids=["text-only-beside-image", "long-text-beside-short", "prompt-ending-with-its-image"],
)
def test_text_mean_in_ragged_batches(attn, side, layout):
    """Query rows that are padding for one sample but text for another must not poison its scores; a prompt
    ending with its image keeps its last image token (the last real token, before any right padding)."""
    from reference import RefMethod

    from tokenprune.tiny import make_inputs

    model = tiny_model(attn)
    data = make_inputs(spec(attn), **layout)
    if side == "right":
        data = right_padded(data)
    with tp.prune(model, "fastv", k=2, ratio=0.5, query="text_mean") as run:
        out = greedy(model, data, 4)
    ref = reference_generate(tiny_model("eager"), data, RefMethod("fastv", k=2, ratio=0.5, query="text_mean"), 4)
    assert run.report.kept_visual == ref.kept
    for a, b in zip(out.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_cuts_that_remove_nothing_are_reported():
    from reference import RefMethod

    data = inputs("padded")
    with tp.prune(tiny_model(), "st3", start_layer=1, stride=1, ratio=0.9, decay="none") as run:
        greedy(tiny_model(), data, 2)
    ref = reference_generate(tiny_model("eager"), data, RefMethod("st3", start_layer=1, stride=1, ratio=0.9), 2)
    assert sorted(run.report.kept_visual) == [1, 2, 3, 4, 5]
    assert run.report.kept_visual == ref.kept
