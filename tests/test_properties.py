"""Property-based invariants of tokenprune (hypothesis), across LLaVA-1.5 / LLaVA-NeXT and every strategy.

Each example draws a tiny random model (2-8 layers, MHA or GQA, LLaMA or Mistral backbone, sdpa or
eager), a left-padded batch (1-4 samples, random text before/after, 0-2 images each, LLaVA-NeXT anyres
image sizes giving ragged visual counts and newline tokens, sometimes with adapter option
prune_newlines=True), 1-8 new tokens and valid strategy parameters, then checks:

1. zero-removal settings reproduce the unmodified model bit for bit, through further chat turns too,
   with report ratios of exactly 1; text-only inputs pass through untouched whatever the strategy;
2. kept visual sets are nested, contain only prunable visual tokens, follow the schedule / decay counts,
   and text and generated tokens are never removed (checked on the cache's per-entry metadata);
3. outputs equal the masked eager reference (tests/reference.py);
4. a batch equals its samples run alone, and extra left padding changes nothing;
5. the model is exactly as before after the context, also when generate raises inside it (stopping
   criteria, logits processor, half-way through a decoder layer), and no hook is left;
6. the report is consistent: entries = text + generated + kept visual, FLOPs and KV bytes by hand and
   against the cache tensors held, never above the baseline (scoring rows aside);
7. one or two further generate() calls continuing the pruned cache (multi-turn, padded turns) equal the
   reference's further turns, with the same counts / FLOPs / KV bytes formulas.

Profiles (env HYPOTHESIS_PROFILE): "fast" (default, CI: 40 examples per property, derandomized, no
example database, models at most 96 wide; ~30 s in all on 2 CPU cores) and "thorough" (500 examples per
property, random, models up to 256 wide). HYPOTHESIS_MAX_EXAMPLES overrides either's example count.
Failures print a reproduction blob (@reproduce_failure) and the drawn case / strategy (note()).
"""

import contextlib
import json
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

_MAX_EXAMPLES = os.environ.get("HYPOTHESIS_MAX_EXAMPLES")
settings.register_profile(
    "fast",
    max_examples=int(_MAX_EXAMPLES or 40),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=int(_MAX_EXAMPLES or 500),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

from conftest import reference_prunable, sample_of  # noqa: E402
from properties_support import (  # noqa: E402
    assert_same_generation,
    assert_same_tensors,
    cache_bytes,
    cases,
    cut_layers,
    expected_prefill,
    expected_visual_cache,
    fed_tokens,
    generate,
    generate_turns,
    hooks,
    horizon_of,
    placeholders,
    prunable_mask,
    ref_method,
    strategies,
    structure,
    tensors,
    turns,
    zero_removal,
)
from reference import reference_generate  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList  # noqa: E402

import tokenprune as tp  # noqa: E402
from tokenprune.cache import PrunableCache  # noqa: E402


@st.composite
def pruned_cases(draw, **case_kwargs):
    """A case, a strategy (name, params) and adapter options: LLaVA-NeXT sometimes with prune_newlines=True."""
    case = draw(cases(**case_kwargs))
    name, params = draw(strategies(case.layers))
    options = {}
    if case.spec.family == "llava_next" and draw(st.integers(0, 3)) == 0:
        options = {"prune_newlines": True}
    return case, name, params, options


def _describe(case, name, params, options=None):
    note(f"case={case}")
    note(f"strategy={name} {params} adapter_options={options}")
    # coverage of the drawn space, shown by --hypothesis-show-statistics
    variant = params.get("query") if name == "fastv" else params.get("decay") if name == "st3" else ""
    event(f"{name} {variant} {case.spec.family} {case.spec.attn}{' prune_newlines' if options else ''}")
    event(f"batch {case.batch_size}")


# ======================================================================================= 1. zero removal
@st.composite
def zero_cases(draw):
    case = draw(cases())
    data = case.inputs()
    max_visual = int(placeholders(case.model(), data).sum(1).max())
    options = {"prune_newlines": True} if case.spec.family == "llava_next" and draw(st.booleans()) else {}
    return case, draw(zero_removal(case.layers, max_visual)), options


@given(zero_cases(), st.data())
def test_zero_removal_is_bit_identical(drawn, data_strategy):
    """fastv ratio 0 / k=layers / a ratio too small to remove a token, vtw k=layers, st3 ratio 0 or
    start_layer=layers without decay: tokens and every step's logits equal the unmodified model's exactly,
    also through further chat turns continuing the cache (sometimes drawn)."""
    case, (name, params), options = drawn
    _describe(case, name, params, options)
    model, data = case.model(), case.inputs()
    further = data_strategy.draw(st.one_of(st.just(()), turns(case.batch_size, case.spec.vocab)), label="turns")
    base_tokens, base_logits, base = generate_turns(model, data, case.steps, further)
    with tp.prune(model, name, adapter_options=options, **params) as run:
        tokens, logits, pruned = generate_turns(model, data, case.steps, further)
    assert torch.equal(tokens, base_tokens)
    assert len(logits) == len(base_logits) == case.steps + sum(t.steps for t in further)
    for a, b in zip(logits, base_logits, strict=True):
        assert torch.equal(a, b)
    flops, kv = run.report.flops(), run.report.kv_bytes()
    assert (flops["prefill_ratio"], flops["decode_ratio"], flops["total_ratio"]) == (1.0, 1.0, 1.0)
    assert (flops["scoring_prefill"], flops["scoring_decode"]) == (0, 0)
    assert kv["total"]["peak_ratio"] == kv["total"]["mean_ratio"] == 1.0
    assert kv["visual"]["peak_ratio"] == kv["visual"]["mean_ratio"] == 1.0
    steps = run.report.visual_cache_entries
    assert all(step == steps[0] for step in steps)  # nothing evicted while decoding


@given(cases(text_only=True), st.data())
def test_text_only_inputs_pass_through_untouched(case, data_strategy):
    name, params = data_strategy.draw(strategies(case.layers))
    _describe(case, name, params)
    model, data = case.model(), case.inputs()
    assert "pixel_values" not in data
    base = generate(model, data, case.steps)
    with tp.prune(model, name, **params) as run:
        out = generate(model, data, case.steps)
    assert torch.equal(out.sequences, base.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.logits, base.logits, strict=True))
    assert not isinstance(out.past_key_values, PrunableCache)
    assert run.reports == []


