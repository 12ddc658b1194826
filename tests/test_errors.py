"""Every bad input gets a tokenprune error that names the problem, and leaves the model untouched."""

import pytest
import torch
from conftest import LAYERS, greedy, inputs, tiny_model

import tokenprune as tp
from tokenprune.tiny import TinySpec, build_model


def hooks(model):
    return {n: (list(m._forward_pre_hooks), list(m._forward_hooks)) for n, m in model.named_modules()}


def test_unknown_strategy_lists_available():
    with pytest.raises(tp.UnknownStrategyError, match=r"'nope'.*fastv, st3, vtw"):
        tp.prune(tiny_model(), "nope")


@pytest.mark.parametrize(
    "name,params,field",
    [
        ("fastv", dict(ratio=1.5), "ratio"),
        ("fastv", dict(ratio=-0.1), "ratio"),
        ("fastv", dict(k=0), "k"),
        ("fastv", dict(query="first"), "query"),
        ("st3", dict(stride=0), "stride"),
        ("st3", dict(final_fraction=1.2), "final_fraction"),
        ("st3", dict(final_fraction=-0.5), "final_fraction"),
        ("st3", dict(ratio=2), "ratio"),
        ("st3", dict(start_layer=0), "start_layer"),
        ("st3", dict(decay="cubic"), "decay"),
        ("st3", dict(horizon=0), "horizon"),
        ("vtw", dict(k=-1), "k"),
        ("vtw", dict(kk=3), "kk"),
    ],
)
def test_parameter_out_of_range_rejected_at_build(name, params, field):
    with pytest.raises(tp.InvalidParameterError, match=rf"'{name}'.*{field}"):
        tp.resolve_strategy(name, **params)


@pytest.mark.parametrize(
    "name,params,field",
    [
        ("fastv", dict(k=LAYERS + 1), "k"),
        ("vtw", dict(k=LAYERS + 5), "k"),
        ("st3", dict(start_layer=LAYERS + 1), "start_layer"),
    ],
)
def test_layer_beyond_model_depth(name, params, field):
    model = tiny_model()
    before = hooks(model)
    with pytest.raises(tp.InvalidParameterError, match=rf"{field}={params[field]}.*{LAYERS} decoder layers"):
        with tp.prune(model, name, **params):
            pass
    assert hooks(model) == before


def test_unsupported_model_class_names_supported_ones():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(tp.UnsupportedModelError, match="LlamaForCausalLM.*LlavaForConditionalGeneration"):
        tp.prune(model, "fastv")


def test_prune_twice_is_an_error_and_first_context_survives():
    model = tiny_model()
    data = inputs("single")
    with tp.prune(model, "fastv", k=2, ratio=0.5) as run:
        with pytest.raises(tp.AlreadyPrunedError, match="already inside"):
            with tp.prune(model, "vtw", k=1):
                pass
        greedy(model, data, 3)
    assert run.report.prefill_visual_tokens[2] == [18]


def test_a_sample_without_real_tokens_is_refused_without_touching_the_model():
    """Padding anywhere is served (tests/test_reference.py, test_identity.py); a sample with no real token is
    refused before anything changes."""
    model = tiny_model()
    data = inputs("padded")
    bad = dict(data, attention_mask=data["attention_mask"].clone())
    bad["attention_mask"][1] = 0
    before = greedy(model, data, 5)
    with pytest.raises(tp.UnsupportedInputError, match=r"rows \[1\] have no real token"):
        with tp.prune(model, "st3"):
            greedy(model, bad, 5)
    after = greedy(model, data, 5)
    assert torch.equal(before.sequences, after.sequences)


def test_unsupported_attention_backend():
    model = build_model(TinySpec(layers=2, attn="flex_attention"))
    with pytest.raises(tp.UnsupportedModelError, match="flex_attention.*sdpa.*eager"):
        with tp.prune(model, "fastv", k=1):
            pass


def test_decoder_layer_count_mismatch():
    model = build_model(TinySpec(layers=3))
    del model.model.language_model.layers[2]
    with pytest.raises(tp.UnsupportedModelError, match="2 decoder layers found but config.num_hidden_layers=3"):
        tp.prune(model, "fastv", k=1)


def test_strategy_object_with_params_and_bad_config_dict():
    strategy = tp.resolve_strategy("fastv", k=1)
    with pytest.raises(tp.InvalidParameterError, match="ready Strategy"):
        tp.resolve_strategy(strategy, k=2)
    with pytest.raises(tp.InvalidParameterError, match="'name'"):
        tp.resolve_strategy({"k": 2})
    with pytest.raises(tp.InvalidParameterError, match="strategy must be"):
        tp.resolve_strategy(3)
    assert tp.resolve_strategy({"name": "fastv", "k": 1}).params == strategy.params


def test_decay_outside_generate_needs_horizon():
    model = tiny_model()
    data = inputs("single")
    with torch.no_grad(), tp.prune(model, "st3") as run:
        out = model(**data)  # a single forward is fine
        with pytest.raises(tp.UnsupportedInputError, match="horizon"):
            model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values)
    assert run.report.prefill_visual_tokens
    with torch.no_grad(), tp.prune(model, "st3", horizon=4) as run:
        out = model(**data)
        model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values)
    assert run.report.decode_steps == 1


def test_errors_are_tokenprune_errors():
    for cls in (
        tp.UnknownStrategyError,
        tp.InvalidParameterError,
        tp.UnsupportedModelError,
        tp.UnsupportedInputError,
        tp.AlreadyPrunedError,
        tp.PluginError,
    ):
        assert issubclass(cls, tp.TokenpruneError)
