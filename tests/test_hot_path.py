"""What keeps prefill and decode cheap, checked as behaviour: which hooks sit on the model in each phase,
which masks the attention gets, and that the cache's host counters agree with its tensors.

The engine decides and reports from host counters (no device read-back per layer); these tests compare
those counters with the per-entry tensors the cache actually holds, after every forward, through beam
search, several return sequences and a second turn.
"""

import pytest
import torch
from conftest import FAMILIES, LAYERS, STRATEGY_CASES, greedy, inputs, tiny_model
from test_multiturn import FIRST, SECOND, new_turn, two_turns

import tokenprune as tp
from tokenprune.cache import PrunableCache


def scoring_hooks(model) -> dict[str, set[int]]:
    """Layers whose q_proj / k_proj / self_attn carry a forward hook right now."""
    out = {"q": set(), "k": set(), "attention": set()}
    for i, layer in enumerate(model.model.language_model.layers):
        attn = layer.self_attn
        for kind, module in (("q", attn.q_proj), ("k", attn.k_proj), ("attention", attn)):
            if module._forward_hooks:
                out[kind].add(i)
    return out


def layer_pre_hooks(model) -> set[int]:
    return {i for i, layer in enumerate(model.model.language_model.layers) if layer._forward_pre_hooks}


class PhaseProbe:
    """Records, per forward of the language model, which tokenprune hooks are on the model."""

    def __init__(self, model) -> None:
        self.model, self.seen = model, []
        # registered after tp.prune's entry hook, on the language model: it runs once per forward, after
        # tokenprune chose that forward's hooks at the LLaVA level
        self.handle = model.model.language_model.register_forward_pre_hook(self._record)

    def _record(self, module, args) -> None:
        self.seen.append((scoring_hooks(self.model), layer_pre_hooks(self.model)))

    def remove(self) -> None:
        self.handle.remove()


def run_with_probe(model, data, steps, name, **params):
    with tp.prune(model, name, **params) as run:
        probe = PhaseProbe(model)
        try:
            greedy(model, data, steps)
        finally:
            probe.remove()
    return run, probe.seen


def test_no_removal_prefill_runs_no_scoring_hooks_and_decode_none_at_all():
    """FastV ratio 0 cuts nothing, so nothing is ranked: no scoring hooks in prefill, no layer hooks in decode."""
    model = tiny_model()
    _, seen = run_with_probe(model, inputs("single"), 4, "fastv", ratio=0.0)
    prefill, *decode = seen
    assert prefill == ({"q": set(), "k": set(), "attention": set()}, set(range(LAYERS)))
    for hooks, layers in decode:
        assert hooks == {"q": set(), "k": set(), "attention": set()} and layers == set()


def test_fastv_scores_one_layer_in_prefill_and_hooks_only_pruned_layers_in_decode():
    model = tiny_model()
    _, seen = run_with_probe(model, inputs("single"), 4, "fastv", k=2, ratio=0.5)
    prefill, *decode = seen
    # cache on: keys come from the cache, so k_proj is not hooked
    assert prefill == ({"q": {1}, "k": set(), "attention": {1}}, set(range(LAYERS)))
    for hooks, layers in decode:
        assert hooks == {"q": set(), "k": set(), "attention": set()}
        assert layers == set(range(2, LAYERS))  # the layers whose entries differ from the full sequence


def test_decay_stops_scoring_a_layer_once_it_holds_its_final_count():
    """Rounds at steps 2 and 4 = the horizon: after it no layer evicts again, so no query is kept for scoring
    and the eviction scores stay as they were; before it, each round adds its window's attention."""
    model = tiny_model()
    data = inputs("single")
    horizon, params = 4, dict(horizon=4, evict_every=2)
    runs = {}
    for steps in (6, 8):
        with tp.prune(model, "st3", **params) as run:
            out = greedy(model, data, steps)
        window = out.past_key_values.window
        assert window.layers == () and window.queries == []
        runs[steps] = (run.report, [layer.scores for layer in out.past_key_values.layers])
    (short, short_scores), (long, long_scores) = runs[6], runs[8]
    assert long.visual_cache_entries[horizon] == long.visual_cache_entries[-1]  # nothing evicted after it
    assert short.visual_cache_entries == long.visual_cache_entries[:6]
    for a, b in zip(short_scores, long_scores, strict=True):
        assert torch.equal(a, b)
    # before the horizon the window collects: after 4 tokens (steps 1-3, a round at 2) it holds step 2's
    # and step 3's queries of every layer that still evicts
    with tp.prune(model, "st3", **params):
        window = greedy(model, data, 4).past_key_values.window
    assert len(window.queries) == 2 and window.layers and all(len(q) == len(window.layers) for q in window.queries)


