"""Adapter for Qwen2-VL, Qwen2.5-VL and Qwen3-VL (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`, `Qwen3VLForConditionalGeneration`).

Visual tokens are the image placeholders and the video placeholders of a sample. An image or a video
with grid (t, h, w) in `image_grid_thw` / `video_grid_thw` gives t*h*w / merge^2 features (merge =
`spatial_merge_size`), so counts vary per image and per video. transformers scatters the features of
images 0, 1, ... into the image placeholders in row-major order, and those of videos into the video
placeholders; Qwen3-VL writes a video as one placeholder run per temporal patch, separated by timestamp
text, which changes nothing here (a video's placeholders are still its features in order).

Positions: these models rotate with 3D (temporal, height, width) positions, merged into the per-token
(cos, sin) rows every decoder layer receives; kept tokens keep their rows. generate() passes four rows
(the sequence position, then t/h/w); the sequence row is what the cache's metadata records. The 3D
positions need `mm_token_type_ids` (the processor returns it): without it Qwen2.5-VL silently falls back
to 1D positions, so a prompt with visual tokens and neither `mm_token_type_ids` nor multi-row
`position_ids` is refused.

Option `prune` (default "both"): which modalities strategies may remove, "images", "videos" or "both";
the others stay like text and budgets count only the prunable ones.
"""

from __future__ import annotations

from typing import Literal

import torch

from tokenprune.backbones import backbone_for
from tokenprune.errors import UnsupportedInputError
from tokenprune.hookspecs import hookimpl
from tokenprune.interfaces import AdapterOptions, ModelAdapter, ModelParts, VisualTokens

from .llava import image_layout, placeholder_mask


class QwenVLOptions(AdapterOptions):
    prune: Literal["both", "images", "videos"] = "both"  # which modalities strategies may remove


class QwenVLAdapter(ModelAdapter):
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: images and videos of any grid, multimodal RoPE (Qwen3-VL: deepstack)."""

    name = "qwen_vl"
    model_classes = (
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
    )
    Options = QwenVLOptions

    def matches(self, model: torch.nn.Module) -> bool:
        return type(model).__name__ in self.model_classes

    def parts(self, model: torch.nn.Module) -> ModelParts:
        backbone = backbone_for(model.model.language_model, type(model).__name__)
        return ModelParts(entry=model.model, backbone=backbone, lm_head=model.lm_head)

    def images_given(self, kwargs: dict) -> bool:
        return any(_given(kwargs, modality) for modality in ("image", "video"))

    def positions(self, kwargs: dict) -> torch.Tensor | None:
        positions = kwargs.get("position_ids")
        if positions is None or positions.dim() == 2:
            return positions
        # (4, B, L): the sequence row, then t/h/w; (3, B, L) carries no sequence row (the model then has none)
        return positions[0] if positions.shape[0] == 4 else None

    def visual_tokens(self, model: torch.nn.Module, kwargs: dict) -> VisualTokens | None:
        config = model.config
        merge = config.vision_config.spatial_merge_size
        found, missing = {}, []
        for modality, token_id in (("image", config.image_token_id), ("video", config.video_token_id)):
            placeholders = placeholder_mask(model.model, kwargs, token_id)
            counts = _feature_counts(kwargs, modality, merge)
            if counts is None:
                missing.append((placeholders, modality, token_id))
                continue
            prunable = self.options.prune in ("both", f"{modality}s")
            layout = image_layout(placeholders, counts, None, token_id, kind=modality)
            if not prunable:
                layout.prunable.zero_()
            found[modality] = layout
        if not found:  # no image and no video: text to transformers, placeholders included; untouched
            return None
        for placeholders, modality, token_id in missing:
            _no_features(placeholders, modality, token_id)
        _check_positions(model, kwargs)
        image, video = found.get("image"), found.get("video")
        any_layout = image or video
        empty = torch.zeros_like(any_layout.placeholders)
        none = torch.full(empty.shape, -1, dtype=torch.long, device=empty.device)
        return VisualTokens(
            placeholders=(image.placeholders if image else empty) | (video.placeholders if video else empty),
            prunable=(image.prunable if image else empty) | (video.prunable if video else empty),
            image_of=image.image_of if image else none,
            video_of=video.image_of if video else none,
        )


#: modality -> (its pixel rows, its (t, h, w) grids) among the model's inputs
_INPUTS = {"image": ("pixel_values", "image_grid_thw"), "video": ("pixel_values_videos", "video_grid_thw")}


def _given(kwargs: dict, modality: str) -> bool:
    if (kwargs.get("mm_encoder_outputs") or {}).get(modality) is not None:
        return True
    pixels = kwargs.get(_INPUTS[modality][0])
    return pixels is not None and pixels.shape[0] > 0


def _feature_counts(kwargs: dict, modality: str, merge: int) -> list[int] | None:
    """Features of each image (or video) of the batch, in batch order; None when none are given."""
    encoded = (kwargs.get("mm_encoder_outputs") or {}).get(modality)
    if encoded is not None:
        return [f.shape[0] for f in encoded.pooler_output]  # (tokens, dim) per image / video
    pixels_key, grid_key = _INPUTS[modality]
    pixels, grid = kwargs.get(pixels_key), kwargs.get(grid_key)
    if pixels is None or pixels.shape[0] == 0:
        return None
    if grid is None:
        raise UnsupportedInputError(
            f"{pixels_key} given without {grid_key}; pass the (t, h, w) patch grid of every {modality} "
            "(the processor returns it)"
        )
    grid = torch.as_tensor(grid).cpu().long()
    if grid.dim() != 2 or grid.shape[1] != 3:
        raise UnsupportedInputError(f"{grid_key} must have shape ({modality}s, 3), got {tuple(grid.shape)}")
    patches = grid.prod(1)
    if int(patches.sum()) != pixels.shape[0]:
        raise UnsupportedInputError(
            f"{grid_key} describes {int(patches.sum())} patches but {pixels_key} has {pixels.shape[0]} rows; "
            f"every {modality}'s (t, h, w) grid must match its flattened patches (pass what the processor returns)"
        )
    if bool((grid[:, 1:] % merge != 0).any()):
        raise UnsupportedInputError(
            f"{grid_key} {grid.tolist()}: h and w must be multiples of spatial_merge_size={merge}"
        )
    return (patches // (merge * merge)).tolist()


def _no_features(placeholders: torch.Tensor, modality: str, token_id: int) -> None:
    """Placeholders of one modality without its pixels, beside the other modality's features: transformers
    cannot lay out the multimodal positions of such an input either (it fails inside its rope index)."""
    found = int(placeholders.sum())
    if found:
        pixels = _INPUTS[modality][0]
        raise UnsupportedInputError(
            f"the input has {found} {modality} placeholder tokens ({modality}_token_id={token_id}) but no "
            f"{pixels}, beside other visual inputs (the model itself cannot run this); pass the {modality}s the "
            "processor made, or remove the placeholders"
        )


def _check_positions(model: torch.nn.Module, kwargs: dict) -> None:
    positions = kwargs.get("position_ids")
    if kwargs.get("mm_token_type_ids") is None and (positions is None or positions.dim() == 2):
        raise UnsupportedInputError(
            f"{type(model).__name__} needs mm_token_type_ids (or 3D position_ids) for the multimodal positions "
            "of its visual tokens; without them it falls back to 1D positions. Pass what the processor returns "
            "(mm_token_type_ids: 0 text, 1 image, 2 video per token)"
        )


@hookimpl
def tokenprune_adapters():
    return [QwenVLAdapter()]
