"""Shared fixtures: tiny random LLaVA models (fp32, CPU) and the one list of strategy cases every test uses."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reference import RefMethod  # noqa: E402

from tokenprune.tiny import TinySpec, build_model, make_inputs  # noqa: E402
from tokenprune.tiny_qwen import FAMILIES as QWEN_FAMILIES  # noqa: E402
from tokenprune.tiny_qwen import QwenSpec, build_qwen_model, make_qwen_inputs  # noqa: E402

LAYERS = 6

# (strategy name, tokenprune params, the same method for the masked reference)
STRATEGY_CASES = [
    pytest.param("fastv", dict(k=2, ratio=0.5), RefMethod("fastv", k=2, ratio=0.5), id="fastv-last"),
    pytest.param(
        "fastv",
        dict(k=1, ratio=0.7, query="text_mean"),
        RefMethod("fastv", k=1, ratio=0.7, query="text_mean"),
        id="fastv-text_mean",
    ),
    pytest.param("vtw", dict(k=3), RefMethod("vtw", k=3), id="vtw"),
    pytest.param(
        "st3",
        dict(),
        RefMethod("st3", start_layer=2, stride=3, ratio=0.2, decay="cosine", final_fraction=0.2, evict_every=8),
        id="st3-defaults",
    ),
    pytest.param(
        "st3",
        dict(start_layer=1, stride=1, ratio=0.4, decay="linear", final_fraction=0.2, horizon=6, evict_every=2),
        RefMethod(
            "st3", start_layer=1, stride=1, ratio=0.4, decay="linear", final_fraction=0.2, horizon=6, evict_every=2
        ),
        id="st3-linear",
    ),
]

# Settings that remove nothing: they must reproduce the unmodified model bit for bit.
ZERO_REMOVAL = [
    pytest.param("fastv", dict(k=2, ratio=0.0), id="fastv-ratio0"),
    pytest.param("fastv", dict(k=LAYERS, ratio=0.5), id="fastv-k=layers"),
    pytest.param("vtw", dict(k=LAYERS), id="vtw-k=layers"),
    pytest.param("st3", dict(ratio=0.0, final_fraction=1.0), id="st3-ratio0-f1"),
    pytest.param("st3", dict(start_layer=LAYERS, final_fraction=1.0), id="st3-start=layers"),
]


# Model families every adapter-level test runs on (LLaVA-NeXT: ragged visual counts and newline tokens;
# Qwen-VL: images and videos of any grid, multimodal RoPE, Qwen3-VL's q/k norms and deepstack).
FAMILIES = [
    pytest.param("llava", id="llava15"),
    pytest.param("llava_next", id="next"),
    pytest.param("qwen2_vl", id="qwen2vl"),
    pytest.param("qwen2_5_vl", id="qwen25vl"),
    pytest.param("qwen3_vl", id="qwen3vl"),
]


@functools.lru_cache(maxsize=None)
def tiny_model(attn: str = "sdpa", layers: int = LAYERS, seed: int = 0, family: str = "llava", backbone: str = "llama"):
    if family in QWEN_FAMILIES:
        return build_qwen_model(spec(attn, layers, family), seed=seed)
    return build_model(spec(attn, layers, family, backbone), seed=seed)


def fresh_model(family: str = "llava", attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A new (not shared) tiny model of `family`, for tests that change it."""
    if family in QWEN_FAMILIES:
        return build_qwen_model(spec(attn, family=family), seed=seed, dtype=dtype)
    return build_model(spec(attn, family=family), seed=seed, dtype=dtype)


def spec(attn: str = "sdpa", layers: int = LAYERS, family: str = "llava", backbone: str = "llama"):
    if family in QWEN_FAMILIES:
        return QwenSpec(family=family, layers=layers, attn=attn)
    # NeXT crops of 4x4 patches: 36 (8x8 image) to 88 (16x16) visual tokens per image
    return TinySpec(layers=layers, attn=attn, family=family, backbone=backbone, grid=6 if family == "llava" else 4)


BATCHES = {
    "single": dict(text_before=4, text_after=8),
    "padded": dict(text_before=[4, 2, 3], text_after=[8, 5, 1]),
}
# LLaVA-NeXT image sizes per sample: the padded batch has three different visual counts (36, 88, 76)
NEXT_SIZES = {"single": [[(8, 16)]], "padded": [[(8, 8)], [(16, 16)], [(24, 8)]]}


# Qwen-VL batches (grids in patches, 2x2 merge): a 24-token image; a 4-frame video of 32 tokens (two
# temporal patches; Qwen3-VL splits it into two timestamped runs) beside a 16-token image; two images of 4
# and 8 tokens. Three different visual counts (24, 48, 12) and both modalities in one left-padded batch.
QWEN_BATCHES = {
    "single": [[("text", 4), ("image", (8, 12)), ("text", 8)]],
    "padded": [
        [("text", 4), ("image", (8, 12)), ("text", 8)],
        [("text", 2), ("video", (4, 8, 8)), ("text", 1), ("image", (8, 8)), ("text", 5)],
        [("text", 3), ("image", (4, 4)), ("text", 1), ("image", (8, 4)), ("text", 1)],
    ],
}


