"""Adapter for LLaVA-1.5 (`LlavaForConditionalGeneration`) with a LLaMA-family language model."""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tokenprune.errors import UnsupportedModelError
from tokenprune.hookspecs import hookimpl
from tokenprune.interfaces import ModelAdapter, ModelParts

# Backbones whose decoder layers take (hidden_states, attention_mask, position_ids, past_key_values,
# use_cache, position_embeddings) and whose attention has q_proj/k_proj + rotate-half RoPE.
LLAMA_FAMILY = ("LlamaModel", "MistralModel")


def llama_family_parts(language_model: torch.nn.Module, entry: torch.nn.Module, lm_head, model_name: str) -> ModelParts:
    """ModelParts of a LLaMA-family language model, shared by every LLaVA-style adapter."""
    backbone = type(language_model).__name__
    if backbone not in LLAMA_FAMILY:
        raise UnsupportedModelError(
            f"{model_name} has a {backbone} language model; tokenprune supports the LLaMA-family "
            f"backbones {', '.join(LLAMA_FAMILY)}"
        )
    cfg = language_model.config
    if getattr(cfg, "sliding_window", None):
        raise UnsupportedModelError(
            f"{model_name}: sliding-window attention (sliding_window={cfg.sliding_window}) is not supported; "
            "use a config with sliding_window=None"
        )
    layers = list(language_model.layers)
    if len(layers) != cfg.num_hidden_layers or not layers:
        raise UnsupportedModelError(
            f"{model_name}: {len(layers)} decoder layers found but config.num_hidden_layers="
            f"{cfg.num_hidden_layers}; the engine needs every configured layer to run"
        )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return ModelParts(
        entry=entry,
        language_model=language_model,
        layers=layers,
        norm=language_model.norm,
        lm_head=lm_head,
        text_config=cfg,
        rotary=apply_rotary_pos_emb,
        num_heads=cfg.num_attention_heads,
        num_kv_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
        head_dim=head_dim,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
    )


def placeholder_mask(model: torch.nn.Module, kwargs: dict, image_token_id: int) -> torch.Tensor | None:
    """Positions of image placeholders, from input_ids or (when only embeddings are given) by value."""
    input_ids = kwargs.get("input_ids")
    if input_ids is not None:
        mask = input_ids == image_token_id
    else:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            return None
        token = torch.tensor(image_token_id, device=embeds.device)
        mask = (embeds == model.get_input_embeddings()(token).to(embeds.dtype)).all(-1)
    return mask if bool(mask.any()) else None


class LlavaAdapter(ModelAdapter):
    name = "llava"
    model_classes = ("LlavaForConditionalGeneration",)

    def matches(self, model: torch.nn.Module) -> bool:
        return type(model).__name__ in self.model_classes

    def parts(self, model: torch.nn.Module) -> ModelParts:
        return llama_family_parts(model.model.language_model, model.model, model.lm_head, type(model).__name__)

    def visual_mask(self, model: torch.nn.Module, kwargs: dict) -> torch.Tensor | None:
        return placeholder_mask(model.model, kwargs, model.config.image_token_id)


@hookimpl
def tokenprune_adapters():
    return [LlavaAdapter()]
