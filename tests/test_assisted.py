"""Assisted decoding (`assistant_model`) and prompt-lookup decoding (`prompt_lookup_num_tokens`) under pruning.

Both verify drafted tokens in one forward of the main model (its first forward: the prompt followed by the
drafts) and crop the rejected ones from its cache. Greedy assisted decoding must give exactly the tokens of
greedy decoding of the same pruned model (transformers' own requirement for assisted decoding), keep the same
visual tokens and end with the same cache; removing nothing must equal the unpruned model's assisted decoding
bit for bit. Pruned greedy decoding itself is held to the masked reference in test_reference.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import greedy, inputs, tiny_model

import tokenprune as tp
from tokenprune.cache import ScoreWindow
from tokenprune.engine.rounds import causal_bias

NEW = 12
FAMILIES = ["llava", "llava_next", "qwen2_5_vl"]
STRATEGIES = [("fastv", {}), ("vtw", {"k": 3}), ("st3", {"decay": "none"})]
MODES = ["assistant", "prompt_lookup", "self_assistant"]


def _mode(mode: str, model, family: str) -> dict:
    if mode == "assistant":  # another model of the family: rejects most drafts
        return {"assistant_model": tiny_model(seed=1, family=family)}
    if mode == "self_assistant":  # the pruned model drafts for itself: accepts them (its drafting runs as text)
        return {"assistant_model": model}
    return {"prompt_lookup_num_tokens": 3}


def _generate(model, data, **extra):
    return model.generate(**data, max_new_tokens=NEW, do_sample=False, **extra)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,params", STRATEGIES)
@pytest.mark.parametrize("mode", MODES)
def test_greedy_assisted_decoding_equals_greedy_decoding_of_the_pruned_model(family, name, params, mode):
    model = tiny_model(family=family)
    data = inputs("single", family=family)
    with tp.prune(model, name, **params) as run:
        expected = _generate(model, data)
    reference = run.report
    with tp.prune(model, name, **params) as run:
        got = _generate(model, data, **_mode(mode, model, family))
    assert torch.equal(got, expected)
    report = run.report
    assert report.kept_visual == reference.kept_visual
    assert report.prefill_visual_tokens == reference.prefill_visual_tokens
    assert report.cache_entries == reference.cache_entries  # rejected drafts left the cache
    assert report.visual_cache_entries[-1] == reference.visual_cache_entries[-1]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", MODES)
def test_removing_nothing_equals_the_unpruned_assisted_decoding_bit_for_bit(family, mode):
    model = tiny_model(family=family)
    data = inputs("single", family=family)
    plain = model.generate(
        **data,
        max_new_tokens=NEW,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **_mode(mode, model, family),
    )
    with tp.prune(model, "fastv", ratio=0.0) as run:
        pruned = model.generate(
            **data,
            max_new_tokens=NEW,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **_mode(mode, model, family),
        )
    assert torch.equal(pruned.sequences, plain.sequences)
    assert all(torch.equal(a, b) for a, b in zip(pruned.logits, plain.logits, strict=True))
    # the report's unpruned baseline follows the crops: with nothing removed it is the run itself
    flops, kv = run.report.flops(), run.report.kv_bytes()
    assert flops["prefill_ratio"] == flops["decode_ratio"] == 1.0
    assert kv["total"]["mean_ratio"] == kv["visual"]["mean_ratio"] == 1.0
    assert run.report.cache_entries == [[pruned.sequences.shape[1] - 1]] * len(run.report.cache_entries)


@pytest.mark.parametrize("mode", MODES)
def test_a_decaying_cache_refuses_drafts_naming_the_cause(mode):
    """VTA counts decode forwards; a forward verifying drafts is several steps at once: refused, model untouched."""
    model = tiny_model()
    data = inputs("single")
    before = greedy(model, data, 4)
    with tp.prune(model, "st3"):
        with pytest.raises(tp.UnsupportedInputError, match="its cache decay counts decode forwards"):
            _generate(model, data, **_mode(mode, model, "llava"))
    after = greedy(model, data, 4)
    assert torch.equal(after.sequences, before.sequences)


def test_a_crop_reaches_no_further_than_the_tokens_after_the_prompt():
    model = tiny_model()
    data = inputs("single")
    with tp.prune(model, "fastv"):
        out = model.generate(**data, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        cache = out.past_key_values
        held = [layer.keys.shape[2] for layer in cache.layers]
        with pytest.raises(tp.UnsupportedInputError, match="negative count"):
            cache.crop(2)
        with pytest.raises(tp.UnsupportedInputError, match="cannot be cropped"):
            cache.crop(-(cache.tail.length + 1))
        processed = cache.get_seq_length()
        cache.crop(-2)
        assert cache.get_seq_length() == processed - 2
        assert [layer.keys.shape[2] for layer in cache.layers] == [n - 2 for n in held]
        assert cache.entry_count[:, 0].tolist() == [n - 2 for n in held]


def test_the_score_window_drops_cropped_queries_and_keeps_their_remaining_tokens():
    window = ScoreWindow()
    for columns in (1, 3, 2):
        window.add([torch.zeros(1, 4)], (torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)), columns)
    window.crop(3)  # the last step (2 tokens) goes; of the 3-token step one token goes, and its query with it
    assert window.columns == [1, 2]
    assert window.queries[1] is None and window.has_queries
    bias = causal_bias(window, torch.device("cpu"))
    assert bias.shape == (1, 3)  # one query (step 0) over the window's 3 tokens: it sees its own only
    assert bias[0].tolist() == [0.0, float("-inf"), float("-inf")]