def right_padded(batch: dict) -> dict:
    """The same samples right-padded: each row's real tokens moved to its start (every token-level tensor: ids,
    mask, Qwen's mm_token_type_ids), the padding after them; image tensors unchanged."""
    mask = batch["attention_mask"].bool()
    order = torch.argsort((~mask).long(), dim=1, stable=True)  # real tokens first, in order, then padding
    out = dict(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.shape[:2] == mask.shape:
            out[key] = value.gather(1, order)
    return out


def with_holes(batch: dict, tokens: int = 3) -> dict:
    """The right-padded batch followed by `tokens` more real text tokens in every row: padding between real
    tokens, as when generate(use_cache=False) re-runs a right-padded prompt with its new tokens."""
    right = right_padded(batch)
    bsz = right["input_ids"].shape[0]
    extra = {"input_ids": torch.arange(3, 3 + tokens).expand(bsz, -1), "attention_mask": torch.ones(bsz, tokens)}
    if "mm_token_type_ids" in right:
        extra["mm_token_type_ids"] = torch.zeros(bsz, tokens)
    out = dict(right)
    for key, value in extra.items():
        out[key] = torch.cat([right[key], value.to(right[key].dtype)], 1)
    return out


def inputs(kind: str, attn: str = "sdpa", seed: int = 0, family: str = "llava") -> dict:
    """A batch of `kind`: "single", "padded" (left-padded, three samples), "right" (the padded batch
    right-padded) or "holes" (padding between real tokens)."""
    if kind == "right":
        return right_padded(inputs("padded", attn, seed, family))
    if kind == "holes":
        return with_holes(inputs("padded", attn, seed, family))
    if family in QWEN_FAMILIES:
        return make_qwen_inputs(spec(attn, family=family), QWEN_BATCHES[kind], seed=seed)
    sizes = NEXT_SIZES[kind] if family == "llava_next" else None
    return make_inputs(spec(attn, family=family), seed=seed, image_sizes=sizes, **BATCHES[kind])


def _qwen_sample_of(batch: dict, b: int) -> dict:
    """Sample b of a Qwen-VL batch: its tokens and the pixel rows / grids of its own images and videos, found by
    counting placeholders against each grid's token count (t*h*w / 4), independently of the adapter."""
    row = batch["attention_mask"][b].bool()
    single = {key: batch[key][b : b + 1, row] for key in ("input_ids", "attention_mask", "mm_token_type_ids")}
    for kind, pixels_key, grid_key in (
        (1, "pixel_values", "image_grid_thw"),
        (2, "pixel_values_videos", "video_grid_thw"),
    ):
        if grid_key not in batch:
            continue
        grid = batch[grid_key]
        tokens = (grid.prod(1) // 4).cumsum(0).tolist()
        patches = [0] + grid.prod(1).cumsum(0).tolist()
        types = batch["mm_token_type_ids"]
        before, mine = int((types[:b] == kind).sum()), int((types[b] == kind).sum())
        if not mine:
            continue
        first = 0 if before == 0 else tokens.index(before) + 1
        last = tokens.index(before + mine) + 1
        single[pixels_key] = batch[pixels_key][patches[first] : patches[last]]
        single[grid_key] = grid[first:last]
        if kind == 2 and "second_per_grid_ts" in batch:
            single["second_per_grid_ts"] = batch["second_per_grid_ts"][first:last]
    return single


def sample_of(batch: dict, b: int, images: list[int]) -> dict:
    """Sample b of a left-padded batch, unpadded, with its own images (`images[i]`: images of sample i; a Qwen-VL
    batch says which images and videos are whose through its grids)."""
    if "mm_token_type_ids" in batch:
        return _qwen_sample_of(batch, b)
    row = batch["attention_mask"][b].bool()
    first = sum(images[:b])
    single = {
        "input_ids": batch["input_ids"][b : b + 1, row],
        "attention_mask": batch["attention_mask"][b : b + 1, row],
    }
    if images[b]:
        single["pixel_values"] = batch["pixel_values"][first : first + images[b]]
        if "image_sizes" in batch:
            single["image_sizes"] = batch["image_sizes"][first : first + images[b]]
    return single


def newline_mask(model, data: dict) -> torch.Tensor:
    """(B, L) LLaVA-NeXT image_newline tokens, found by value in the merged embeddings (not by the adapter)."""
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model.model(**data)
    finally:
        hook.remove()
    return (seen["embeds"] == model.model.image_newline).all(-1)


def reference_prunable(model, data: dict, prune_newlines: bool = False) -> torch.Tensor | None:
    """What the reference may remove: every placeholder, minus LLaVA-NeXT newlines unless they are prunable."""
    if type(model).__name__ != "LlavaNextForConditionalGeneration" or prune_newlines:
        return None
    return ~newline_mask(model, data)


def greedy(model, batch: dict, steps: int, **kwargs):
    """Greedy generation of exactly `steps` tokens on the raw logits (no end-of-sequence: a processor masking
    it would change the argmax the masked reference takes)."""
    kwargs.setdefault("eos_token_id", None)
    with torch.no_grad():
        return model.generate(
            **batch,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **kwargs,
        )