# ======================================================================================= 2. kept sets, counts
@given(pruned_cases())
def test_kept_sets_nested_prunable_and_counted(drawn):
    case, name, params, options = drawn
    _describe(case, name, params, options)
    model, data = case.model(), case.inputs()
    with tp.prune(model, name, adapter_options=options, **params) as run:
        out = generate(model, data, case.steps)
    report = run.report
    bsz, length = data["input_ids"].shape
    prunable = prunable_mask(model, data, **options)
    visual = prunable.sum(1).tolist()
    real = data["attention_mask"].sum(1).tolist()
    text = [r - n for r, n in zip(real, visual, strict=True)]  # every real prompt token that may not be removed
    assert report.visual_tokens == visual
    assert report.prompt_tokens == real
    per_item = zip(report.visual_tokens_per_image, report.visual_tokens_per_video, strict=True)
    assert [sum(per_image) + sum(per_video) for per_image, per_video in per_item] == visual
    assert report.images == [int(n) for n in case.images]
    assert report.videos == list(case.videos or [0] * bsz)

    # prefill: kept sets per cut layer, nested, inside the prunable tokens, with the schedule's counts
    prefill = expected_prefill(name, params, case.layers, visual)
    kept = report.kept_visual
    assert sorted(kept) == cut_layers(name, params, case.layers)
    previous = [set(prunable[b].nonzero().flatten().tolist()) for b in range(bsz)]
    for layer in sorted(kept):
        assert len(kept[layer]) == bsz
        for b, indices in enumerate(kept[layer]):
            assert indices == sorted(set(indices)), "kept indices are prompt positions, in order, unique"
            assert set(indices) <= previous[b], f"layer {layer} sample {b}: not nested / not prunable"
            assert len(indices) == prefill[layer][b]
            previous[b] = set(indices)
        per_item = zip(report.kept_visual_per_image[layer], report.kept_visual_per_video[layer], strict=True)
        assert [sum(i) + sum(v) for i, v in per_item] == [len(x) for x in kept[layer]]
    assert report.prefill_visual_tokens == prefill
    assert report.prefill_tokens == [[t + p for t, p in zip(text, layer, strict=True)] for layer in prefill]

    # decode: visual cache entries per step follow the decay; text + generated are all still there
    horizon = horizon_of(name, params, case.steps)
    assert report.horizon == (
        horizon if name == "st3" and params["decay"] != "none" and params["final_fraction"] < 1 else None
    )
    expected = expected_visual_cache(name, params, prefill, case.steps, horizon)
    assert report.decode_steps == case.steps - 1
    assert report.visual_cache_entries == expected
    assert report.cache_entries_per_step == [
        [[text[b] + t + layer[b] for b in range(bsz)] for layer in step] for t, step in enumerate(expected)
    ]

    # the cache's own per-entry metadata: per layer and sample, the real non-visual entries are exactly
    # the real non-prunable prompt tokens plus the generated tokens fed back (by RoPE position), and the
    # visual ones are a subset of that layer's prefill kept set of the right size
    positions = data["attention_mask"].cumsum(1) - 1
    cache = out.past_key_values
    assert isinstance(cache, PrunableCache)
    for i, layer in enumerate(cache.layers):
        cut = max([c for c in kept if c <= i], default=None)
        assert layer.keys.shape[2] >= max(int(n) for n in layer.valid.sum(1))
        for b in range(bsz):
            valid, vis, pos = layer.valid[b], layer.visual[b], layer.positions[b]
            prompt_text = (data["attention_mask"][b].bool() & ~prunable[b]).nonzero().flatten()
            want_text = sorted(positions[b, prompt_text].tolist() + list(range(real[b], real[b] + case.steps - 1)))
            assert sorted(pos[valid & ~vis].tolist()) == want_text, f"layer {i} sample {b}: text entries"
            allowed = prunable[b].nonzero().flatten() if cut is None else torch.tensor(kept[cut][b], dtype=torch.long)
            got = pos[valid & vis].tolist()
            assert set(got) <= set(positions[b, allowed].tolist()), f"layer {i} sample {b}: visual entries"
            assert len(got) == expected[-1][i][b]


