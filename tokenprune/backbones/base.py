"""The backbone contract (see the package docstring): `Backbone` and the `DecoderShape` that prices it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import UnsupportedModelError

#: the attention kinds a layer may have; the engine serves `full` layers, `sliding` ones while a sequence
#: fits inside the window (where they are full attention), and refuses `linear` ones
LAYER_KINDS = ("full", "sliding", "linear")


@dataclass(frozen=True)
class DecoderShape:
    """The sizes that price a LLaMA-style decoder (GQA attention, SwiGLU MLP with three matrices), and its
    FLOPs formulas. Plain data: a report keeps it, and it can be re-priced at another size with
    `dataclasses.replace`. A backbone whose layers cost otherwise (biases, experts) subclasses it."""

    layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def linear_flops_per_token(self) -> int:
        """2 x multiply-adds of one token through one layer's projections and MLP:
        q (D*H*Dh), k and v (2*D*Hkv*Dh), o (H*Dh*D), SwiGLU (3*D*F)."""
        d, h, kv, dh, f = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        return 2 * (d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * f)

    def attention_flops_per_pair(self) -> int:
        """One query attending to one key: QK^T and AV, over every query head."""
        return 4 * self.num_heads * self.head_dim

    def prefill_layer_flops(self, n: int) -> int:
        """One layer computing `n` tokens from scratch, causally."""
        return n * self.linear_flops_per_token() + self.attention_flops_per_pair() * n * (n + 1) // 2

    def lm_head_flops_per_row(self) -> int:
        return 2 * self.hidden_size * self.vocab_size

    def fastv_formula(self, n: int) -> int:
        """The FastV paper's per-layer formula 4nd^2 + 2n^2 d + 2ndm, for comparison with published tables."""
        d, m = self.hidden_size, self.intermediate_size
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    def kv_values_per_entry(self) -> int:
        """Numbers one cached entry holds in one layer: a key and a value per KV head."""
        return 2 * self.num_kv_heads * self.head_dim


