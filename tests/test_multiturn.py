"""A second generate() continuing the first call's pruned cache (a new chat turn) is exact.

The new turn's tokens run as one causal chunk against each layer's own (pruned) entries; VTA keeps its
step count and horizon from the first call. Checked against the masked reference, which runs the same
chunk through the unmodified model with explicit per-layer masks.
"""

import pytest
import torch
from conftest import FAMILIES, STRATEGY_CASES, ZERO_REMOVAL, inputs, reference_prunable, tiny_model
from reference import Turn, reference_generate

import tokenprune as tp

FIRST, SECOND = 5, 6


def new_turn(bsz: int, length: int = 4, padded: bool = True):
    ids = torch.randint(3, 500, (bsz, length), generator=torch.Generator().manual_seed(7))
    mask = torch.ones(bsz, length, dtype=torch.long)
    if padded and bsz > 1:
        mask[1, :2] = 0  # sample 1's turn is two tokens shorter: left-padded inside the sequence
        ids[1, :2] = 0
    return ids, mask


def two_turns(model, data, ids, mask, **kwargs):
    gen = dict(do_sample=False, output_logits=True, return_dict_in_generate=True, eos_token_id=None, **kwargs)
    with torch.no_grad():
        first = model.generate(**data, max_new_tokens=FIRST, min_new_tokens=FIRST, **gen)
        done = torch.ones(ids.shape[0], FIRST, dtype=torch.long)
        second = model.generate(
            input_ids=torch.cat([first.sequences, ids], 1),
            attention_mask=torch.cat([data["attention_mask"], done, mask], 1),
            past_key_values=first.past_key_values,
            max_new_tokens=SECOND,
            min_new_tokens=SECOND,
            **gen,
        )
    tokens = torch.cat([first.sequences[:, -FIRST:], second.sequences[:, -SECOND:]], 1)
    return tokens, list(first.logits) + list(second.logits), second


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_second_turn_matches_the_reference(attn, family, name, params, ref_method):
    model, eager = tiny_model(attn, family=family), tiny_model("eager", family=family)
    data = inputs("padded", attn, family=family)
    ids, mask = new_turn(3)
    with tp.prune(model, name, **params) as run:
        tokens, logits, _ = two_turns(model, data, ids, mask)
    ref = reference_generate(
        eager, data, ref_method, FIRST, prunable=reference_prunable(eager, data), turns=(Turn(ids, SECOND, mask),)
    )
    assert torch.equal(tokens, ref.tokens)
    for step, (a, b) in enumerate(zip(logits, ref.logits, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"step {step}")
    assert len(run.reports) == 1  # the second turn extends the first call's report
    assert run.report.visual_cache_entries == ref.visual_per_step
    assert run.report.decode_steps == FIRST - 1 + SECOND


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name,params", ZERO_REMOVAL)
def test_second_turn_zero_removal_is_bit_identical(attn, name, params):
    model = tiny_model(attn)
    data = inputs("padded", attn)
    ids, mask = new_turn(3)
    base_tokens, base_logits, _ = two_turns(model, data, ids, mask)
    with tp.prune(model, name, **params) as run:
        tokens, logits, _ = two_turns(model, data, ids, mask)
    assert torch.equal(tokens, base_tokens)
    assert all(torch.equal(a, b) for a, b in zip(logits, base_logits, strict=True))
    flops = run.report.flops()
    assert flops["decode_ratio"] == 1.0 and flops["prefill_ratio"] == 1.0
    assert run.report.kv_bytes()["total"]["peak_ratio"] == 1.0


def test_second_turn_flops_count_the_chunk():
    """The new turn's tokens are counted as queries: decode FLOPs grow with the turn's length."""
    model = tiny_model()
    data = inputs("padded")
    short, long = new_turn(3, 2, padded=False), new_turn(3, 12, padded=False)
    decode = []
    for ids, mask in (short, long):
        with tp.prune(model, "fastv", k=2, ratio=0.5) as run:
            two_turns(model, data, ids, mask)
        flops = run.report.flops()
        assert flops["decode"] < flops["baseline_decode"]
        decode.append(flops["baseline_decode"])
    a = run.report.arch
    linear = 2 * (
        a.hidden_size * a.num_heads * a.head_dim * 2
        + 2 * a.hidden_size * a.num_kv_heads * a.head_dim
        + 3 * a.hidden_size * a.intermediate_size
    )
    # ten more tokens in each of the three samples' turns: at least their linear FLOPs in every layer
    assert decode[1] - decode[0] >= 10 * 3 * a.layers * linear


def test_a_new_image_in_the_second_turn_is_refused():
    model = tiny_model()
    data = inputs("single")
    with torch.no_grad(), tp.prune(model, "fastv") as run:
        first = model.generate(**data, max_new_tokens=3, return_dict_in_generate=True)
        again = torch.cat([first.sequences, data["input_ids"]], 1)
        with pytest.raises(tp.UnsupportedInputError, match="new image continuing a pruned KV cache"):
            model.generate(
                input_ids=again,
                pixel_values=data["pixel_values"],
                past_key_values=first.past_key_values,
                max_new_tokens=2,
            )
    assert run.report.decode_steps == 2


def test_beam_search_across_turns_is_refused_clearly():
    """transformers keeps every beam in the cache and does not expand a given cache for beams, so the rows
    of the cache and of the continuing input differ: refused with the counts, never silently mixed."""
    model = tiny_model()
    data = inputs("padded")
    ids, mask = new_turn(3)
    with torch.no_grad(), tp.prune(model, "st3"):
        first = model.generate(**data, max_new_tokens=3, return_dict_in_generate=True)
        follow = dict(
            input_ids=torch.cat([first.sequences, ids], 1),
            attention_mask=torch.cat([data["attention_mask"], torch.ones(3, 3, dtype=torch.long), mask], 1),
            max_new_tokens=3,
        )
        with pytest.raises(tp.UnsupportedInputError, match="holds 3 sequences but the input continuing it has 6"):
            model.generate(**follow, past_key_values=first.past_key_values, num_beams=2)
        beamed = model.generate(**data, max_new_tokens=3, num_beams=2, return_dict_in_generate=True)
        with pytest.raises(tp.UnsupportedInputError, match="holds 6 sequences but the input continuing it has 3"):
            model.generate(**follow, past_key_values=beamed.past_key_values)