# ======================================================================================= 3. masked reference
@given(pruned_cases())
def test_equals_masked_reference(drawn):
    case, name, params, options = drawn
    _describe(case, name, params, options)
    model, data = case.model(), case.inputs()
    with tp.prune(model, name, adapter_options=options, **params) as run:
        out = generate(model, data, case.steps)
    eager = case.eager()
    prunable = reference_prunable(eager, data, **options)
    ref = reference_generate(eager, data, ref_method(name, params), case.steps, prunable=prunable)
    assert run.report.kept_visual == ref.kept
    assert run.report.visual_cache_entries == ref.visual_per_step
    tokens = out.sequences[:, data["input_ids"].shape[1] :]
    ties = assert_same_generation(out.logits, tokens, ref.logits, ref.tokens, [(b, b) for b in range(case.batch_size)])
    note(f"rows stopped at a greedy near-tie: {ties}")


# ======================================================================================= 4. batching, padding
@given(pruned_cases(min_batch=2))
def test_batch_equals_per_sample(drawn):
    case, name, params, options = drawn
    _describe(case, name, params, options)
    model, data = case.model(), case.inputs()
    with tp.prune(model, name, adapter_options=options, **params) as run:
        out = generate(model, data, case.steps)
    batch = run.report
    length = data["input_ids"].shape[1]
    for b in range(case.batch_size):
        single = sample_of(data, b, list(case.images))
        pad = length - single["input_ids"].shape[1]
        with tp.prune(model, name, adapter_options=options, **params) as run_b:
            alone = generate(model, single, case.steps)
        assert_same_generation(
            out.logits,
            out.sequences[:, length:],
            alone.logits,
            alone.sequences[:, length - pad :],
            [(b, 0)],
            what=f"sample {b}",
        )
        if not case.visual_items[
            b
        ]:  # a text-only sample alone passes through untouched; in the batch nothing of it goes
            assert run_b.reports == []
            assert batch.visual_tokens[b] == 0
            assert all(layer[b] == 0 for step in batch.visual_cache_entries for layer in step)
            continue
        alone_report = run_b.report
        assert [layer[b] for layer in batch.prefill_visual_tokens] == [
            layer[0] for layer in alone_report.prefill_visual_tokens
        ]
        assert [[layer[b] for layer in step] for step in batch.visual_cache_entries] == [
            [layer[0] for layer in step] for step in alone_report.visual_cache_entries
        ]
        assert {layer: [i - pad for i in kept[b]] for layer, kept in batch.kept_visual.items()} == {
            layer: kept[0] for layer, kept in alone_report.kept_visual.items()
        }


