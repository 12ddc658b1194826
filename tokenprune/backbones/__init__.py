"""The backbone contract: what a decoder-only language model family decides, described in one place.

The engine prunes tokens inside a language model it knows only through a `Backbone`: which modules hold
the decoder layers, the attention and the final norm; how to read the query (and key) states the
attention really uses, before rotary; how rotary is applied to them and to which rows of the layer's
rotary tables a token maps; heads, KV heads, head dim and scaling per layer; which layers are full,
sliding-window or linear attention; and what a layer costs in FLOPs (`DecoderShape`). The engine imports
nothing from `transformers.models.*`: what differs between LLaMA, Mistral, Qwen2 or Qwen3 lives in the
backbone's own small module (`llama.py`, ...).

Adding a backbone: docs/design.md, "Adding a backbone".
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .base import LAYER_KINDS, Backbone, DecoderShape, Injections
from .llama import LlamaBackbone, MistralBackbone
from .qwen import Qwen2Backbone, Qwen3Backbone

#: every built-in backbone; an adapter finds its language model's backbone here by class name
BACKBONES: list[type[Backbone]] = [LlamaBackbone, MistralBackbone, Qwen2Backbone, Qwen3Backbone]

__all__ = ["BACKBONES", "LAYER_KINDS", "Backbone", "DecoderShape", "Injections", "backbone_for"]


def backbone_for(language_model: torch.nn.Module, model_name: str) -> Backbone:
    """The backbone serving `language_model` (by class name); UnsupportedModelError names the supported ones."""
    name = type(language_model).__name__
    for backbone in BACKBONES:
        if name in backbone.language_models:
            return backbone(language_model, model_name)
    served = ", ".join(cls for backbone in BACKBONES for cls in backbone.language_models)
    raise UnsupportedModelError(f"{model_name} has a {name} language model; tokenprune supports the backbones {served}")
