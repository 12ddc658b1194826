"""Several images in one prompt: all their visual tokens form the sample's visual set."""

import pytest
import torch
from conftest import FAMILIES, STRATEGY_CASES, greedy, reference_prunable, sample_of, spec, tiny_model
from reference import reference_generate

import tokenprune as tp
from tokenprune.tiny import make_inputs
from tokenprune.tiny_qwen import FAMILIES as QWEN_FAMILIES
from tokenprune.tiny_qwen import make_qwen_inputs

IMAGES = [2, 1, 2]  # a batch where samples have two, one and two images
NEXT_SIZES = [[(8, 8), (16, 8)], [(16, 16)], [(24, 8), (8, 16)]]
# Qwen-VL grids in patches (2x2 merge): 8 + 16, 24, 4 + 12 tokens
QWEN_IMAGES = [
    [("text", 3), ("image", (4, 8)), ("text", 1), ("image", (8, 8)), ("text", 5)],
    [("text", 1), ("image", (8, 12)), ("text", 7)],
    [("text", 2), ("image", (4, 4)), ("text", 1), ("image", (12, 4)), ("text", 2)],
]


def batch(family: str, attn: str = "sdpa") -> dict:
    if family in QWEN_FAMILIES:
        return make_qwen_inputs(spec(attn, family=family), QWEN_IMAGES, seed=4)
    sizes = NEXT_SIZES if family == "llava_next" else None
    images = None if sizes else IMAGES
    return make_inputs(spec(attn, family=family), [3, 1, 2], [5, 7, 2], seed=4, images=images, image_sizes=sizes)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_two_images_per_prompt_match_the_reference_and_each_sample_alone(family, name, params, ref_method):
    model, eager = tiny_model(family=family), tiny_model("eager", family=family)
    data = batch(family)
    with tp.prune(model, name, **params) as run:
        out = greedy(model, data, 8)
    ref = reference_generate(eager, data, ref_method, 8, prunable=reference_prunable(eager, data))
    prompt = data["input_ids"].shape[1]
    assert run.report.kept_visual == ref.kept
    assert torch.equal(out.sequences[:, prompt:], ref.tokens)
    for a, b in zip(out.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    for b in range(3):
        single = sample_of(data, b, IMAGES)
        with tp.prune(model, name, **params) as alone:
            one = greedy(model, single, 8)
        assert torch.equal(out.sequences[b, prompt:], one.sequences[0, single["input_ids"].shape[1] :])
        assert alone.report.visual_tokens_per_image[0] == run.report.visual_tokens_per_image[b]
        assert {k: v[0] for k, v in alone.report.kept_visual_per_image.items()} == {
            k: v[b] for k, v in run.report.kept_visual_per_image.items()
        }


@pytest.mark.parametrize("family", FAMILIES)
def test_report_counts_per_sample_and_per_image(family):
    model = tiny_model(family=family)
    data = batch(family)
    with tp.prune(model, "fastv", k=2, ratio=0.5) as run:
        greedy(model, data, 2)
    report = run.report
    assert report.images == IMAGES
    per_image = report.visual_tokens_per_image
    assert [len(p) for p in per_image] == IMAGES
    assert [sum(p) for p in per_image] == report.visual_tokens
    if family == "llava":  # every LLaVA-1.5 image is a grid x grid block (the last prompt token is text)
        assert per_image == [[36, 36], [36], [36, 36]]
    else:
        assert len({n for p in per_image for n in p}) > 2  # anyres or any grid: counts differ per image
    kept = report.kept_visual_per_image[2]
    assert [sum(p) for p in kept] == [len(k) for k in report.kept_visual[2]]
    assert [sum(p) for p in kept] == [round(n * 0.5) for n in report.visual_tokens]
    exported = report.to_dict()
    assert exported["images"] == IMAGES and exported["kept_visual_per_image"]["2"] == kept


def test_placeholders_of_two_images_must_match_their_features():
    model = tiny_model()
    data = batch("llava")
    data["pixel_values"] = data["pixel_values"][:4]  # five images' placeholders, four images
    with (
        tp.prune(model, "fastv"),
        pytest.raises(tp.UnsupportedInputError, match=r"180 image placeholder.*4 image\(s\) give 144"),
    ):
        model(**data)