@dataclass
class Injections:
    """Rows a language model adds to the hidden states of some prompt tokens right after its first layers
    (Qwen3-VL's deepstack visual features): level i, `rows[i]` (n, D), is added after layer i to the tokens
    of `mask` (B, L), in row-major order, as the model would add them to the full prompt."""

    mask: torch.Tensor
    rows: list[torch.Tensor]

    def __post_init__(self) -> None:
        mask = self.mask.bool()
        index = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
        index[mask] = torch.arange(int(mask.sum()), device=mask.device)
        self.row_of = index  # (B, L) row of each masked token, -1 elsewhere

    def add(self, level: int, hidden: torch.Tensor, source: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
        """`hidden` (B, L', D) of the prompt tokens `source` (B, L') with level `level` added to the masked
        ones among the `held` (real) entries; the same addition, in the same dtype, as the model's."""
        row = self.row_of.to(hidden.device).gather(1, source.to(hidden.device))
        take = (row >= 0) & held.to(hidden.device)
        rows = self.rows[level].to(hidden.device, hidden.dtype)[row.clamp(min=0)]
        return torch.where(take[..., None], hidden + rows, hidden)


class Backbone(ABC):
    """One decoder-only language model, as the engine sees it. Subclasses serve one family each."""

    name: ClassVar[str]
    #: class names of the language models (e.g. "LlamaModel") this backbone serves
    language_models: ClassVar[tuple[str, ...]]
    #: whether the language model adds to hidden states after its first layers (see `take_injections`)
    injects: ClassVar[bool] = False

    def __init__(self, language_model: torch.nn.Module, model_name: str) -> None:
        self.model = language_model
        self.config = language_model.config
        self.layers: list[torch.nn.Module] = list(language_model.layers)
        if not self.layers or len(self.layers) != self.config.num_hidden_layers:
            raise UnsupportedModelError(
                f"{model_name}: {len(self.layers)} decoder layers found but config.num_hidden_layers="
                f"{self.config.num_hidden_layers}; the engine needs every configured layer to run"
            )
        kinds = self.layer_kinds()
        unknown = sorted({kind for kind in kinds if kind not in LAYER_KINDS})
        if unknown or len(kinds) != len(self.layers):
            raise UnsupportedModelError(f"backbone '{self.name}' describes layer kinds {kinds}; allowed: {LAYER_KINDS}")
        linear = [i for i, kind in enumerate(kinds) if kind == "linear"]
        if linear:
            raise UnsupportedModelError(
                f"{model_name} has linear-attention layers ({', '.join(map(str, linear[:5]))}"
                f"{' ...' if len(linear) > 5 else ''}); they keep no per-token KV entries to prune, and "
                "tokenprune serves only models whose every layer is full or sliding-window attention"
            )

    # ------------------------------------------------------------------------------------ modules
    @property
    def norm(self) -> torch.nn.Module:
        """The final norm: removed tokens are put back at its input so outputs keep the prompt's length."""
        return self.model.norm

    def attention(self, layer: int) -> torch.nn.Module:
        return self.layers[layer].self_attn

    @abstractmethod
    def query_source(self, layer: int) -> torch.nn.Module:
        """The module whose output gives the query states the attention uses (before rotary)."""

    @abstractmethod
    def key_source(self, layer: int) -> torch.nn.Module:
        """The module whose output gives the key states the attention uses (before rotary)."""

    # ------------------------------------------------------------------------------------ states
    @abstractmethod
    def queries(self, output: torch.Tensor) -> torch.Tensor:
        """(B, L, H*Dh) query states from `query_source`'s output, exactly as the attention uses them."""

    @abstractmethod
    def keys(self, output: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, L, Dh) key states from `key_source`'s output, before rotary."""

    @abstractmethod
    def rotate(self, states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary applied to (B, heads, L, Dh) states with the (B, L, Dh) rows `cos` / `sin`, bit for bit as
        the attention applies it to its queries and keys."""

    def rotary_rows(self, position_embeddings: tuple, index: torch.Tensor) -> tuple:
        """The rotary tables (cos, sin) a layer receives, restricted to the tokens at `index` (B, L') of the
        full sequence: the rows kept tokens had before pruning, so their positions do not change."""
        src = index[..., None]
        cos, sin = (t.to(index.device).expand(index.shape[0], -1, -1) for t in position_embeddings)
        return cos.gather(1, src.expand(-1, -1, cos.shape[-1])), sin.gather(1, src.expand(-1, -1, sin.shape[-1]))

    def last_rotary_row(self, position_embeddings: tuple) -> tuple:
        """(cos, sin) of the last token of a forward: the query whose attention scores decoding."""
        return tuple(t[:, -1:] for t in position_embeddings)

    def take_injections(self, kwargs: dict) -> tuple[dict, Injections | None]:
        """The language model's keyword arguments without the hidden-state additions it would make after its
        first layers (indexed by the full prompt, so wrong once tokens left), and those additions for the
        engine to make instead. Families without such additions return `kwargs` and None."""
        return kwargs, None

    # ------------------------------------------------------------------------------------ sizes
    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.config.num_key_value_heads or self.config.num_attention_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads

    @property
    def kv_dtype(self) -> torch.dtype:
        """The dtype of the cached keys and values: the attention's weights'."""
        return next(self.attention(0).parameters()).dtype

    def scaling(self, layer: int) -> float:
        """The factor the attention multiplies q.k by in `layer`."""
        return float(self.attention(layer).scaling)

    def shape(self) -> DecoderShape:
        cfg = self.config
        return DecoderShape(
            layers=len(self.layers),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            vocab_size=cfg.vocab_size,
        )

    # ------------------------------------------------------------------------------------ layer kinds
    def layer_kinds(self) -> list[str]:
        """The attention kind of each layer (see LAYER_KINDS): full attention unless the family says otherwise."""
        return ["full"] * len(self.layers)

    @property
    def sliding_window(self) -> int | None:
        """Window of the `sliding` layers (None when there are none): the engine's own masks are plain
        causal, so it serves sequences that stay inside the window."""
        return None

    @property
    def layers_drop_cache(self) -> bool:
        """True while the decoder layers run without the cache: gradient checkpointing in training mode makes
        transformers pass them `past_key_values=None` (unless the layer class can checkpoint with a cache)."""
        return any(
            getattr(layer, "gradient_checkpointing", False)
            and layer.training
            and not getattr(layer, "_can_checkpoint_with_cache", False)
            for layer in self.layers
        )
