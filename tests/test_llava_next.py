"""LLaVA-NeXT: anyres visual counts, the image_newline option, both backbones, the real loading path."""

import pytest
import torch
from conftest import STRATEGY_CASES, greedy, inputs, newline_mask, spec, tiny_model
from reference import RefMethod, reference_generate

import tokenprune as tp
from tokenprune.tiny import make_inputs, next_image_tokens

SIZES = [(8, 8), (8, 16), (16, 8), (24, 8), (16, 16), (10, 14), (8, 24), (13, 9)]


@pytest.mark.parametrize("backbone", ["llama", "mistral"])
def test_newlines_and_image_split_match_the_merged_embeddings(backbone):
    """The adapter's newline positions (from transformers' packing of dummy features) equal the positions
    whose merged embedding is the image_newline vector; each image gets its own index."""
    model = tiny_model(family="llava_next", backbone=backbone)
    sizes = [[SIZES[0], SIZES[5]], [SIZES[1]], [SIZES[7], SIZES[3], SIZES[4]], [SIZES[6]]]
    data = make_inputs(spec(family="llava_next"), [2, 5, 1, 3], [4, 2, 6, 1], image_sizes=sizes)
    found = tp.resolve_adapter(model).visual_tokens(model, data)
    newlines = newline_mask(model, data)
    assert torch.equal(found.placeholders & ~found.prunable, newlines)
    assert int(newlines.sum()) > 0
    for b, per_sample in enumerate(sizes):
        counts = [int((found.image_of[b] == i).sum()) for i in range(len(per_sample))]
        assert counts == [next_image_tokens(spec(family="llava_next"), h, w) for h, w in per_sample]
        assert int((found.image_of[b] >= 0).sum()) == int(found.placeholders[b].sum())


def test_visual_counts_differ_per_image_and_budgets_follow_each_sample():
    model = tiny_model(family="llava_next")
    data = inputs("padded", family="llava_next")
    placeholders = data["input_ids"] == model.config.image_token_id
    newlines = newline_mask(model, data)
    with tp.prune(model, "fastv", k=2, ratio=0.3) as run:
        greedy(model, data, 3)
    report = run.report
    expected = (placeholders & ~newlines).sum(1).tolist()
    assert report.visual_tokens == expected and len(set(expected)) == 3
    assert report.prefill_visual_tokens[2] == [round(n * 0.7) for n in expected]


