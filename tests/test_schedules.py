"""Per-layer counts follow the schedule in prefill and the decay formula at every decode step."""

import math

import pytest
import torch
from conftest import LAYERS, greedy, inputs, tiny_model

import tokenprune as tp

STEPS = 20


def n_visual(data):
    vis = (data["input_ids"] == tiny_model().config.image_token_id) & data["attention_mask"].bool()
    vis[:, -1] = False
    return vis.sum(1).tolist()


@pytest.mark.parametrize("start,stride,ratio", [(1, 1, 0.3), (2, 2, 0.3), (2, 3, 0.5), (5, 1, 0.9)])
def test_pvtp_prefill_counts_and_cache_lengths(start, stride, ratio):
    data = inputs("padded")
    with tp.prune(tiny_model(), "st3", start_layer=start, stride=stride, ratio=ratio, decay="none") as run:
        out = greedy(tiny_model(), data, 3)
    expected = []
    present = n_visual(data)
    for layer in range(LAYERS):
        if layer >= start and (layer - start) % stride == 0:
            present = [round(p * (1 - ratio)) for p in present]
        expected.append(list(present))
    assert run.report.prefill_visual_tokens == expected
    # cache entries per layer = text tokens + generated tokens + kept visual, per sample
    text = [int(m.sum()) - n for m, n in zip(data["attention_mask"], n_visual(data), strict=True)]
    generated = 2  # the third token needs no forward
    assert run.report.cache_entries == [
        [t + generated + v for t, v in zip(text, layer, strict=True)] for layer in expected
    ]
    # and the physical cache tensors are as long as the longest sample of each layer needs
    cache = out.past_key_values
    for layer, counts in zip(cache.layers, run.report.cache_entries, strict=True):
        assert layer.keys.shape[2] == max(counts)


def formula(decay: str, final: float, t: int, horizon: int) -> float:
    x = min(t, horizon) / horizon
    return final + (1 - final) * (1 + math.cos(math.pi * x)) / 2 if decay == "cosine" else 1 - (1 - final) * x


@pytest.mark.parametrize("decay,final", [("cosine", 0.1), ("cosine", 0.0), ("linear", 0.3)])
@pytest.mark.parametrize("horizon", [None, 7])
@pytest.mark.parametrize("evict_every", [1, 3, 8])
def test_vta_counts_follow_formula_at_every_round(decay, final, horizon, evict_every):
    """At a round (t % evict_every == 0) every layer holds round(n_l(0) * fraction(t)); between rounds the
    counts stay those of the last round (t = 0: the prefill's)."""
    data = inputs("padded")
    params = dict(decay=decay, final_fraction=final, horizon=horizon, evict_every=evict_every)
    with tp.prune(tiny_model(), "st3", **params) as run:
        out = greedy(tiny_model(), data, STEPS)
    report = run.report
    T = horizon or STEPS  # default horizon: the generate call's max_new_tokens
    assert report.horizon == T
    steps = report.visual_cache_entries
    assert len(steps) == STEPS  # step 0 + one per decode forward
    initial = steps[0]
    for t, per_layer in enumerate(steps):
        last_round = t - t % evict_every
        frac = formula(decay, final, last_round, T)
        assert per_layer == [[round(n0 * frac) for n0 in layer0] for layer0 in initial], f"step {t}"
    # evicted entries are out of the tensors at once: each layer is as long as its longest sample needs
    for layer, counts in zip(out.past_key_values.layers, report.cache_entries, strict=True):
        assert layer.keys.shape[2] == max(counts)


@pytest.mark.parametrize("batch", ["single", "padded"])
@pytest.mark.parametrize("evict_every", [1, 3, 5])
def test_rounds_equal_the_masked_reference(batch, evict_every):
    """Eviction rounds against the masked reference of the same semantics (scores accumulated from every
    step's attention, evictions only at rounds), over a horizon that spans several rounds."""
    from conftest import reference_prunable
    from reference import RefMethod, reference_generate

    params = dict(start_layer=1, stride=2, ratio=0.3, decay="cosine", final_fraction=0.1, evict_every=evict_every)
    data = inputs(batch)
    with tp.prune(tiny_model(), "st3", **params) as run:
        out = greedy(tiny_model(), data, STEPS)
    eager = tiny_model("eager")
    ref = reference_generate(eager, data, RefMethod("st3", **params), STEPS, prunable=reference_prunable(eager, data))
    assert run.report.visual_cache_entries == ref.visual_per_step
    assert torch.equal(out.sequences[:, data["input_ids"].shape[1] :], ref.tokens)
    for step, (a, b) in enumerate(zip(out.logits, ref.logits, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"step {step}")


def test_reference_rounds_change_outputs():
    """Guard for the test above: which step evicts changes what later steps see, so the reference of
    another round length disagrees."""
    from reference import RefMethod, reference_generate

    params = dict(start_layer=1, stride=2, ratio=0.3, decay="cosine", final_fraction=0.1)
    eager, data = tiny_model("eager"), inputs("single", "eager")
    every = reference_generate(eager, data, RefMethod("st3", **params, evict_every=1), STEPS)
    rounds = reference_generate(eager, data, RefMethod("st3", **params, evict_every=5), STEPS)
    assert every.visual_per_step != rounds.visual_per_step
    assert max((a - b).abs().max() for a, b in zip(every.logits, rounds.logits, strict=True)) > 1e-2


def test_vtw_and_fastv_keep_cache_constant_while_decoding():
    data = inputs("padded")
    for name, params in [("vtw", dict(k=2)), ("fastv", dict(k=2, ratio=0.5))]:
        with tp.prune(tiny_model(), name, **params) as run:
            greedy(tiny_model(), data, 8)
        steps = run.report.visual_cache_entries
        assert all(s == steps[0] for s in steps)
        if name == "vtw":
            assert all(all(v == 0 for v in layer) for layer in steps[0][2:])


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_counts_equal_the_reference_formula_on_a_grid(decay):
    """Counts that land on .5 (e.g. 35 * 0.3 at t=7, T=8, f=0.2) round like the reference's expression."""
    from reference import RefMethod

    strategy = tp.resolve_strategy("st3", decay=decay, final_fraction=0.2)
    ref = RefMethod("st3", decay=decay, final_fraction=0.2)
    initial = torch.arange(0, 120)
    for horizon in (1, 3, 6, 8, 10, 16, 32):
        for step in range(horizon + 2):
            got = strategy.decay.keep(step, horizon, initial).tolist()
            assert got == [round(int(n) * ref.fraction(step, horizon)) for n in initial], (horizon, step)