@given(pruned_cases(), st.integers(1, 8))
def test_extra_left_padding_changes_nothing(drawn, extra):
    """The same batch with `extra` more padding columns on the left (batch 1 included) gives the same."""
    case, name, params, options = drawn
    _describe(case, name, params, options)
    model, data = case.model(), case.inputs()
    padded = dict(data)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):  # every per-token input (Qwen-VL's types)
        if key in data:
            padded[key] = torch.cat([data[key].new_zeros(case.batch_size, extra), data[key]], 1)
    with tp.prune(model, name, adapter_options=options, **params) as run:
        out = generate(model, data, case.steps)
    with tp.prune(model, name, adapter_options=options, **params) as run_padded:
        out_padded = generate(model, padded, case.steps)
    length = data["input_ids"].shape[1]
    assert_same_generation(
        out.logits,
        out.sequences[:, length:],
        out_padded.logits,
        out_padded.sequences[:, length + extra :],
        [(b, b) for b in range(case.batch_size)],
    )
    a, b = run.report, run_padded.report
    assert (a.prefill_visual_tokens, a.visual_cache_entries, a.cache_entries_per_step) == (
        b.prefill_visual_tokens,
        b.visual_cache_entries,
        b.cache_entries_per_step,
    )
    assert {layer: [[i + extra for i in s] for s in kept] for layer, kept in a.kept_visual.items()} == b.kept_visual


# ======================================================================================= 5. model restored
class Boom(Exception):
    pass


class _RaiseAt:
    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def tick(self):
        self.calls += 1
        if self.calls >= self.at:
            raise Boom(f"call {self.calls}")


class RaisingCriteria(StoppingCriteria, _RaiseAt):
    def __call__(self, input_ids, scores, **kwargs):
        self.tick()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class RaisingProcessor(LogitsProcessor, _RaiseAt):
    def __call__(self, input_ids, scores):
        self.tick()
        return scores


@given(
    pruned_cases(),
    # decoder_layer twice: the one failure that interrupts a forward half-way (engine state mid-prefill/decode)
    st.sampled_from(
        ["stopping_criteria", "logits_processor", "decoder_layer", "decoder_layer", "after_generate", "no_exception"]
    ),
    st.data(),
)
def test_model_restored_after_context_even_after_exceptions(drawn, failure, data_strategy):
    """Weights (values and objects), hooks, module attributes and configs are as before; the unpruned
    outputs are bit-identical after; a failed generate leaves nothing behind that changes a later pruned run,
    whether the context is left by the exception or the same context generates again."""
    case, name, params, options = drawn
    _describe(case, name, params, options)
    model, data = case.model(), case.inputs()
    base = generate(model, data, case.steps)
    state = (hooks(model), structure(model), model.config.to_dict(), model.generation_config.to_dict())
    weights = tensors(model)
    with tp.prune(model, name, adapter_options=options, **params) as clean_run:
        clean = generate(model, data, case.steps)

    at = data_strategy.draw(st.integers(1, case.steps), label="raise at call")  # each hook point runs `steps` times
    recover = data_strategy.draw(st.booleans(), label="generate again in the same context")
    note(f"failure={failure} at={at} recover={recover}")
    extra, own_hook = {}, None
    if failure == "stopping_criteria":
        extra = dict(stopping_criteria=StoppingCriteriaList([RaisingCriteria(at)]))
    elif failure == "logits_processor":
        extra = dict(logits_processor=LogitsProcessorList([RaisingProcessor(at)]))
    elif failure == "decoder_layer":  # mid-forward: after this layer ran (its cache entries pruned) at call `at`
        layer = model.model.language_model.layers[data_strategy.draw(st.integers(0, case.layers - 1), label="layer")]
        raiser = _RaiseAt(at)
        own_hook = layer.register_forward_hook(lambda *_: raiser.tick())
    expect_boom = pytest.raises(Boom) if failure != "no_exception" else contextlib.nullcontext()
    try:
        with expect_boom:
            with tp.prune(model, name, adapter_options=options, **params) as run:
                if recover and failure not in ("after_generate", "no_exception"):
                    with pytest.raises(Boom):
                        generate(model, data, case.steps, **extra)
                    if own_hook is not None:
                        own_hook.remove()
                    again = generate(model, data, case.steps)
                    assert torch.equal(again.sequences, clean.sequences)
                    assert all(torch.equal(a, b) for a, b in zip(again.logits, clean.logits, strict=True))
                    assert run.report.to_dict() == clean_run.report.to_dict()
                    raise Boom("leave the context")
                generate(model, data, case.steps, **extra)
                if failure == "after_generate":
                    raise Boom("after generate, in the with-body")
    finally:
        if own_hook is not None:
            own_hook.remove()

    assert not run.active
    assert hooks(model) == state[0], "a hook was left on the model"
    assert structure(model) == state[1]
    assert (model.config.to_dict(), model.generation_config.to_dict()) == state[2:]
    assert_same_tensors(weights, tensors(model))
    after = generate(model, data, case.steps)
    assert torch.equal(after.sequences, base.sequences)
    assert all(torch.equal(a, b) for a, b in zip(after.logits, base.logits, strict=True))
    with tp.prune(model, name, adapter_options=options, **params) as rerun:
        again = generate(model, data, case.steps)
    assert torch.equal(again.sequences, clean.sequences)
    assert all(torch.equal(a, b) for a, b in zip(again.logits, clean.logits, strict=True))
    assert rerun.report.to_dict() == clean_run.report.to_dict()


