"""The backbone contract: the engine knows a language model only through its backbone.

Checked here: the engine imports nothing from `transformers.models.*`; each built-in backbone's rotary is
transformers' own bit for bit and its query / key readings are what the attention computes; layer kinds
the engine cannot serve are refused before anything is installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import inputs, tiny_model
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb as qwen2_5_vl_rotary
from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb as qwen3_vl_rotary

import tokenprune as tp
from tokenprune.backbones import BACKBONES, LAYER_KINDS, backbone_for
from tokenprune.backbones.llama import LlamaBackbone, MistralBackbone
from tokenprune.backbones.qwen import Qwen2Backbone, Qwen3Backbone

ENGINE = Path(tp.__file__).parent
MODELS = [
    pytest.param("llava", "llama", id="llama"),
    pytest.param("llava_next", "mistral", id="mistral"),
    pytest.param("qwen2_vl", "qwen2", id="qwen2-vl"),
    pytest.param("qwen2_5_vl", "qwen2", id="qwen2.5-vl"),
    pytest.param("qwen3_vl", "qwen3", id="qwen3-vl"),
]
BACKBONE_CLASSES = {"llama": LlamaBackbone, "mistral": MistralBackbone, "qwen2": Qwen2Backbone, "qwen3": Qwen3Backbone}
# each family's own apply_rotary_pos_emb (what its attention calls)
ROTARY = {"qwen2_5_vl": qwen2_5_vl_rotary, "qwen3_vl": qwen3_vl_rotary}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    "path", [*sorted((ENGINE / "engine").glob("*.py")), ENGINE / "cache.py", ENGINE / "report.py"], ids=lambda p: p.name
)
def test_the_engine_imports_nothing_from_transformers_models(path):
    assert not [m for m in imported_modules(path) if m.startswith("transformers.models")]


@pytest.mark.parametrize("family,name", MODELS)
def test_backbone_found_from_the_language_model_class(family, name):
    expected = BACKBONE_CLASSES[name]
    model = tiny_model(family=family, backbone=name)
    found = backbone_for(model.model.language_model, type(model).__name__)
    assert type(found) is expected
    assert found.layers == list(model.model.language_model.layers)
    assert found.norm is model.model.language_model.norm
    assert set(found.layer_kinds()) <= set(LAYER_KINDS)


def test_unknown_language_model_names_every_supported_one():
    model = tiny_model()
    with pytest.raises(tp.UnsupportedModelError, match="GPT2Model language model.*LlamaModel, MistralModel"):
        backbone_for(type("GPT2Model", (torch.nn.Module,), {})(), type(model).__name__)


def test_every_built_in_backbone_is_tested():
    assert {b.name for b in BACKBONES} == {p.values[1] for p in MODELS}


@pytest.mark.parametrize("family,name", MODELS)
def test_rotate_is_transformers_rotary_bit_for_bit(family, name):
    model = tiny_model(family=family, backbone=name)
    backbone = backbone_for(model.model.language_model, type(model).__name__)
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(2, 4, 7, 16, generator=gen)
    cos, sin = torch.randn(2, 7, 16, generator=gen), torch.randn(2, 7, 16, generator=gen)
    expected, _ = ROTARY.get(family, apply_rotary_pos_emb)(states, states, cos, sin)
    assert torch.equal(backbone.rotate(states, cos, sin), expected)


@pytest.mark.parametrize("family,name", MODELS)
def test_queries_and_keys_are_what_the_attention_computes(family, name):
    """The backbone's reading of its query / key sources equals the states the attention builds (recomputed
    here from the layer's weights, biases and per-head norms, and its normed input)."""
    model = tiny_model(family=family, backbone=name)
    backbone = backbone_for(model.model.language_model, "m")
    seen = {}
    layer = backbone.layers[1]
    handles = [
        layer.input_layernorm.register_forward_hook(lambda m, a, out: seen.setdefault("normed", out)),
        backbone.query_source(1).register_forward_hook(lambda m, a, out: seen.setdefault("q", out)),
        backbone.key_source(1).register_forward_hook(lambda m, a, out: seen.setdefault("k", out)),
    ]
    try:
        with torch.no_grad():
            model(**inputs("single", family=family))
    finally:
        for handle in handles:
            handle.remove()
    attn = backbone.attention(1)
    normed = seen["normed"]
    bsz, length = normed.shape[:2]
    heads = (bsz, length, -1, backbone.head_dim)
    q = torch.nn.functional.linear(normed, attn.q_proj.weight, attn.q_proj.bias).view(heads)
    k = torch.nn.functional.linear(normed, attn.k_proj.weight, attn.k_proj.bias).view(heads)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's dims before rotary
        q, k = attn.q_norm(q), attn.k_norm(k)
    assert torch.equal(backbone.queries(seen["q"]), q.flatten(2))
    keys = backbone.keys(seen["k"])
    assert keys.shape == (bsz, backbone.num_kv_heads, length, backbone.head_dim)
    assert torch.equal(keys, k.transpose(1, 2))


class _HybridBackbone(LlamaBackbone):
    """A LLaMA whose odd layers claim to be linear attention (as in hybrid models): the engine must refuse it."""

    def layer_kinds(self) -> list[str]:
        return ["linear" if i % 2 else "full" for i in range(len(self.layers))]


def test_linear_attention_layers_are_refused_before_anything_is_installed():
    model = tiny_model()
    hooks_before = {n: (list(m._forward_pre_hooks), list(m._forward_hooks)) for n, m in model.named_modules()}
    with pytest.raises(tp.UnsupportedModelError, match=r"linear-attention layers \(1, 3, 5\).*full or sliding-window"):
        _HybridBackbone(model.model.language_model, type(model).__name__)
    hooks_after = {n: (list(m._forward_pre_hooks), list(m._forward_hooks)) for n, m in model.named_modules()}
    assert hooks_after == hooks_before


def test_sliding_window_layers_are_named_by_the_mistral_backbone():
    model = tiny_model(family="llava_next", backbone="mistral")
    backbone = backbone_for(model.model.language_model, type(model).__name__)
    window = model.config.text_config.sliding_window
    assert backbone.sliding_window == window
    assert backbone.layer_kinds() == (["sliding"] if window is not None else ["full"]) * len(backbone.layers)
