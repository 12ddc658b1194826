"""Adapter for LLaVA-1.5 (`LlavaForConditionalGeneration`) with a LLaMA-family language model.

Also holds what every LLaVA-style adapter shares: finding image placeholders, and splitting them into
images (`image_layout`). The language model is described by its backbone (`tokenprune.backbones`).
"""

from __future__ import annotations

import torch

from tokenprune.backbones import backbone_for
from tokenprune.errors import UnsupportedInputError, UnsupportedModelError
from tokenprune.hookspecs import hookimpl
from tokenprune.interfaces import ModelAdapter, ModelParts, VisualTokens

# Vision towers that give every image (or every anyres crop) the same number of features.
FIXED_GRID_TOWERS = ("clip_vision_model", "siglip_vision_model")


def check_vision_tower(model: torch.nn.Module) -> None:
    tower = model.config.vision_config.model_type
    if tower not in FIXED_GRID_TOWERS:
        raise UnsupportedModelError(
            f"{type(model).__name__} with a '{tower}' vision tower is not supported (its images have variable "
            f"token counts and break tokens); supported vision towers: {', '.join(FIXED_GRID_TOWERS)}"
        )


def placeholder_mask(model: torch.nn.Module, kwargs: dict, image_token_id: int) -> torch.Tensor:
    """(B, L) image placeholders, from input_ids or (when only embeddings are given) by value, as transformers
    finds them."""
    input_ids = kwargs.get("input_ids")
    if input_ids is not None:
        return input_ids == image_token_id
    embeds = kwargs["inputs_embeds"]
    token = torch.tensor(image_token_id, device=embeds.device)
    # the embedding may run on another device (accelerate device_map): compare where the embeddings are
    return (embeds == model.get_input_embeddings()(token).to(embeds.device, embeds.dtype)).all(-1)


def tokens_per_crop(model: torch.nn.Module, kwargs: dict) -> int:
    """Features the vision tower gives one 2D crop: a (size/patch)^2 grid, plus CLS under 'full' selection."""
    vision = model.config.vision_config
    select = kwargs.get("vision_feature_select_strategy") or model.config.vision_feature_select_strategy
    return (vision.image_size // vision.patch_size) ** 2 + (1 if select == "full" else 0)


def image_features_given(kwargs: dict) -> tuple[bool, list | None]:
    """(images given?, per-image precomputed features or None) from pixel_values / mm_encoder_outputs."""
    encoded = (kwargs.get("mm_encoder_outputs") or {}).get("image")
    if encoded is not None:
        return True, list(encoded.pooler_output)
    pixels = kwargs.get("pixel_values")
    return pixels is not None and pixels.shape[0] > 0, None


def image_layout(
    placeholders: torch.Tensor,
    token_counts: list[int],
    prunable: torch.Tensor | None,
    image_token_id: int,
    kind: str = "image",
) -> VisualTokens:
    """Split the placeholders into images (or videos: `kind`) and mark which ones are prunable.

    transformers scatters the features of images 0, 1, ... (batch order) into the placeholders in row-major
    order, so image i owns the placeholders numbered sum(token_counts[:i]) onwards. `prunable` (1D bool over
    the concatenated image tokens) marks the prunable ones; None means all.
    """
    found, expected = int(placeholders.sum()), sum(token_counts)
    if found != expected:
        raise UnsupportedInputError(
            # worded as transformers' own error for this input, so callers matching on it keep working
            f"{kind.capitalize()} features and {kind} tokens do not match: the input has {found} {kind} placeholder "
            f"tokens ({kind}_token_id={image_token_id}) but its "
            f"{len(token_counts)} {kind}(s) give {expected} visual features ({', '.join(map(str, token_counts))} "
            f"per {kind}); build input_ids with the model's processor so each {kind} gets exactly its feature count"
        )
    rows, cols = placeholders.nonzero(as_tuple=True)  # row-major: the order the features are scattered in
    device = placeholders.device
    counts = torch.tensor(token_counts, device=device)
    image = torch.repeat_interleave(torch.arange(len(token_counts), device=device), counts)
    ends = counts.cumsum(0)
    if bool((rows[ends - counts] != rows[ends - 1]).any()):
        raise UnsupportedInputError(
            f"one {kind}'s placeholder tokens continue into the next sample; each sample needs exactly the "
            f"placeholders of its own {kind}s (build input_ids with the model's processor)"
        )
    bsz = placeholders.shape[0]
    first = torch.full((bsz,), len(token_counts), device=device).scatter_reduce(0, rows, image, "amin")
    image_of = torch.full(placeholders.shape, -1, dtype=torch.long, device=device)
    image_of[rows, cols] = image - first[rows]
    keep = placeholders.clone()
    if prunable is not None:
        keep[rows, cols] = prunable.to(device)
    return VisualTokens(placeholders=placeholders, prunable=keep, image_of=image_of)


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5: every image gives the same (size/patch)^2 features, all prunable."""

    name = "llava"
    model_classes = ("LlavaForConditionalGeneration",)

    def matches(self, model: torch.nn.Module) -> bool:
        return type(model).__name__ in self.model_classes

    def parts(self, model: torch.nn.Module) -> ModelParts:
        check_vision_tower(model)
        backbone = backbone_for(model.model.language_model, type(model).__name__)
        return ModelParts(entry=model.model, backbone=backbone, lm_head=model.lm_head)

    def images_given(self, kwargs: dict) -> bool:
        return image_features_given(kwargs)[0]

    def visual_tokens(self, model: torch.nn.Module, kwargs: dict) -> VisualTokens | None:
        image_token_id = model.config.image_token_id
        placeholders = placeholder_mask(model.model, kwargs, image_token_id)
        given, features = image_features_given(kwargs)
        if not given:
            return _no_images(placeholders, image_token_id)
        if features is not None:
            counts = [f.shape[0] for f in features]  # (tokens, dim) per image
        else:
            counts = [tokens_per_crop(model, kwargs)] * kwargs["pixel_values"].shape[0]
        return image_layout(placeholders, counts, None, image_token_id)


def _no_images(placeholders: torch.Tensor, image_token_id: int) -> None:
    """A prompt without images is text to transformers, placeholders included (they embed as ordinary tokens):
    nothing to prune, so it runs untouched, as it would without tokenprune."""
    return None


@hookimpl
def tokenprune_adapters():
    return [LlavaAdapter()]
