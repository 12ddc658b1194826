"""Small random LLaVA-1.5-shaped models and synthetic inputs: the embedded default of the demo and tests.

Nothing is downloaded: models are built from configs with random weights. The layout matches LLaVA-1.5
(CLIP vision tower -> projector -> LLaMA decoder; each image expands to `grid * grid` placeholder tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration


@dataclass(frozen=True)
class TinySpec:
    layers: int = 4
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab: int = 512
    grid: int = 6  # visual tokens per image = grid * grid
    attn: str = "sdpa"

    @property
    def visual_tokens(self) -> int:
        return self.grid * self.grid


def llava_config(spec: TinySpec) -> LlavaConfig:
    patch = 2
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=spec.grid * patch,
        patch_size=patch,
    )
    text = LlamaConfig(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=spec.vocab - 1,
        image_seq_length=spec.visual_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=0,
    )
    config._attn_implementation = spec.attn
    return config


def build_model(spec: TinySpec = TinySpec(), seed: int = 0, dtype: torch.dtype = torch.float32) -> LlavaForConditionalGeneration:
    """A random LLaVA model in eval mode. Weights are scaled up so attention is far from uniform."""
    torch.manual_seed(seed)
    config = llava_config(spec)
    config.text_config.initializer_range = 0.08
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


def make_inputs(
    spec: TinySpec,
    text_before: list[int] | int = 4,
    text_after: list[int] | int = 8,
    seed: int = 0,
    images: list[int] | None = None,
) -> dict[str, torch.Tensor]:
    """A left-padded batch: [bos] text_before [image]*N text_after per sample, with random pixels.

    `text_before` / `text_after` give per-sample lengths (an int means batch 1); `images[b]` is the
    number of images of sample b (default one each; 0 gives a text-only sample).
    """
    before = [text_before] if isinstance(text_before, int) else list(text_before)
    after = [text_after] if isinstance(text_after, int) else list(text_after)
    bsz = len(before)
    images = [1] * bsz if images is None else list(images)
    gen = torch.Generator().manual_seed(seed)
    image_token = spec.vocab - 1
    rows = []
    for b in range(bsz):
        text = torch.randint(3, spec.vocab - 1, (before[b] + after[b],), generator=gen).tolist()
        rows.append([1] + text[: before[b]] + [image_token] * (spec.visual_tokens * images[b]) + text[before[b]:])
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(bsz, length, dtype=torch.long)
    attention_mask = torch.zeros(bsz, length, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row):] = torch.tensor(row)
        attention_mask[b, length - len(row):] = 1
    side = spec.grid * 2
    pixel_values = torch.randn(sum(images), 3, side, side, generator=gen)
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if sum(images):
        out["pixel_values"] = pixel_values
    return out