@pytest.mark.parametrize("prune_newlines", [False, True])
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_newline_option_against_the_reference(prune_newlines, name, params, ref_method):
    model = tiny_model("sdpa", family="llava_next")
    eager = tiny_model("eager", family="llava_next")
    data = inputs("padded", family="llava_next")
    newlines = newline_mask(eager, data)
    with tp.prune(model, name, adapter_options={"prune_newlines": prune_newlines}, **params) as run:
        out = greedy(model, data, 8)
    ref = reference_generate(eager, data, ref_method, 8, prunable=None if prune_newlines else ~newlines)
    assert run.report.kept_visual == ref.kept
    assert run.report.visual_cache_entries == ref.visual_per_step
    assert torch.equal(out.sequences[:, data["input_ids"].shape[1] :], ref.tokens)
    for a, b in zip(out.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    placeholders = data["input_ids"] == model.config.image_token_id
    expected = placeholders if prune_newlines else placeholders & ~newlines
    expected[:, -1] = False
    assert run.report.visual_tokens == expected.sum(1).tolist()
    if not prune_newlines:  # every newline entry stays in every layer's cache, whatever was removed
        for layer in out.past_key_values.layers:
            for b in range(3):
                held = set(layer.positions[b][layer.valid[b]].tolist())
                positions = (data["attention_mask"][b].cumsum(0) - 1)[newlines[b]]
                assert set(positions.tolist()) <= held


def test_pruning_newlines_removes_some_when_everything_visual_goes():
    model = tiny_model(family="llava_next")
    data = inputs("single", family="llava_next")
    newlines = newline_mask(model, data)
    for option, remaining in ((False, int(newlines.sum())), (True, 0)):
        with tp.prune(model, "vtw", k=1, adapter_options={"prune_newlines": option}) as run:
            out = greedy(model, data, 2)
        text = int(data["attention_mask"].sum()) - int((data["input_ids"] == model.config.image_token_id).sum())
        assert run.report.prefill_tokens[1] == [text + remaining]
        assert out.past_key_values.layers[1].valid.sum() == text + remaining + 1


def test_mistral_backbone_sliding_window_is_checked():
    """A window longer than prompt + new tokens is exact; a sequence beyond it is refused clearly."""
    model = tiny_model(family="llava_next", backbone="mistral")
    data = inputs("padded", family="llava_next")
    base = greedy(model, data, 6)
    window_model = tiny_model(family="llava_next", backbone="mistral", seed=0)
    length = data["input_ids"].shape[1]
    try:
        window_model.config.text_config.sliding_window = length + 6
        with tp.prune(window_model, "fastv", ratio=0.0):
            same = greedy(window_model, data, 6)
        assert torch.equal(base.sequences, same.sequences)
        window_model.config.text_config.sliding_window = length + 2
        with tp.prune(window_model, "st3") as run, pytest.raises(tp.UnsupportedInputError, match="sliding window"):
            greedy(window_model, data, 6)
        assert run.reports == []
    finally:
        window_model.config.text_config.sliding_window = None


def test_real_loading_path(tmp_path):
    from transformers import AutoModelForImageTextToText, LlavaNextForConditionalGeneration

    model = tiny_model(family="llava_next")
    model.save_pretrained(tmp_path)
    loaded = LlavaNextForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    data = inputs("padded", family="llava_next")
    with tp.prune(model, "st3") as run_a:
        a = greedy(model, data, 6)
    for other in (loaded, auto):
        assert tp.resolve_adapter(other).name == "llava_next"
        with tp.prune(other, "st3") as run_b:
            b = greedy(other, data, 6)
        assert torch.equal(a.sequences, b.sequences)
        assert run_a.report.to_dict() == run_b.report.to_dict()


def test_adapter_options_and_names_are_validated():
    model = tiny_model(family="llava_next")
    with pytest.raises(tp.InvalidParameterError, match="prune_newline.*options of 'llava_next': prune_newlines"):
        tp.prune(model, "st3", adapter_options={"prune_newline": True})
    with pytest.raises(tp.InvalidParameterError, match="prune_newlines"):
        tp.prune(model, "st3", adapter_options={"prune_newlines": "sometimes"})
    with pytest.raises(
        tp.UnsupportedModelError, match="adapter 'llava' does not serve LlavaNextForConditionalGeneration"
    ):
        tp.prune(model, "st3", adapter="llava")
    with pytest.raises(tp.UnsupportedModelError, match="unknown adapter 'qwen'.*llava, llava_next"):
        tp.prune(model, "st3", adapter="qwen")
    with pytest.raises(tp.InvalidParameterError, match="options of 'llava': none"):
        tp.prune(tiny_model(), "st3", adapter_options={"prune_newlines": True})
    assert tp.prune(model, "st3", adapter="llava_next").adapter.options.prune_newlines is False


def test_missing_image_sizes_is_refused():
    model = tiny_model(family="llava_next")
    data = inputs("single", family="llava_next")
    del data["image_sizes"]
    # (generate() itself already fails earlier, in transformers, when it encodes the images)
    with tp.prune(model, "fastv"), pytest.raises(tp.UnsupportedInputError, match="image_sizes"):
        model(**data)


def test_precomputed_image_features_are_supported():
    """mm_encoder_outputs (features computed beforehand) give the same kept sets as pixel_values."""
    model = tiny_model(family="llava_next")
    data = inputs("padded", family="llava_next")
    with torch.no_grad():
        features = model.model.get_image_features(data["pixel_values"], data["image_sizes"], return_dict=True)
        with tp.prune(model, "fastv", k=2, ratio=0.5) as by_pixels:
            a = model(**data).logits
        rest = {k: v for k, v in data.items() if k not in ("pixel_values", "image_sizes")}
        with tp.prune(model, "fastv", k=2, ratio=0.5) as by_features:
            b = model(**rest, mm_encoder_outputs={"image": features}).logits
    assert by_pixels.report.kept_visual == by_features.report.kept_visual
    assert by_pixels.report.visual_tokens == by_features.report.visual_tokens
    torch.testing.assert_close(a, b)


def test_reference_sees_a_wrong_newline_setting():
    """Guard: treating newlines as prunable changes the reference's kept sets on this data."""
    eager = tiny_model("eager", family="llava_next")
    data = inputs("padded", family="llava_next")
    method = RefMethod("fastv", k=2, ratio=0.5)
    a = reference_generate(eager, data, method, 2, prunable=~newline_mask(eager, data))
    b = reference_generate(eager, data, method, 2)
    assert a.kept != b.kept
