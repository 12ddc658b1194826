"""LLaMA (`LlamaModel`, also Vicuna) and Mistral (`MistralModel`) language models.

Their attention projects queries and keys with `q_proj` / `k_proj` (no bias in any released checkpoint,
but a bias would be part of the projection's output, so it is honoured), applies rotate-half RoPE with the
(cos, sin) rows the model hands every layer, and scales q.k by `head_dim ** -0.5`. Every layer is full
attention; Mistral's `sliding_window` (when set) applies to every layer.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import rotate_half

from .base import Backbone


class LlamaBackbone(Backbone):
    name = "llama"
    language_models = ("LlamaModel",)

    def query_source(self, layer: int) -> torch.nn.Module:
        return self.attention(layer).q_proj

    def key_source(self, layer: int) -> torch.nn.Module:
        return self.attention(layer).k_proj

    def queries(self, output: torch.Tensor) -> torch.Tensor:
        return output  # q_proj's (B, L, H*Dh) is what the attention reshapes into heads

    def keys(self, output: torch.Tensor) -> torch.Tensor:
        return output.view(*output.shape[:2], -1, self.head_dim).transpose(1, 2)

    def rotate(self, states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # the query half of LLaMA's apply_rotary_pos_emb (unsqueeze_dim=1), the same expression
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return (states * cos) + (rotate_half(states) * sin)


class MistralBackbone(LlamaBackbone):
    name = "mistral"
    language_models = ("MistralModel",)

    def layer_kinds(self) -> list[str]:
        return ["sliding" if self.sliding_window is not None else "full"] * len(self.layers)

    @property
    def sliding_window(self) -> int | None:
        return getattr(self.config, "sliding_window", None)