# ======================================================================================= 6. report
@given(pruned_cases())
def test_report_flops_and_kv_bytes(drawn):
    case, name, params, options = drawn
    _describe(case, name, params, options)
    model, data = case.model(), case.inputs()
    base = generate(model, data, case.steps)
    with tp.prune(model, name, adapter_options=options, **params) as run:
        out = generate(model, data, case.steps)
    report = run.report
    flops, kv = report.flops(), report.kv_bytes()
    json.dumps(report.to_dict())

    bsz, steps, layers = case.batch_size, case.steps, case.layers
    real = data["attention_mask"].sum(1).tolist()
    visual = prunable_mask(model, data, **options).sum(1).tolist()
    text = [r - n for r, n in zip(real, visual, strict=True)]
    prefill = expected_prefill(name, params, layers, visual)
    vis_steps = expected_visual_cache(name, params, prefill, steps, horizon_of(name, params, steps))
    entries = [[[text[b] + t + layer[b] for b in range(bsz)] for layer in step] for t, step in enumerate(vis_steps)]
    assert report.cache_entries_per_step == entries  # text + generated + kept visual
    assert report.cache_entries == entries[-1]

    # FLOPs by hand (report.py's formulas over independently expected token counts)
    s = case.spec
    d, h, kvh, dh, f, vocab = s.hidden, s.heads, s.kv_heads, s.hidden // s.heads, s.intermediate, s.vocab
    linear = 2 * (d * h * dh + 2 * d * kvh * dh + h * dh * d + 3 * d * f)
    lm_head = 2 * d * vocab

    def prefill_layer(n):
        return n * linear + 4 * h * dh * n * (n + 1) // 2

    def decode_token(e):  # one new token attending `e` entries (itself included)
        return linear + 4 * h * dh * e

    assert flops["baseline_prefill"] == layers * sum(map(prefill_layer, real)) + bsz * lm_head
    assert flops["prefill"] == (
        sum(prefill_layer(t + p) for layer in prefill for t, p in zip(text, layer, strict=True))
        + bsz * lm_head
        + flops["scoring_prefill"]
    )
    assert (
        flops["baseline_decode"]
        == sum(layers * decode_token(r + t) for t in range(1, steps) for r in real) + (steps - 1) * bsz * lm_head
    )
    assert (
        flops["decode"]
        == sum(decode_token(e) for step in entries[1:] for layer in step for e in layer)
        + (steps - 1) * bsz * lm_head
        + flops["scoring_decode"]
    )
    # never more model work than the baseline (the scoring rows are tokenprune's honest overhead)
    assert flops["prefill"] - flops["scoring_prefill"] <= flops["baseline_prefill"]
    assert flops["decode"] - flops["scoring_decode"] <= flops["baseline_decode"]

    # KV bytes: against the tensors actually held, pruned and unpruned
    per_entry = 2 * kvh * dh * 4  # keys + values, fp32
    assert kv["total"]["per_step"][-1] == cache_bytes(out.past_key_values)
    assert kv["total"]["baseline_peak"] == cache_bytes(base.past_key_values)
    assert kv["visual"]["per_step"] == [sum(map(sum, step)) * per_entry for step in vis_steps]
    assert kv["visual"]["baseline_mean"] == layers * sum(visual) * per_entry
    assert kv["total"]["peak"] <= kv["total"]["baseline_peak"]
    assert kv["total"]["mean"] <= kv["total"]["baseline_mean"]
    assert kv["visual"]["mean"] <= kv["visual"]["baseline_mean"]
    assert kv["visual"]["peak"] <= kv["visual"]["baseline_peak"]


