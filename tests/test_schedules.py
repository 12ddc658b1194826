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


@pytest.mark.parametrize("decay,final", [("cosine", 0.1), ("cosine", 0.0), ("linear", 0.3)])
@pytest.mark.parametrize("horizon", [None, 7])
def test_vta_counts_follow_formula_every_step(decay, final, horizon):
    data = inputs("padded")
    params = dict(decay=decay, final_fraction=final, horizon=horizon)
    with tp.prune(tiny_model(), "st3", **params) as run:
        greedy(tiny_model(), data, STEPS)
    report = run.report
    T = horizon or STEPS  # default horizon: the generate call's max_new_tokens
    assert report.horizon == T
    steps = report.visual_cache_entries
    assert len(steps) == STEPS  # step 0 + one per decode forward
    initial = steps[0]
    for t, per_layer in enumerate(steps):
        x = min(t, T) / T
        frac = final + (1 - final) * (1 + math.cos(math.pi * x)) / 2 if decay == "cosine" else 1 - (1 - final) * x
        assert per_layer == [[round(n0 * frac) for n0 in layer0] for layer0 in initial], f"step {t}"


def test_vtw_and_fastv_keep_cache_constant_while_decoding():
    data = inputs("padded")
    for name, params in [("vtw", dict(k=2)), ("fastv", dict(k=2, ratio=0.5))]:
        with tp.prune(tiny_model(), name, **params) as run:
            greedy(tiny_model(), data, 8)
        steps = run.report.visual_cache_entries
        assert all(s == steps[0] for s in steps)
        if name == "vtw":
            assert all(all(v == 0 for v in layer) for layer in steps[0][2:])


@pytest.mark.parametrize("evict_every", [1, 3, 8])
def test_batched_eviction_changes_memory_timing_not_outputs(evict_every):
    """Evicted entries are masked at once; compaction every N steps only moves when the memory is freed."""
    data = inputs("padded")
    with tp.prune(tiny_model(), "st3", evict_every=1) as eager_run:
        every = greedy(tiny_model(), data, STEPS)
    with tp.prune(tiny_model(), "st3", evict_every=evict_every) as run:
        batched = greedy(tiny_model(), data, STEPS)
    assert torch.equal(every.sequences, batched.sequences)
    for a, b in zip(every.logits, batched.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert run.report.visual_cache_entries == eager_run.report.visual_cache_entries
    per_step = run.report.kv_bytes()["total"]["per_step"]
    eager_steps = eager_run.report.kv_bytes()["total"]["per_step"]
    assert all(b >= a for a, b in zip(eager_steps, per_step, strict=True))
    if evict_every == 1:
        assert per_step == eager_steps
    else:  # right after a compaction step the tensors hold exactly the kept entries again
        compacted = [t for t in range(1, STEPS) if t % evict_every == 0]
        assert all(per_step[t] == eager_steps[t] for t in compacted)
        assert any(per_step[t] > eager_steps[t] for t in range(1, STEPS) if t not in compacted)


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
