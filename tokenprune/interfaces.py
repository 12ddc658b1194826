"""The three pluggable parts of a pruning method, and the adapter contract.

A `Strategy` composes:
- a `ScoreProvider`: how important each visual token is, read from one attention layer;
- a `LayerSchedule`: during prefill, how many visual tokens each layer keeps (kept sets are nested);
- a `CacheDecay`: during decoding, which fraction of a layer's visual KV entries survives at step t.

Tensors follow the engine's per-layer *layout*: a rectangular (batch, length) arrangement of the tokens a
layer still holds, each sample right-aligned and left-filled with masked-out filler, so the last token of
every sample stays last.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from .backbones import Backbone


class StrategyParams(BaseModel):
    """Base of every strategy's parameter model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(StrategyParams):
    """The parameter model of a component without parameters."""


# --------------------------------------------------------------------------------------------- scores
@dataclass
class AttentionView:
    """What a ScoreProvider may look at in one attention layer, computed lazily on request.

    `queries` are the layer's projected queries (before RoPE) for the `Lq` tokens of this forward;
    `keys` are the layer's keys after RoPE for its `Lk` entries (cache plus this forward). The query in
    row r sits at key index `r + Lk - Lq` (the cache holds only earlier tokens).
    """

    layer: int
    raw_queries: torch.Tensor  # (B, Lq, H*Dh), output of q_proj
    keys: torch.Tensor  # (B, Hkv, Lk, Dh), after RoPE
    cos: torch.Tensor  # (B, Lq, Dh) rotary tables of the queries
    sin: torch.Tensor
    key_valid: torch.Tensor  # (B, Lk) bool: real entries (not padding / filler)
    key_visual: torch.Tensor  # (B, Lk) bool: prunable visual entries
    query_text_after_image: torch.Tensor  # (B, Lq) bool: text tokens after the sample's last visual token
    num_heads: int
    head_dim: int
    scaling: float
    rotate: Callable  # the backbone's rotary: rotate(states (B, heads, L, Dh), cos, sin)
    flops: int = 0  # multiply-adds x2 spent in attention() so far, for honest accounting

    def attention(self, rows: torch.Tensor) -> torch.Tensor:
        """Softmax attention (float32, (B, H, Q, Lk)) of the query rows `rows` (B, Q) to every key.

        Masked exactly like the model's own attention (validity + causality), so its top-k equals the
        top-k of eager `output_attentions` without ever materialising the full attention matrix.
        """
        bsz, q_len = self.raw_queries.shape[:2]
        lk = self.keys.shape[2]
        idx = rows.unsqueeze(-1)
        q = self.raw_queries.gather(1, idx.expand(-1, -1, self.raw_queries.shape[-1]))
        q = q.view(bsz, rows.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        cos = self.cos.expand(bsz, -1, -1).gather(1, idx.expand(-1, -1, self.cos.shape[-1]))
        sin = self.sin.expand(bsz, -1, -1).gather(1, idx.expand(-1, -1, self.sin.shape[-1]))
        q = self.rotate(q, cos, sin)
        logits = self._logits(q)
        key_pos = torch.arange(lk, device=rows.device)
        query_pos = rows + (lk - q_len)
        allowed = self.key_valid[:, None, :] & (key_pos[None, None, :] <= query_pos[:, :, None])
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
        # A row with no visible key (a padding or filler query) gets zeros, not the NaN of softmax(-inf).
        return torch.softmax(logits, dim=-1).masked_fill(~allowed.any(-1)[:, None, :, None], 0.0)

    def _logits(self, q: torch.Tensor) -> torch.Tensor:
        """Scaled float32 q.k scores (B, H, Q, Lk) of rotated queries q (B, H, Q, Dh) against every key.

        Query heads h = kv * groups + g share key head kv (repeat_kv); the groups are folded into the
        query axis instead of copying the keys. Scores in the model dtype, softmax later in float32, as
        eager attention does.
        """
        bsz, _, n_rows, _ = q.shape
        kv_heads, lk = self.keys.shape[1], self.keys.shape[2]
        q = q.reshape(bsz, kv_heads, (self.num_heads // kv_heads) * n_rows, self.head_dim)
        logits = torch.matmul(q, self.keys.transpose(-1, -2)).view(bsz, self.num_heads, n_rows, lk)
        self.flops += 2 * bsz * self.num_heads * n_rows * lk * self.head_dim
        return logits.float() * self.scaling

    def last_query_attention(self) -> torch.Tensor:
        """(B, Lk) float32 attention of the last query, averaged over heads.

        The fast path of `attention` for the most common row: every key precedes the last query, so no
        causal mask and no gather are needed (this runs at every layer of every decode step under VTA).
        """
        bsz = self.raw_queries.shape[0]
        q = self.raw_queries[:, -1:].view(bsz, 1, self.num_heads, self.head_dim).transpose(1, 2)
        q = self.rotate(q, self.cos[:, -1:], self.sin[:, -1:])
        logits = self._logits(q)[:, :, 0].masked_fill(~self.key_valid[:, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1).mean(dim=1)


class ScoreProvider(ABC):
    """Gives each entry of a layer an importance score; the engine ranks only the visual ones."""

    name: str = "score"

    @abstractmethod
    def score(self, view: AttentionView) -> torch.Tensor:
        """Return (B, Lk) scores, higher = more important."""


# --------------------------------------------------------------------------------------------- schedules
class LayerSchedule(ABC):
    """During prefill, how many visual tokens each layer keeps."""

    @abstractmethod
    def cut_layers(self, num_layers: int) -> list[int]:
        """Layers at whose input the visual set may shrink, ascending."""

    @abstractmethod
    def keep(self, layer: int, present: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        """Visual tokens to keep per sample at cut layer `layer`.

        `present` (B,) visual tokens still held before the cut, `total` (B,) the sample's visual count N_b.
        Must return values in [0, present].
        """

    def check(self, num_layers: int) -> None:
        """Raise InvalidParameterError when the schedule does not fit a model with `num_layers` layers."""

    @property
    def ranks(self) -> bool:
        """Whether a cut may keep some but not all visual tokens, so tokens must be ranked by a score provider."""
        return True


# --------------------------------------------------------------------------------------------- decay
class CacheDecay(ABC):
    """During decoding, the fraction of a layer's post-prefill visual KV entries kept at step t.

    The fraction must not increase with t (an evicted entry is never restored): the engine stops scoring a
    layer once it holds the count the decay keeps at its horizon.
    """

    #: False for decays that never evict: the engine then skips decode-time scoring entirely.
    active: bool = True
    #: steps over which to decay; None = the generate call's max_new_tokens.
    horizon: int | None = None
    #: eviction rounds: every `evict_every`-th decode step, each layer evicts down to its count of that step
    #: (1: every step); between rounds the counts stay
    evict_every: int = 1

    @abstractmethod
    def fraction(self, step: int, horizon: int) -> float:
        """Fraction in [0, 1] of n_l(0) kept at decode step `step` (step 0 = right after prefill)."""

    def is_round(self, step: int) -> bool:
        """Whether decode step `step` (1 = the forward after the prefill) is an eviction round."""
        return step % self.evict_every == 0

    def keep(self, step: int, horizon: int, initial: torch.Tensor) -> torch.Tensor:
        """n_l(t) = round(n_l(0) * fraction(t)), elementwise: `initial` holds n_l(0) of every layer and
        sample ((layers, B), integer, on the host); the result has its shape."""
        return torch.round(initial.double() * self.fraction(step, horizon)).long()


# --------------------------------------------------------------------------------------------- strategy
@dataclass(frozen=True)
class Strategy:
    """A pruning method: its validated parameters and the three parts they configure."""

    name: str
    params: StrategyParams
    schedule: LayerSchedule
    decay: CacheDecay
    score: ScoreProvider | None = None  # ranks tokens at prefill cuts; None when cuts keep all or nothing

    def __post_init__(self) -> None:
        if self.score is None and self.schedule.ranks:
            from .errors import InvalidParameterError

            raise InvalidParameterError(
                f"strategy '{self.name}': its layer schedule keeps part of the visual tokens, so it needs a "
                "score provider to rank them (give `score`)"
            )

    def check(self, num_layers: int) -> None:
        self.schedule.check(num_layers)

    def describe(self) -> dict:
        return {"name": self.name, **self.params.model_dump()}


# --------------------------------------------------------------------------------------------- adapters
@dataclass
class ModelParts:
    """The modules of one model that the engine works with: where a forward enters, the language model
    (described by its backbone) and the head that turns its outputs into logits."""

    entry: torch.nn.Module  # sees input_ids / attention_mask / cache before the image features are merged
    backbone: Backbone
    lm_head: torch.nn.Module


@dataclass
class VisualTokens:
    """Where the images of a batch sit in the prompt, as the adapter found them before the vision features
    were merged. All (B, L) over the entry module's input tokens."""

    placeholders: torch.Tensor  # bool: every image placeholder (what the vision features fill)
    prunable: torch.Tensor  # bool: the placeholders a strategy may remove; N_b = prunable[b].sum()
    image_of: torch.Tensor  # long: which image of its sample (0, 1, ...) a placeholder belongs to; -1 elsewhere
    video_of: torch.Tensor | None = None  # long: which video of its sample a placeholder belongs to; -1 elsewhere


class AdapterOptions(BaseModel):
    """Base of every adapter's option model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelAdapter(ABC):
    """Knows one model family: how to find its parts and where its visual tokens are."""

    name: str
    #: class names this adapter serves, for error messages
    model_classes: tuple[str, ...] = ()
    #: the adapter's options (a pydantic model); adapters without options keep the empty default
    Options: type[AdapterOptions] = AdapterOptions

    def __init__(self, options: AdapterOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    def with_options(self, **options) -> "ModelAdapter":
        """A copy of this adapter with validated `options` (InvalidParameterError names the allowed ones)."""
        from pydantic import ValidationError

        from .errors import InvalidParameterError, validation_problems

        try:
            validated = self.Options(**{**self.options.model_dump(), **options})
        except ValidationError as exc:
            problems = "; ".join(validation_problems(exc, top_level="(options)", show_input=None))
            allowed = ", ".join(self.Options.model_fields) or "none"
            raise InvalidParameterError(
                f"invalid options for adapter '{self.name}': {problems} (options of '{self.name}': {allowed})"
            ) from None
        return type(self)(validated)

    @abstractmethod
    def matches(self, model: torch.nn.Module) -> bool: ...

    @abstractmethod
    def parts(self, model: torch.nn.Module) -> ModelParts:
        """Return the model's parts; raise UnsupportedModelError for a layout the engine cannot serve."""

    def images_given(self, kwargs: dict) -> bool:
        """True when the entry module's inputs carry images or videos (a continuation of a pruned cache may not)."""
        return kwargs.get("pixel_values") is not None

    def positions(self, kwargs: dict) -> torch.Tensor | None:
        """(B, L) or (1, L) sequence positions of the entry module's input tokens, None when the model derives
        them itself. They are what the cache's metadata records; the model's own rotary tables are used
        for the computation (a family with multi-axis positions gives its sequence axis here)."""
        return kwargs.get("position_ids")

    @abstractmethod
    def visual_tokens(self, model: torch.nn.Module, kwargs: dict) -> VisualTokens | None:
        """The visual tokens of the entry module's inputs `kwargs`, None for a text-only input.

        Raise UnsupportedInputError when the inputs are inconsistent (e.g. placeholders without images).
        """


@dataclass(frozen=True)
class ComponentFactory:
    """A named, registrable way to build one component from validated parameters.

    Subclasses fix what is built (`kind`, `produces`): a Strategy, or one of its three parts, so that
    plugins can register parts and configs can compose them by name.
    """

    name: str
    params: type[BaseModel]
    build: Callable[[BaseModel], object]
    description: str = ""

    kind: ClassVar[str] = "component"
    produces: ClassVar[type] = object

    def validate(self, **params) -> BaseModel:
        """The validated parameter model; InvalidParameterError names each bad field and the allowed ones."""
        from pydantic import ValidationError

        from .errors import InvalidParameterError, validation_problems

        try:
            return self.params(**params)
        except ValidationError as exc:
            problems = validation_problems(exc, top_level="(parameters)", show_input="inline")
            allowed = ", ".join(self.params.model_fields) or "none"
            raise InvalidParameterError(
                f"invalid parameters for {self.kind} '{self.name}': "
                + "; ".join(problems)
                + f" (parameters of '{self.name}': {allowed})"
            ) from None

    def __call__(self, **params):
        built = self.build(self.validate(**params))
        if not isinstance(built, self.produces):
            from .errors import PluginError

            raise PluginError(
                f"{self.kind} '{self.name}' built a {type(built).__name__}, not a {self.produces.__name__}"
            )
        return built


@dataclass(frozen=True)
class StrategyFactory(ComponentFactory):
    kind: ClassVar[str] = "strategy"
    produces: ClassVar[type] = Strategy


@dataclass(frozen=True)
class ScoreFactory(ComponentFactory):
    kind: ClassVar[str] = "score provider"
    produces: ClassVar[type] = ScoreProvider


@dataclass(frozen=True)
class ScheduleFactory(ComponentFactory):
    kind: ClassVar[str] = "layer schedule"
    produces: ClassVar[type] = LayerSchedule


@dataclass(frozen=True)
class DecayFactory(ComponentFactory):
    kind: ClassVar[str] = "cache decay"
    produces: ClassVar[type] = CacheDecay
