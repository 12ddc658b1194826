"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: what the shared suites (identity, reference, batching, generation,
multi-turn, hot path) do not already cover, because it exists only in these families: videos beside
images, a modality option, text-only samples in a mixed batch, Qwen3-VL's deepstack, and their bad inputs.

Counts are checked against `qwen_visual_tokens` (t*h*w / merge^2 from the grid, written out in
tokenprune.tiny_qwen independently of the adapter); behaviour against the masked reference (tests/reference.py).
"""

import pytest
import torch
from conftest import QWEN_FAMILIES, greedy, inputs, sample_of, spec, tiny_model
from reference import RefMethod, reference_generate

import tokenprune as tp
from tokenprune.tiny_qwen import QwenSpec, build_qwen_model, make_qwen_inputs, qwen_visual_tokens

ATOL = 1e-4  # as tests/test_reference.py: fp32 on both sides, only the summation order differs
FAMILY_PARAMS = [pytest.param(f, id=f.replace("_", "")) for f in QWEN_FAMILIES]
# image, video + image, text only: three modalities mixed in one left-padded batch
MIXED = [
    [("text", 3), ("image", (8, 12)), ("text", 6)],
    [("text", 2), ("video", (4, 8, 8)), ("text", 1), ("image", (4, 8)), ("text", 4)],
    [("text", 9)],
]


def grids(data, key):
    return [tuple(g) for g in data[key].tolist()] if key in data else []


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_counts_per_image_and_video_follow_the_grids(family):
    model = tiny_model(family=family)
    data = make_qwen_inputs(spec(family=family), MIXED)
    with torch.no_grad(), tp.prune(model, "st3") as run:
        model(**data)
    s = spec(family=family)
    images = [qwen_visual_tokens(s, g) for g in grids(data, "image_grid_thw")]
    videos = [qwen_visual_tokens(s, g) for g in grids(data, "video_grid_thw")]
    report = run.report
    assert report.visual_tokens_per_image == [[images[0]], [images[1]], []]
    assert report.visual_tokens_per_video == [[], [videos[0]], []]
    assert report.visual_tokens == [images[0], videos[0] + images[1], 0]
    assert report.images == [1, 1, 0] and report.videos == [0, 1, 0]
    for layer, per_image in report.kept_visual_per_image.items():
        per_video = report.kept_visual_per_video[layer]
        kept = [len(k) for k in report.kept_visual[layer]]
        assert [sum(i) + sum(v) for i, v in zip(per_image, per_video, strict=True)] == kept


@pytest.mark.parametrize("family", FAMILY_PARAMS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_text_only_sample_beside_images_and_video(family, attn):
    """A mixed batch equals the masked reference, and each sample run alone."""
    model, eager = tiny_model(attn, family=family), tiny_model("eager", family=family)
    data = make_qwen_inputs(spec(attn, family=family), MIXED)
    method = RefMethod("st3", start_layer=1, stride=2, ratio=0.4, decay="cosine", final_fraction=0.3, evict_every=2)
    params = dict(start_layer=1, stride=2, ratio=0.4, final_fraction=0.3, evict_every=2)
    with tp.prune(model, "st3", **params) as run:
        out = greedy(model, data, 6)
    ref = reference_generate(eager, data, method, 6)
    assert run.report.kept_visual == ref.kept
    for a, b in zip(out.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    prompt = data["input_ids"].shape[1]
    for b in range(3):
        single = sample_of(data, b, [])
        with tp.prune(model, "st3", **params):
            alone = greedy(model, single, 6)
        assert torch.equal(alone.sequences[0, single["input_ids"].shape[1] :], out.sequences[b, prompt:])


@pytest.mark.parametrize("family", FAMILY_PARAMS)
@pytest.mark.parametrize("prune", ["images", "videos"])
def test_modality_option_limits_what_is_removed(family, prune):
    model, eager = tiny_model(family=family), tiny_model("eager", family=family)
    data = inputs("padded", family=family)
    token = model.config.image_token_id if prune == "images" else model.config.video_token_id
    prunable = data["input_ids"] == token
    with tp.prune(model, "fastv", k=2, ratio=0.5, adapter_options={"prune": prune}) as run:
        out = greedy(model, data, 4)
    ref = reference_generate(eager, data, RefMethod("fastv", k=2, ratio=0.5), 4, prunable=prunable)
    assert run.report.visual_tokens == (prunable & data["attention_mask"].bool()).sum(1).tolist()
    other = "videos" if prune == "images" else "images"
    assert all(count == 0 for sample in getattr(run.report, f"visual_tokens_per_{other[:-1]}") for count in sample)
    assert run.report.kept_visual == ref.kept
    for a, b in zip(out.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_modality_option_is_validated():
    with pytest.raises(
        tp.InvalidParameterError, match="adapter 'qwen_vl': prune: Input should be 'both', 'images' or 'videos'"
    ):
        tp.prune(tiny_model(family="qwen2_5_vl"), "fastv", adapter_options={"prune": "audio"})


# ------------------------------------------------------------------------------------------ deepstack
def deepstack_spec(layers: int, attn: str = "sdpa") -> QwenSpec:
    return QwenSpec(family="qwen3_vl", layers=layers, attn=attn, deepstack_visual_indexes=(0, 1))


@pytest.mark.parametrize(
    "layers,name,params,method",
    [
        (4, "fastv", dict(k=1, ratio=0.5), RefMethod("fastv", k=1, ratio=0.5)),  # cut between levels 0 and 1
        (4, "fastv", dict(k=2, ratio=0.7), RefMethod("fastv", k=2, ratio=0.7)),  # cut right after the last level
        (2, "fastv", dict(k=1, ratio=0.5), RefMethod("fastv", k=1, ratio=0.5)),  # last level after the last layer
        (
            4,
            "st3",
            dict(start_layer=1, stride=1, ratio=0.3, decay="none"),
            RefMethod("st3", start_layer=1, stride=1, ratio=0.3),
        ),
    ],
    ids=["cut-inside", "cut-after", "level-at-final-norm", "st3-every-layer"],
)
def test_deepstack_features_land_on_the_kept_tokens(layers, name, params, method):
    model = build_qwen_model(deepstack_spec(layers))
    eager = build_qwen_model(deepstack_spec(layers, "eager"))
    data = inputs("padded", family="qwen3_vl")
    with tp.prune(model, name, **params) as run:
        out = greedy(model, data, 4)
    ref = reference_generate(eager, data, method, 4)
    assert run.report.kept_visual == ref.kept
    for a, b in zip(out.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_deepstack_is_visible_in_the_outputs():
    """Guard for the test above: without its deepstack levels the model's logits move far beyond ATOL."""
    model = build_qwen_model(deepstack_spec(2))
    data = inputs("padded", family="qwen3_vl")
    base = greedy(model, data, 1).logits[0]
    for merger in model.model.visual.deepstack_merger_list:
        for p in merger.parameters():
            p.data.zero_()
    without = greedy(model, data, 1).logits[0]
    assert (base - without).abs().max() > 100 * ATOL


