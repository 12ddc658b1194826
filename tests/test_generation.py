"""Generation modes, the real loading path and text-only inputs."""

import pytest
import torch
from conftest import FAMILIES, STRATEGY_CASES, greedy, inputs, tiny_model

import tokenprune as tp
from tokenprune.cache import PrunableCache


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_beam_search_runs_and_cache_metadata_follows_beams(name, params, ref_method, family):
    model = tiny_model(family=family)
    data = inputs("padded", family=family)
    with torch.no_grad(), tp.prune(model, name, **params) as run:
        out = model.generate(
            **data, max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False, return_dict_in_generate=True
        )
    assert out.sequences.shape[0] == 6
    cache = out.past_key_values
    assert isinstance(cache, PrunableCache)
    for layer in cache.layers:  # metadata stays aligned with the reordered keys
        assert layer.valid.shape == layer.keys.shape[:1] + layer.keys.shape[2:3]
    assert len(run.report.visual_cache_entries[0][0]) == 9  # 3 samples x 3 beams


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_zero_removal_equals_baseline(family):
    model = tiny_model(family=family)
    data = inputs("padded", family=family)
    kwargs = dict(max_new_tokens=10, num_beams=3, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        base = model.generate(**data, **kwargs)
        with tp.prune(model, "st3", ratio=0.0, final_fraction=1.0):
            pruned = model.generate(**data, **kwargs)
    assert torch.equal(base.sequences, pruned.sequences)
    assert torch.equal(base.sequences_scores, pruned.sequences_scores)


def test_beam_search_with_pruning_is_deterministic_and_differs_from_baseline_cache():
    model = tiny_model()
    data = inputs("padded")
    kwargs = dict(max_new_tokens=10, num_beams=2, do_sample=False)
    with torch.no_grad(), tp.prune(model, "st3", start_layer=1, stride=1, ratio=0.5) as run:
        first = model.generate(**data, **kwargs)
        second = model.generate(**data, **kwargs)
    assert torch.equal(first, second)
    assert len(run.reports) == 2  # one report per generate call


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_runs_and_zero_removal_matches_seeded_baseline(family):
    model = tiny_model(family=family)
    data = inputs("padded", family=family)
    kwargs = dict(max_new_tokens=12, do_sample=True, top_k=20, temperature=0.8)
    with torch.no_grad():
        torch.manual_seed(3)
        base = model.generate(**data, **kwargs)
        with tp.prune(model, "fastv", ratio=0.0):
            torch.manual_seed(3)
            same = model.generate(**data, **kwargs)
        with tp.prune(model, "st3") as run:
            torch.manual_seed(3)
            sampled = model.generate(**data, **kwargs)
    assert torch.equal(base, same)
    assert sampled.shape[0] == base.shape[0]
    assert run.report.decode_steps >= 1


@pytest.mark.parametrize("family", FAMILIES)
def test_eos_and_stopping_criteria_end_samples_where_the_pruned_run_says(family):
    """Early stopping (eos per sample, a stopping criterion for all) cuts the same pruned generation short."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    model = tiny_model(family=family)
    data = inputs("padded", family=family)
    prompt = data["input_ids"].shape[1]
    with tp.prune(model, "st3", horizon=10):
        full = greedy(model, data, 10).sequences[:, prompt:]
    eos = int(full[0, 2])  # sample 0 emits it at step 2 (maybe others too)
    stops = [int((row == eos).nonzero()[0]) if (row == eos).any() else None for row in full]

    class AfterSix(StoppingCriteria):
        def __call__(self, ids, scores, **kwargs):
            return torch.full((ids.shape[0],), ids.shape[1] - prompt >= 6, dtype=torch.bool)

    with torch.no_grad(), tp.prune(model, "st3", horizon=10) as run:
        out = model.generate(
            **data,
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
            stopping_criteria=StoppingCriteriaList([AfterSix()]),
        )[:, prompt:]
    assert out.shape[1] == (3 if all(s is not None and s <= 2 for s in stops) else 6)
    for b, stop in enumerate(stops):
        end = out.shape[1] if stop is None else min(stop + 1, out.shape[1])
        assert torch.equal(out[b, :end], full[b, :end])
        assert (out[b, end:] == 0).all()  # padded after its eos
    assert run.report.decode_steps == out.shape[1] - 1


def test_real_loading_path(tmp_path):
    """save_pretrained -> from_pretrained -> prune gives what pruning the in-memory model gives."""
    from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration

    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    data = inputs("padded")
    with tp.prune(model, "st3") as run_a:
        a = greedy(model, data, 10)
    for other in (loaded, auto):
        with tp.prune(other, "st3") as run_b:
            b = greedy(other, data, 10)
        assert torch.equal(a.sequences, b.sequences)
        assert run_a.report.to_dict() == run_b.report.to_dict()


def test_text_only_inputs_pass_through_untouched():
    model = tiny_model()
    text = {
        "input_ids": torch.randint(3, 500, (3, 6), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.ones(3, 6, dtype=torch.long),
    }
    base = greedy(model, text, 10)
    with tp.prune(model, "vtw", k=0) as run:
        out = greedy(model, text, 10)
    assert torch.equal(base.sequences, out.sequences)
    assert all(torch.equal(a, b) for a, b in zip(base.logits, out.logits, strict=True))
    assert not isinstance(out.past_key_values, PrunableCache)
    assert run.report.to_dict()["flops"] == {}


def test_inputs_embeds_are_supported():
    model = tiny_model()
    data = inputs("single")
    embeds = model.get_input_embeddings()(data["input_ids"])
    with torch.no_grad():
        with tp.prune(model, "fastv", k=2, ratio=0.5) as by_ids:
            a = model(**data).logits
        with tp.prune(model, "fastv", k=2, ratio=0.5) as by_embeds:
            b = model(
                inputs_embeds=embeds, attention_mask=data["attention_mask"], pixel_values=data["pixel_values"]
            ).logits
    assert by_ids.report.kept_visual == by_embeds.report.kept_visual
    torch.testing.assert_close(a, b)


def test_generate_without_cache_prunes_every_forward_and_agrees_on_first_token():
    model = tiny_model()
    data = inputs("padded")
    with torch.no_grad(), tp.prune(model, "fastv", k=2, ratio=0.5) as run:
        cached = model.generate(**data, max_new_tokens=4, do_sample=False)
        uncached = model.generate(**data, max_new_tokens=4, do_sample=False, use_cache=False)
    prompt = data["input_ids"].shape[1]
    assert torch.equal(cached[:, prompt], uncached[:, prompt])
    # without a cache every step is a full forward, pruned again: one report per forward
    assert len(run.reports) == 1 + 4
    assert run.report.prompt_tokens == [p + 3 for p in run.reports[0].prompt_tokens]


def test_interleaved_caches_report_to_their_own_prefill():
    """Two conversations decoded alternately inside one context each extend their own report."""
    model = tiny_model()
    a, b = inputs("single", seed=0), inputs("padded", seed=1)
    with torch.no_grad(), tp.prune(model, "st3", horizon=6) as run:
        out_a = model(**a)
        out_b = model(**b)
        for _ in range(3):
            out_a = model(input_ids=out_a.logits[:, -1:].argmax(-1), past_key_values=out_a.past_key_values)
        out_b = model(input_ids=out_b.logits[:, -1:].argmax(-1), past_key_values=out_b.past_key_values)
    first, second = run.reports
    assert (first.batch_size, first.decode_steps) == (1, 3)
    assert (second.batch_size, second.decode_steps) == (3, 1)


def test_cache_from_another_context_is_refused():
    model = tiny_model()
    data = inputs("single")
    with torch.no_grad():
        with tp.prune(model, "fastv"):
            out = model(**data)
        with tp.prune(model, "fastv"), pytest.raises(tp.UnsupportedInputError, match="another tokenprune.prune"):
            model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values)


def test_text_only_generation_may_emit_the_image_token_id():
    from transformers import LogitsProcessor, LogitsProcessorList

    model = tiny_model()
    image_token = model.config.image_token_id

    class ForceImageToken(LogitsProcessor):
        def __call__(self, ids, scores):
            return torch.full_like(scores, -1e9).index_fill_(1, torch.tensor([image_token]), 0.0)

    text = {"input_ids": torch.tensor([[1, 5, 6, 7, 8]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    kwargs = dict(max_new_tokens=4, do_sample=False, logits_processor=LogitsProcessorList([ForceImageToken()]))
    base = model.generate(**text, **kwargs)
    with tp.prune(model, "fastv"):
        out = model.generate(**text, **kwargs)
    assert torch.equal(base, out)
    assert (out[0, 5:] == image_token).all()


def test_positional_call_of_the_entry_module_keeps_every_argument():
    model = tiny_model()
    data = inputs("single")
    with torch.no_grad():
        base = model.model(data["input_ids"], data["pixel_values"]).last_hidden_state
        with tp.prune(model, "fastv", ratio=0.0):
            same = model.model(data["input_ids"], data["pixel_values"]).last_hidden_state
        with tp.prune(model, "fastv", k=2, ratio=0.5) as run:
            model.model(data["input_ids"], data["pixel_values"])
    assert torch.equal(base, same)
    assert run.report.prefill_visual_tokens[2] == [18]


@pytest.mark.parametrize("params", [dict(ratio=0.0), dict(k=2, ratio=0.5)], ids=["zero-removal", "fastv"])
def test_manual_decode_loop_with_its_own_cache_object(params):
    """A loop that keeps reusing its own DynamicCache (as many users write) gets the same as generate()."""
    from transformers.cache_utils import DynamicCache

    model = tiny_model()
    data = inputs("single")

    def loop():
        cache = DynamicCache()
        out = model(**data, past_key_values=cache, use_cache=True)
        tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
        for _ in range(5):
            out = model(input_ids=tokens[-1], past_key_values=cache, use_cache=True)
            tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
        return torch.cat(tokens, 1)

    with torch.no_grad():
        base = loop()
        with tp.prune(model, "fastv", **params):
            looped = loop()
            generated = greedy(model, data, 6).sequences[:, data["input_ids"].shape[1] :]
    assert torch.equal(looped, generated)
    if params["ratio"] == 0.0:
        assert torch.equal(looped, base)


def test_pruned_cache_reused_after_the_context_is_refused_clearly():
    model = tiny_model()
    data = inputs("single")
    with torch.no_grad():
        with tp.prune(model, "fastv", k=2, ratio=0.5):
            out = model(**data)
        with pytest.raises(tp.UnsupportedInputError, match="context that has ended"):
            model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values)


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_training_forward_with_gradient_checkpointing(family):
    """Gradient checkpointing in training mode runs the layers without the cache (transformers passes them
    past_key_values=None): the pruned forward then scores from the key projections, as with use_cache=False,
    and its loss and gradients equal the same pruned forward without checkpointing."""
    from conftest import fresh_model

    data = inputs("padded", family=family)
    labels = data["input_ids"].masked_fill(~data["attention_mask"].bool(), -100)
    results = []
    for checkpointing in (False, True):
        model = fresh_model(family)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        with tp.prune(model, "fastv", k=2, ratio=0.5) as run:
            out = model(**data, labels=labels)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.model.language_model.parameters() if p.grad is not None]
        results.append((out.loss.detach(), grads, run.report.kept_visual))
    (loss, grads, kept), (loss_gc, grads_gc, kept_gc) = results
    assert kept == kept_gc and kept  # the same tokens were removed
    torch.testing.assert_close(loss_gc, loss, atol=1e-6, rtol=0)
    assert len(grads_gc) == len(grads) > 0
    for a, b in zip(grads_gc, grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
