"""Qwen-VL model inputs without a Qwen processor (they all need torchvision through their video processor).

`QwenInputs` joins a tokenizer and a Qwen-VL image processor (`Qwen2VLImageProcessorPil` works without
torchvision) and lays images out as the real processors do: each image slot
`<|vision_start|><|image_pad|><|vision_end|>` gets `t * h * w / merge**2` <|image_pad|> tokens (from the
image processor's `image_grid_thw`), and `mm_token_type_ids` marks them (0 text, 1 image). Images only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import UnsupportedInputError
from .tiny_qwen import QwenSpec

#: `model_type` of the Qwen-VL configs this helper serves (config.json of a saved model)
MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
IMAGE_PAD = "<|image_pad|>"
IMAGE_SLOT = "<|vision_start|>" + IMAGE_PAD + "<|vision_end|>"
#: pixels of the largest image the tiny models' image processor keeps (bigger ones are scaled down, as Qwen's
#: max_pixels does): 300 visual tokens with 8-pixel patches, 75 with 16-pixel ones
TINY_MAX_PIXELS = 320 * 240


@dataclass
class QwenInputs:
    """Processor-like: `prompt_text(prompt, n)`, `__call__(images=, text=, return_tensors="pt")`, `tokenizer`."""

    tokenizer: Any
    image_processor: Any

    def prompt_text(self, prompt: str, num_images: int = 1) -> str:
        """A user turn with `num_images` image slots and `prompt`, then the assistant's turn: the tokenizer's
        chat template if it has one (real checkpoints), else Qwen's ChatML layout."""
        if getattr(self.tokenizer, "chat_template", None):
            content = [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]
            messages = [{"role": "user", "content": content}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"<|im_start|>user\n{IMAGE_SLOT * num_images}{prompt}<|im_end|>\n<|im_start|>assistant\n"

    def __call__(self, images=None, text: str = "", return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        images = list(images or [])
        image_token = getattr(self.tokenizer, "image_token", None) or IMAGE_PAD
        pieces = text.split(image_token)
        if len(pieces) - 1 != len(images):
            raise UnsupportedInputError(
                f"the text has {len(pieces) - 1} image slot(s) ({image_token}) for {len(images)} image(s); "
                "give one slot per image (prompt_text() writes them)"
            )
        out: dict[str, torch.Tensor] = {}
        if images:
            pixels = self.image_processor(images=images, return_tensors="pt")
            merge = int(self.image_processor.merge_size)
            counts = [int(g.prod()) // merge**2 for g in pixels["image_grid_thw"]]
            text = pieces[0] + "".join(image_token * n + piece for n, piece in zip(counts, pieces[1:], strict=True))
            out.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        image_id = self.tokenizer.convert_tokens_to_ids(image_token)
        types = (encoded["input_ids"] == image_id).long()
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "mm_token_type_ids": types,
            **out,
        }

    def save_pretrained(self, directory) -> None:
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)


def tiny_image_processor(spec: QwenSpec, max_pixels: int = TINY_MAX_PIXELS):
    """The PIL Qwen-VL image processor for the tiny model of `spec`: its patch, temporal patch and merge sizes,
    images scaled to at most `max_pixels` pixels (and at least 4 visual tokens)."""
    from transformers import Qwen2VLImageProcessorPil

    factor = spec.patch_size * spec.spatial_merge_size  # pixels per visual token side
    return Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.spatial_merge_size,
        size={"shortest_edge": 4 * factor**2, "longest_edge": max(max_pixels, 4 * factor**2)},
    )


def tiny_qwen_inputs(spec: QwenSpec) -> QwenInputs:
    from .tiny_qwen import build_qwen_tokenizer

    return QwenInputs(build_qwen_tokenizer(spec), tiny_image_processor(spec))


def load_qwen_inputs(directory) -> QwenInputs:
    """`QwenInputs` from a saved Qwen-VL directory: `AutoTokenizer` + `AutoImageProcessor` (the PIL backend)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    image_processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
    return QwenInputs(tokenizer, image_processor)