# ------------------------------------------------------------------------------------------ bad input
def hooks(model):
    return {name: (list(m._forward_pre_hooks), list(m._forward_hooks)) for name, m in model.named_modules()}


BAD = {
    "video placeholders without pixel_values_videos": (
        lambda d: {k: v for k, v in d.items() if k not in ("pixel_values_videos", "video_grid_thw")},
        r"video placeholder tokens \(video_token_id=511\) but no pixel_values_videos",
    ),
    "grid not matching the pixel rows": (
        lambda d: {**d, "video_grid_thw": d["video_grid_thw"] * torch.tensor([[1, 2, 1]])},
        r"video_grid_thw describes 256 patches but pixel_values_videos has 128 rows",
    ),
    "grid not matching the placeholders": (
        lambda d: {**d, "image_grid_thw": d["image_grid_thw"][:3], "pixel_values": d["pixel_values"][:176]},
        r"52 image placeholder tokens \(image_token_id=510\) but its 3 image\(s\) give 44",
    ),
    "no mm_token_type_ids": (
        lambda d: {k: v for k, v in d.items() if k != "mm_token_type_ids"},
        "needs mm_token_type_ids",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_are_refused_and_the_model_is_untouched(case):
    model = tiny_model(family="qwen2_5_vl")
    data = inputs("padded", family="qwen2_5_vl")
    before, before_hooks = greedy(model, data, 3), hooks(model)
    change, message = BAD[case]
    with torch.no_grad(), tp.prune(model, "st3"), pytest.raises(tp.UnsupportedInputError, match=message):
        model(**change(data))
    assert hooks(model) == before_hooks
    assert torch.equal(greedy(model, data, 3).sequences, before.sequences)


def test_image_run_split_across_samples():
    model = tiny_model(family="qwen2_vl")
    data = make_qwen_inputs(spec(family="qwen2_vl"), [[("text", 2), ("image", (4, 4))], [("text", 6)]])
    ids = data["input_ids"].clone()
    image = model.config.image_token_id
    # move the image's last two placeholders into the text-only sample (counts still add up)
    ids[0, ids[0] == image] = torch.tensor([image, image, 7, 7])
    ids[1, -2:] = image
    types = (ids == image).long()
    bad = {**data, "input_ids": ids, "mm_token_type_ids": types}
    with torch.no_grad(), tp.prune(model, "fastv"), pytest.raises(tp.UnsupportedInputError, match="next sample"):
        model(**bad)


def test_linear_attention_layers_are_refused_by_kind():
    model = build_qwen_model(QwenSpec(family="qwen2_5_vl", layers=2))
    model.model.language_model.config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(tp.UnsupportedModelError, match=r"linear-attention layers \(1\)"):
        tp.prune(model, "fastv", k=1)