@pytest.mark.parametrize("kind,expect_mask", [("single", False), ("padded", True)])
def test_a_cut_layout_without_filler_gets_sdpa_causal_kernel(kind, expect_mask):
    """After a cut, batch 1 holds no filler: the pruned layers get no explicit mask (sdpa's causal path);
    samples keeping different counts need filler and therefore a mask."""
    model = tiny_model()
    masks = {}

    def record(i):
        def hook(module, args, kwargs):
            masks.setdefault(i, kwargs.get("attention_mask"))

        return hook

    layers = model.model.language_model.layers
    data = inputs(kind)
    with tp.prune(model, "fastv", k=2, ratio=0.5):
        handles = [
            layer.self_attn.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)
        ]
        try:
            greedy(model, data, 1)
        finally:
            for h in handles:
                h.remove()
    for i in range(2, LAYERS):
        assert (masks[i] is not None) == expect_mask, i


def assert_counts_match_tensors(cache: PrunableCache) -> None:
    for i, layer in enumerate(cache.layers):
        assert torch.equal(cache.visual_count[i], layer.visual.sum(1).cpu()), f"layer {i}: visual"
        assert torch.equal(cache.entry_count[i], layer.valid.sum(1).cpu()), f"layer {i}: entries"
        assert layer.valid.shape == layer.keys.shape[:1] + layer.keys.shape[2:3]
        assert layer.positions.shape == layer.valid.shape == layer.visual.shape
        if layer.all_valid:
            assert bool(layer.valid.all())


def counting_probe(model, caches: list):
    """Checks host counters against tensors after every forward (the cache object is read from the output)."""

    def hook(module, args, kwargs, output):
        cache = output.past_key_values
        if isinstance(cache, PrunableCache) and cache.entry_count is not None:
            assert_counts_match_tensors(cache)
            caches.append(cache)

    return model.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_host_counts_equal_the_cache_tensors_after_every_forward(name, params, ref_method, family):
    model = tiny_model(family=family)
    data = inputs("padded", family=family)
    caches = []
    with tp.prune(model, name, **params) as run:
        handle = counting_probe(model, caches)
        try:
            greedy(model, data, 12)
        finally:
            handle.remove()
    assert len(caches) == 12
    # and the report, built from the host counters, says the same
    last = caches[-1]
    assert run.report.cache_entries == [layer.valid.sum(1).tolist() for layer in last.layers]
    assert run.report.visual_cache_entries[-1] == [layer.visual.sum(1).tolist() for layer in last.layers]


@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_host_counts_follow_beams_and_return_sequences(name, params, ref_method):
    model = tiny_model()
    data = inputs("padded")
    caches = []
    with tp.prune(model, name, **params):
        handle = counting_probe(model, caches)
        try:
            with torch.no_grad():
                model.generate(**data, max_new_tokens=10, num_beams=3, num_return_sequences=2, do_sample=False)
                model.generate(**data, max_new_tokens=6, do_sample=True, num_return_sequences=2)
        finally:
            handle.remove()
    assert caches


def test_host_counts_across_a_padded_second_turn():
    model = tiny_model()
    caches = []
    ids, mask = new_turn(3)
    with tp.prune(model, "st3", start_layer=1, stride=1, ratio=0.4, final_fraction=0.2, horizon=12):
        handle = counting_probe(model, caches)
        try:
            two_turns(model, inputs("padded"), ids, mask)
        finally:
            handle.remove()
    assert len(caches) == FIRST + SECOND
