"""`output_attentions` and `output_hidden_states` under pruning are indexed as without pruning: by prompt
position at the prefill and by cache position when decoding (docs/usage.md, "generate() modes").

Against the masked reference (eager attention, every token kept and removed ones hidden per layer), whose
weights over removed keys are exactly zero: at every decode step the pruned run's attentions equal the
reference's; at the prefill they equal it on the rows of the tokens a layer still holds, and rows of removed
tokens hold zeros. Hidden states equal the reference's layer inputs on the tokens present; a removed token's
is the one it had when it was removed. Tolerance as in test_reference.py (float summation order only).
"""

import pytest
import torch
from conftest import FAMILIES, STRATEGY_CASES, ZERO_REMOVAL, greedy, inputs, reference_prunable, tiny_model
from reference import reference_generate

import tokenprune as tp

STEPS = 6
ATOL = 1e-4
OUTPUTS = dict(output_attentions=True, output_hidden_states=True)
# FastV (one cut) and ST3 with a cut at every layer and evictions every other step in the default run; the
# other strategy cases as slow tests
DEFAULT_CASES = ("fastv-last", "st3-linear")
OUTPUT_CASES = [
    case if case.id in DEFAULT_CASES else pytest.param(*case.values, marks=pytest.mark.slow, id=case.id)
    for case in STRATEGY_CASES
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", ["single", "padded", "right"])
@pytest.mark.parametrize("name,params", ZERO_REMOVAL[:1] + ZERO_REMOVAL[3:4])
def test_zero_removal_outputs_are_bit_identical(family, batch, name, params):
    model = tiny_model("eager", family=family)
    data = inputs(batch, "eager", family=family)
    base = greedy(model, data, STEPS, **OUTPUTS)
    with tp.prune(model, name, **params):
        pruned = greedy(model, data, STEPS, **OUTPUTS)
    for kind in ("attentions", "hidden_states"):
        for a_step, b_step in zip(getattr(pruned, kind), getattr(base, kind), strict=True):
            assert all(torch.equal(a, b) for a, b in zip(a_step, b_step, strict=True)), kind


def _computed(data: dict) -> torch.Tensor:
    """(B, L) tokens transformers computes as queries that matter: real ones and padding after the first."""
    mask = data["attention_mask"].bool()
    return mask.cumsum(1) > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", ["single", "padded", "right", "holes"])
@pytest.mark.parametrize("name,params,ref_method", OUTPUT_CASES)
def test_outputs_are_indexed_by_prompt_and_cache_position(family, batch, name, params, ref_method):
    model = tiny_model("eager", family=family)
    data = inputs(batch, "eager", family=family)
    with tp.prune(model, name, **params) as run:
        out = greedy(model, data, STEPS, **OUTPUTS)
    ref = reference_generate(model, data, ref_method, STEPS, prunable=reference_prunable(model, data), record=True)
    assert torch.equal(out.sequences[:, data["input_ids"].shape[1] :], ref.tokens)
    computed = _computed(data)
    if batch in ("single", "padded"):  # left padding: the queries that matter are the real tokens
        computed &= data["attention_mask"].bool()
    first_cut = min(run.report.kept_visual, default=len(ref.present))

    # prefill attentions: rows of the tokens each layer holds equal the reference; removed tokens' rows are zero
    for layer, (ours, theirs) in enumerate(zip(out.attentions[0], ref.attentions[0], strict=True)):
        assert ours.shape == theirs.shape
        held = computed & (~ref.visual | ref.present[layer])
        rows = held[:, None, :, None].expand_as(ours)
        torch.testing.assert_close(ours[rows], theirs[rows], atol=ATOL, rtol=0, msg=f"layer {layer}")
        if layer >= first_cut:
            assert bool((ours[~rows] == 0).all()), f"layer {layer}: removed or padding rows are not zero"
    # every decode step: the whole rows (removed and evicted entries are masked in the reference: zero)
    for step in range(1, STEPS):
        for layer, (ours, theirs) in enumerate(zip(out.attentions[step], ref.attentions[step], strict=True)):
            torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0, msg=f"step {step} layer {layer}")

    # prefill hidden states: [j] leaves layer j - 1; a removed token keeps its state at removal: its input to the
    # layer that removed it
    hidden = out.hidden_states[0]
    assert len(hidden) == len(ref.layer_outputs) + 1
    for j in range(1, len(ref.layer_outputs)):
        ours, theirs = hidden[j], ref.layer_outputs[j - 1]
        assert ours.shape == theirs.shape
        held = computed & (~ref.visual | ref.present[j - 1])
        torch.testing.assert_close(ours[held], theirs[held], atol=ATOL, rtol=0, msg=f"hidden {j}")
        for cut in [c for c in sorted(run.report.kept_visual) if c <= j - 1]:
            removed = ref.present[cut - 1] & ~ref.present[cut]  # removed at this cut: its input there
            torch.testing.assert_close(ours[removed], ref.layer_inputs[cut][removed], atol=ATOL, rtol=0)
    assert all(h.shape[1] == 1 for step in out.hidden_states[1:] for h in step)


def test_direct_forward_attentions_without_cache():
    """A forward without cache (keys from k_proj) gives the same prompt-indexed attentions."""
    model = tiny_model("eager")
    data = inputs("padded", "eager")
    with torch.no_grad():
        with tp.prune(model, "fastv", k=2, ratio=0.5):
            cached = model(**data, output_attentions=True).attentions
            uncached = model(**data, output_attentions=True, use_cache=False).attentions
    length = data["input_ids"].shape[1]
    assert [a.shape[-2:] for a in uncached] == [(length, length)] * len(uncached)
    for a, b in zip(cached, uncached, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