# ======================================================================================= 7. multi-turn
@given(pruned_cases(max_steps=5), st.data())
def test_further_turns_continue_the_pruned_cache_like_the_reference(drawn, data_strategy):
    """generate(input_ids=all so far + new turn, past_key_values=previous call's) inside the same context, once
    or twice, equals the reference's further Turns; the VTA horizon stays the first call's max_new_tokens.
    Counts, FLOPs and KV bytes of the whole conversation follow the same formulas as a single call."""
    case, name, params, options = drawn
    _describe(case, name, params, options)
    model, data = case.model(), case.inputs()
    bsz, layers = case.batch_size, case.layers
    further = data_strategy.draw(turns(bsz, case.spec.vocab), label="turns")
    note(f"turns: steps {[t.steps for t in further]}, masks {[t.mask.tolist() for t in further]}")
    with tp.prune(model, name, adapter_options=options, **params) as run:
        tokens, logits, last = generate_turns(model, data, case.steps, further)
    eager = case.eager()
    ref = reference_generate(
        eager,
        data,
        ref_method(name, params),
        case.steps,
        prunable=reference_prunable(eager, data, **options),
        turns=further,
    )
    report = run.report
    assert len(run.reports) == 1  # every continuation extends the first call's report
    assert run.report.kept_visual == ref.kept
    assert report.visual_cache_entries == ref.visual_per_step
    # a near-tie in one turn changes the next turn's input: compare up to it (see the helper)
    ties = assert_same_generation(logits, tokens, ref.logits, ref.tokens, [(b, b) for b in range(bsz)])
    note(f"rows stopped at a greedy near-tie: {ties}")

    # counts from the formulas: the decay runs over every forward, its horizon from the first call
    fed = fed_tokens(bsz, case.steps, further)
    forwards = len(fed)
    assert report.decode_steps == forwards - 1
    visual = prunable_mask(model, data, **options).sum(1).tolist()
    text = [r - n for r, n in zip(data["attention_mask"].sum(1).tolist(), visual, strict=True)]
    prefill = expected_prefill(name, params, layers, visual)
    vis_steps = expected_visual_cache(name, params, prefill, forwards, horizon_of(name, params, case.steps))
    assert report.visual_cache_entries == vis_steps
    seen = [list(text)]
    for step in fed[1:]:
        seen.append([s + q for s, q in zip(seen[-1], step, strict=True)])
    entries = [[[seen[t][b] + layer[b] for b in range(bsz)] for layer in step] for t, step in enumerate(vis_steps)]
    assert report.cache_entries_per_step == entries  # text + everything fed since + kept visual

    # decode FLOPs by hand: q new real tokens of a forward attend the entries before them and causally
    # among themselves (report.py); the baseline sees every real token
    s = case.spec
    d, h, kvh, dh, f = s.hidden, s.heads, s.kv_heads, s.hidden // s.heads, s.intermediate
    linear = 2 * (d * h * dh + 2 * d * kvh * dh + h * dh * d + 3 * d * f)

    def decode(q, e):
        return q * linear + 4 * h * dh * (q * (e - q) + q * (q + 1) // 2)

    lm_head = (forwards - 1) * bsz * 2 * d * s.vocab  # generate computes the last row's logits only
    flops = report.flops()
    real = data["attention_mask"].sum(1).tolist()
    baseline, seen_all = 0, list(real)
    for step in fed[1:]:
        seen_all = [x + q for x, q in zip(seen_all, step, strict=True)]
        baseline += layers * sum(decode(q, x) for q, x in zip(step, seen_all, strict=True))
    assert flops["baseline_decode"] == baseline + lm_head
    pruned = sum(
        decode(q, e) for t in range(1, forwards) for layer in entries[t] for q, e in zip(fed[t], layer, strict=True)
    )
    assert flops["decode"] == pruned + lm_head + flops["scoring_decode"]
    assert flops["decode"] - flops["scoring_decode"] <= flops["baseline_decode"]

    # KV bytes: the tensors held at the end, and the unpruned conversation's (same shapes, any tokens)
    kv = report.kv_bytes()
    _, _, base_last = generate_turns(model, data, case.steps, further)
    assert kv["total"]["per_step"][-1] == cache_bytes(last.past_key_values)
    assert kv["total"]["baseline_peak"] == cache_bytes(base_last.past_key_values)
    assert kv["total"]["peak"] <= kv["total"]["baseline_peak"]
    assert kv["visual"]["mean"] <= kv["visual"]["baseline_mean"]
