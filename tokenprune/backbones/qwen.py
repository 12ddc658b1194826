"""Qwen2 / Qwen2.5 (the text models of Qwen2-VL and Qwen2.5-VL) and Qwen3 (the
text model of Qwen3-VL) language models.

Qwen2's q/k/v projections carry biases: the projection's output (bias included) is what the attention
uses, so queries and keys are read from `q_proj` / `k_proj` as for LLaMA. A bias adds no multiply-adds,
so the LLaMA-style `DecoderShape` prices both (as `FlopCounterMode` counts `addmm`). Qwen3 normalises
every head of the projected queries and keys (`q_norm` / `k_norm`, RMSNorm over the head dim) before
rotary: scores read the outputs of those norms. Rotary is rotate-half with the (cos, sin) rows the model
hands every layer; the vision-language models' multimodal RoPE merges its three axes into those rows
before the layers, so kept tokens keep their 3D positions by keeping their rows.

Layer kinds come from `config.layer_types` (`full_attention`, `sliding_attention`, `linear_attention`).

Qwen3-VL adds "deepstack" visual features to the hidden states of its visual tokens right after each of
its first decoder layers, indexed by a full-prompt mask. After a cut that mask no longer fits, so the
backbone hands those additions to the engine (`take_injections`), which adds them to the tokens still
held at the same point of the computation.
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .base import Injections
from .llama import LlamaBackbone

#: config.layer_types -> LAYER_KINDS
_KINDS = {"full_attention": "full", "sliding_attention": "sliding", "linear_attention": "linear"}


class Qwen2Backbone(LlamaBackbone):
    name = "qwen2"
    language_models = ("Qwen2VLTextModel", "Qwen2_5_VLTextModel")

    def layer_kinds(self) -> list[str]:
        types = getattr(self.config, "layer_types", None) or ["full_attention"] * len(self.layers)
        unknown = sorted({t for t in types if t not in _KINDS})
        if unknown:
            raise UnsupportedModelError(
                f"backbone '{self.name}': layer types {unknown} are not known to tokenprune (known: {sorted(_KINDS)})"
            )
        return [_KINDS[t] for t in types]

    @property
    def sliding_window(self) -> int | None:
        if "sliding" not in self.layer_kinds():
            return None
        return getattr(self.config, "sliding_window", None)


class Qwen3Backbone(Qwen2Backbone):
    name = "qwen3"
    language_models = ("Qwen3VLTextModel",)
    injects = True

    def query_source(self, layer: int) -> torch.nn.Module:
        return self.attention(layer).q_norm

    def key_source(self, layer: int) -> torch.nn.Module:
        return self.attention(layer).k_norm

    def queries(self, output: torch.Tensor) -> torch.Tensor:
        return output.flatten(2)  # q_norm's (B, L, H, Dh) -> (B, L, H*Dh)

    def keys(self, output: torch.Tensor) -> torch.Tensor:
        return output.transpose(1, 2)  # k_norm's (B, L, Hkv, Dh) -> (B, Hkv, L, Dh)

    def take_injections(self, kwargs: dict) -> tuple[dict, Injections | None]:
        mask, levels = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
        if mask is None or not levels:
            return kwargs, None
        kept = {**kwargs, "visual_pos_masks": None, "deepstack_visual_embeds": None}
        return kept, Injections(mask=mask, rows=list(levels))
