"""Adapter for LLaVA-NeXT (`LlavaNextForConditionalGeneration`, anyres) with a Vicuna/LLaMA or Mistral backbone.

Every image gives a base crop's grid of features, then its unpadded high-resolution grid with a learned
`image_newline` token at the end of each row, so the visual token count differs per image. Where the
newlines are is read from transformers' own `pack_image_features`, run on one-dimensional dummy features
(zeros for features, a one for the newline): no packing arithmetic is repeated here.

Option `prune_newlines` (default False): newline tokens carry the 2D row structure of the grid and are
few (one per row), so by default they stay like text and budgets count only the real visual features.
With True they are ordinary prunable visual tokens.
"""

from __future__ import annotations

import torch
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from tokenprune.errors import UnsupportedInputError
from tokenprune.hookspecs import hookimpl
from tokenprune.interfaces import AdapterOptions, VisualTokens

from .llava import LlavaAdapter, _no_images, image_features_given, image_layout, placeholder_mask, tokens_per_crop


class LlavaNextOptions(AdapterOptions):
    prune_newlines: bool = False  # may strategies remove the image_newline tokens?


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (anyres): a base crop plus unpadded tiles per image, one image_newline token per tile row."""

    name = "llava_next"
    model_classes = ("LlavaNextForConditionalGeneration",)
    Options = LlavaNextOptions

    def visual_tokens(self, model: torch.nn.Module, kwargs: dict) -> VisualTokens | None:
        image_token_id = model.config.image_token_id
        placeholders = placeholder_mask(model.model, kwargs, image_token_id)
        given, features = image_features_given(kwargs)
        if not given:
            return _no_images(placeholders, image_token_id)
        if features is not None:  # precomputed features: newline rows are copies of the image_newline vector
            newline = model.model.image_newline
            is_feature = [~(f == newline.to(f.device, f.dtype)).all(-1) for f in features]
        else:
            is_feature = self._feature_flags(model, kwargs)
        counts = [len(flags) for flags in is_feature]
        prunable = None if self.options.prune_newlines else torch.cat([f.cpu() for f in is_feature])
        return image_layout(placeholders, counts, prunable, image_token_id)

    @staticmethod
    def _feature_flags(model: torch.nn.Module, kwargs: dict) -> list[torch.Tensor]:
        """Per image, a bool per visual token: True for a vision feature, False for an image_newline."""
        image_sizes = kwargs.get("image_sizes")
        pixels = kwargs["pixel_values"]
        if image_sizes is None or len(image_sizes) != pixels.shape[0]:
            got = "none" if image_sizes is None else len(image_sizes)
            raise UnsupportedInputError(
                f"LLaVA-NeXT needs image_sizes with one (height, width) per image: {pixels.shape[0]} image(s) in "
                f"pixel_values, image_sizes: {got} (pass what the processor returns)"
            )
        config = model.config
        sizes = torch.as_tensor(image_sizes).cpu()
        per_crop = tokens_per_crop(model, kwargs)
        dummy = [
            torch.zeros(
                image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size),
                per_crop,
                1,
            )
            for size in sizes
        ]
        select = kwargs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        packed, _ = model.model.pack_image_features(dummy, sizes, select, image_newline=torch.ones(1))
        return [p[:, 0] == 0 for p in packed]


@hookimpl
def tokenprune_adapters():
    return [LlavaNextAdapter()]
