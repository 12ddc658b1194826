"""A prefill: a prompt with images runs through the decoder layers while visual tokens leave at the
schedule's cuts.

In the order things happen:
1. `Prefill.start` (entry of the model): the prompt's real and visual tokens, the horizon of the decay,
   a prunable cache, the report, and the `CutPlan`: how many visual tokens each sample keeps at every cut,
   decided on the host from counts alone, so nothing is read back while the layers run.
2. `layer_input` (before each decoder layer): at a cut, the tokens are ranked by the scores of the
   previous layer ("QK heredity"), and the removed ones leave the hidden states, rotary rows, position
   ids, the layer's mask and therefore its KV cache. Samples keep different counts: each is
   right-aligned in a rectangular `Layout` and left-filled with masked-out filler, so the last token
   stays last. Left padding leaves at the first cut; padding after a sample's first real token (right
   padding) stays in every layer, because transformers computes it as queries (the last column's gives
   the next token) while masking it as a key. The layer's cache entries get their metadata (position,
   prompt column, validity, visual).
3. `projected` / `attended` (after the query source and the attention of a scored layer): the scores
   that rank the next cut, and the seeds of the decay's eviction scores, computed from the layer's own
   queries and cached keys (no eager attention needed).
4. `final_norm`: removed tokens are put back with the hidden state they had when removed, so outputs keep
   the prompt's length.
5. `entry_output` (the forward returned): attentions / hidden states the caller asked for go back to
   prompt positions, as without pruning.
6. `finish`: the cache's host counts start from the layers' counts, and the report records them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from ..backbones import Backbone
from ..cache import PrunableCache, PrunableLayer, compact
from ..errors import UnsupportedModelError
from ..interfaces import AttentionView, LayerSchedule, Strategy, VisualTokens
from ..report import Report
from .checks import check_drafts, check_window, prompt_validity
from .masks import prefill_mask
from .phase import Generation, HookSet, Phase


def generation_horizon(prompt_length: int) -> int | None:
    """max_new_tokens of the enclosing `generate()` call, read (never written) from its frames."""
    frame = inspect.currentframe()
    for _ in range(64):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            return None
        config = frame.f_locals.get("generation_config")
        if isinstance(config, GenerationConfig):
            if config.max_new_tokens:
                return int(config.max_new_tokens)
            if config.max_length:
                return max(1, int(config.max_length) - prompt_length)
    return None


@dataclass(frozen=True)
class CutPlan:
    """Host-side plan of a prefill: the visual tokens each sample keeps at every cut that removes any
    ({layer: (B,)}), and the cuts among them that keep some but not all (they rank by the previous layer's
    scores)."""

    budgets: dict[int, torch.Tensor]
    ranked: frozenset[int]

    @classmethod
    def of(cls, schedule: LayerSchedule, cut_layers: list[int], total_visual: torch.Tensor) -> "CutPlan":
        present, budgets, ranked = total_visual, {}, set()
        for layer in cut_layers:
            keep = torch.minimum(schedule.keep(layer, present, total_visual).clamp(min=0), present)
            if bool((keep < present).any()):
                budgets[layer] = keep
                if bool(((keep > 0) & (keep < present)).any()):
                    ranked.add(layer)
            present = keep
        return cls(budgets, frozenset(ranked))

    @property
    def ranking_layers(self) -> frozenset[int]:
        """Layers whose scores rank the next layer's cut."""
        return frozenset(layer - 1 for layer in self.ranked)


@dataclass
class Layout:
    """The tokens one prefill layer holds: (B, L') rectangles, each sample right-aligned."""

    source: torch.Tensor  # index of each entry in the prompt
    valid: torch.Tensor  # real token (not padding, not filler)
    visual: torch.Tensor  # prunable visual token still present
    positions: torch.Tensor  # RoPE position id
    query_only: torch.Tensor  # padding after the sample's first real token: a query, never a key (see `start`)

    def select(self, index: torch.Tensor, keep: torch.Tensor) -> "Layout":
        """The entries `index` (B, L'); those not in `keep` are filler."""
        kept = keep.gather(1, index)
        valid = self.valid.gather(1, index) & kept
        return Layout(
            source=self.source.gather(1, index),
            valid=valid,
            visual=self.visual.gather(1, index) & valid,
            positions=self.positions.gather(1, index),
            query_only=self.query_only.gather(1, index) & kept,
        )

    @property
    def computed(self) -> torch.Tensor:
        """Entries whose output the model returns: real tokens and query-only padding (not filler)."""
        return self.valid | self.query_only

    def to(self, device: torch.device) -> "Layout":
        if self.source.device == device:
            return self
        fields = (self.source, self.valid, self.visual, self.positions, self.query_only)
        return Layout(*(t.to(device) for t in fields))


def rank_keep(scores: torch.Tensor, candidates: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mask of the `keep[b]` highest-scored candidates of each row (ties: earlier entry first)."""
    masked = scores.float().masked_fill(~candidates, float("-inf"))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return candidates & (rank < keep[:, None])


def _scatter_rows(into: torch.Tensor, index: torch.Tensor, where: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`into` (B, L, D) with row index[b, j] replaced by rows[b, j] wherever where[b, j]; `index` must not
    repeat within a sample. Out of place, and without reading `where` back to the host."""
    index = index.to(into.device)[..., None].expand(-1, -1, into.shape[-1])
    kept = into.gather(1, index)
    return into.scatter(1, index, torch.where(where.to(into.device)[..., None], rows.to(into.device, into.dtype), kept))


def unpruned_attention(weights: torch.Tensor, layout: Layout, length: int) -> torch.Tensor:
    """(B, H, length, length) attention weights of a prefill layer from those over its layout's entries: each
    entry's row and column go to its prompt position; filler and removed positions hold zeros."""
    bsz, heads, width, _ = weights.shape
    lay = layout.to(weights.device)
    allowed = lay.computed[:, None, :, None] & lay.valid[:, None, None, :]  # filler rows and keys: zeros
    weights = weights.masked_fill(~allowed, 0)
    source = lay.source[:, None]
    columns = weights.new_zeros(bsz, heads, width, length).scatter(3, source[:, :, None].expand_as(weights), weights)
    return weights.new_zeros(bsz, heads, length, length).scatter(
        2, source[..., None].expand(-1, heads, -1, length), columns
    )


class Prefill(Phase):
    """One forward over a prompt with images (see the module docstring for its steps)."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        strategy: Strategy,
        backend: str,
        plan: CutPlan,
        cut_layers: list[int],
        layout: Layout,
        cache: PrunableCache | None,
        report: Report,
        horizon: int | None,
        kwargs: dict,
        real: torch.Tensor,
        query_only: torch.Tensor,
        present: torch.Tensor,
        image_end: torch.Tensor,
        drafts: int = 0,
    ) -> None:
        self.backbone, self.strategy, self.backend = backbone, strategy, backend
        self.drafts = drafts  # trailing drafted tokens (assisted decoding's first forward): not scored
        self.plan, self.cut_layers = plan, frozenset(cut_layers)
        self.layout = layout
        self.cache, self.report, self.horizon = cache, report, horizon
        self.kwargs = kwargs  # the entry module's arguments, with the prunable cache
        self.real = real  # host (B,) real tokens the current layout holds
        self.query_only = query_only  # host (B,) query-only padding it holds (every layout; the rest is filler)
        self.present = present  # host (B,) visual tokens the current layout holds
        self.image_end = image_end  # (B,) prompt index of the last visual token (-1 without image)
        self.length = layout.source.shape[1]  # padded prompt length
        self.home = layout.source.device  # device of the prompt tensors: report counts are gathered here
        # Layers scored after their attention: those ranking the next cut, and every layer when the cache
        # decays (its eviction scores start from the last prompt token's attention).
        decays = strategy.decay.active and cache is not None
        self.scored = frozenset(range(len(backbone.layers))) if decays else plan.ranking_layers
        every = frozenset(range(len(backbone.layers)))
        self.hooks = HookSet(
            layers=every,
            queries=self.scored,
            keys=self.scored if cache is None else frozenset(),
            attention=self.scored,
            language_model=backbone.injects,
        )
        self.changed = False  # a cut removed tokens: later layers get the layout's tensors
        self.full_rope = None  # (cos, sin) of the whole prompt, as the model computed them
        self.full_positions = None  # (B, L) position ids the layers receive for the whole prompt (or None)
        self.rope = self.mask = self.layer_positions = None  # rotary rows, mask, position ids of the current layout
        self.injections = None  # hidden-state additions taken over from the language model (Injections)
        self.next_scores = None  # scores of the last scored layer, ranking the next cut
        self.restore = None  # (B, L, D) hidden state of each removed token
        self.layer_counts = []  # per layer: (present, real, columns) of its layout, for the cache's counts
        self.layer_layouts = []  # per layer: its Layout, None while it holds the whole prompt (for its outputs)
        self.stash = {}  # query / key source outputs of the running layer

    @classmethod
    def start(
        cls,
        *,
        backbone: Backbone,
        strategy: Strategy,
        backend: str,
        cut_layers: list[int],
        tokens: VisualTokens,
        positions: torch.Tensor | None,
        kwargs: dict,
        use_cache: bool,
        drafts: int = 0,
    ) -> "Prefill":
        """`drafts`: the prompt ends with that many drafted tokens to verify (assisted or prompt-lookup
        decoding's first forward): the visual tokens are scored as for the prompt without them."""
        bsz, length = tokens.prunable.shape
        device = tokens.prunable.device
        check_drafts(drafts, strategy.name, strategy.decay.active)
        if use_cache:  # first: a static cache brings its own 4D mask, which is not the user's doing
            PrunableCache.check_adoptable(kwargs.get("past_key_values"))
        valid = prompt_validity(kwargs.get("attention_mask"), tokens.prunable.shape, device)
        index = torch.arange(length, device=device).expand(bsz, -1)
        first = torch.where(valid, index, length).min(1).values[:, None]  # each sample's first real token
        last = torch.where(valid, index, -1).max(1).values[:, None]  # and its last
        # The last real token is never removed: it produces the next token (left padding), or its text is what
        # the padding after it reads (right padding).
        visual = tokens.prunable & valid & (index != last)
        # Padding after a sample's first real token (right padding; padding between real tokens, as when
        # generate re-runs a right-padded prompt with its new tokens) is computed by transformers as queries
        # that see the real tokens before them, while masked as keys: it stays in every layer, as a query.
        # Padding before it leaves at the first cut (it sees nothing, and nothing sees it).
        query_only = ~valid & (index > first)
        planned = generation_horizon(length)
        check_window(backbone, length + (planned or 0))
        if positions is None:  # what the language model itself would use
            positions = torch.arange(length, device=device)[None]
        positions = positions.to(device).expand(bsz, -1)
        cache = None
        if use_cache:
            # generate()'s fresh cache (or the caller's own empty one) becomes prunable in place, so whoever
            # holds that object keeps using it; anything else is refused.
            cache = PrunableCache.adopt(kwargs.get("past_key_values"), len(backbone.layers))
            kwargs = {**kwargs, "past_key_values": cache}
        horizon = None
        if strategy.decay.active and cache is not None:
            horizon = strategy.decay.horizon or planned
        # End of the last image, newline tokens included: text_mean scores use the text after it. The last
        # real token always counts as text (it is never removed), so that query set is never empty.
        image_tokens = tokens.placeholders & valid & (index != last)
        image_end = torch.where(image_tokens, index, torch.full_like(index, -1)).max(1).values
        report = Report.start(
            strategy=strategy.describe(),
            shape=backbone.shape(),
            valid=valid,
            visual=visual,
            image_of=torch.where(valid, tokens.image_of, -1),
            video_of=None if tokens.video_of is None else torch.where(valid, tokens.video_of, -1),
            dtype=backbone.kv_dtype,
            horizon=horizon,
        )
        # Read once, before the layers run; from here on the prefill decides from host counts only.
        real, total_query_only, total_visual = torch.stack([valid.sum(1), query_only.sum(1), visual.sum(1)]).cpu()
        return cls(
            backbone=backbone,
            strategy=strategy,
            backend=backend,
            cut_layers=cut_layers,
            plan=CutPlan.of(strategy.schedule, cut_layers, total_visual),
            layout=Layout(source=index, valid=valid, visual=visual, positions=positions, query_only=query_only),
            cache=cache,
            report=report,
            horizon=horizon,
            kwargs=kwargs,
            real=real,
            query_only=total_query_only,
            present=total_visual,
            image_end=image_end,
            drafts=drafts,
        )

    # ------------------------------------------------------------------------------------ each layer
    def layer_input(self, layer: int, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs["hidden_states"]
        # The layout follows the hidden states it indexes (on the previous layer's device under accelerate).
        self.layout = self.layout.to(hidden.device)
        if self.full_rope is None:
            self.full_rope = kwargs["position_embeddings"]
            received = kwargs.get("position_ids")
            self.full_positions = None if received is None else received.expand(hidden.shape[0], -1)
        if self.injections is not None and 0 < layer <= len(self.injections.rows):
            hidden = self.injections.add(layer - 1, hidden, self.layout.source, self.layout.valid)
            args, kwargs = self._with_hidden(args, kwargs, hidden)
        if layer in self.cut_layers:
            if layer in self.plan.budgets:
                hidden = self._cut(layer, hidden, self.plan.budgets[layer])
            self.report.record_cut(layer, self.layout.source.to(self.home), self.layout.visual.to(self.home))
        self.layer_counts.append((self.present, self.real, self.layout.valid.shape[1]))
        self.report.record_prefill_layer(layer, self.real, self.present)
        if self.cache is not None:
            held: PrunableLayer = self.cache.layers[layer]
            lay = self.layout
            held.append_meta(lay.positions, lay.source, lay.valid, lay.visual, pruned=self.changed)
        self.layer_layouts.append(self.layout if self.changed else None)
        if not self.changed:
            return None if self.injections is None else (args, kwargs)
        kwargs = {
            **kwargs,
            "attention_mask": self.mask,
            "position_ids": self.layer_positions,
            "position_embeddings": self.rope,
        }
        return self._with_hidden(args, kwargs, hidden)

    @staticmethod
    def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def language_model_input(self, kwargs: dict) -> dict | None:
        kwargs, self.injections = self.backbone.take_injections(kwargs)
        return None if self.injections is None else kwargs

    def _cut(self, layer: int, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        device = lay.visual.device
        if layer in self.plan.ranked:
            if self.next_scores is None:
                raise UnsupportedModelError(
                    f"layer {layer} must rank visual tokens but no scores were computed at layer {layer - 1}"
                )
            kept_visual = rank_keep(self.next_scores.to(device), lay.visual, keep.to(device))
        else:  # every sample keeps all or none: no ranking needed
            kept_visual = lay.visual & (keep > 0).to(device)[:, None]
        self.next_scores = None
        keep_mask = (lay.valid & ~lay.visual) | kept_visual | lay.query_only
        if self.restore is None:
            self.restore = hidden.new_zeros(hidden.shape[0], self.length, hidden.shape[-1])
        # Keep each dropped token's hidden state at its prompt index (sources are unique within a layout, so
        # one scatter writes them without reading back which tokens were dropped).
        self.restore = _scatter_rows(self.restore, lay.source, lay.valid & ~keep_mask, hidden)
        self.real, self.present = self.real - (self.present - keep), keep
        length = int((self.real + self.query_only).max())
        index = compact(keep_mask, length)
        self.layout = lay.select(index, keep_mask)
        self.changed = True
        hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        self.rope = self.backbone.rotary_rows(self.full_rope, self.layout.source)
        if self.full_positions is not None:
            self.layer_positions = self.full_positions.to(index.device).gather(1, self.layout.source)
        if self.backend == "sdpa" and bool((self.real == length).all()):
            self.mask = None  # no filler or padding: one causal sequence, and sdpa's causal kernel applies
        else:
            self.mask = prefill_mask(self.layout.valid, self.backend, hidden.dtype)
        return hidden

    # ------------------------------------------------------------------------------------ scores
    def projected(self, layer: int, kind: str, output: torch.Tensor) -> None:
        if layer in self.scored:
            self.stash[kind] = output

    def attended(self, layer: int, kwargs: dict) -> None:
        if layer not in self.scored:
            return
        with torch.no_grad():  # a ranking is never differentiated (and recomputing a checkpointed layer skips it)
            self._score(layer, kwargs)

    def _score(self, layer: int, kwargs: dict) -> None:
        cos, sin = kwargs["position_embeddings"]
        backbone = self.backbone
        if self.cache is not None:
            keys = self.cache.layers[layer].keys
        else:
            keys = backbone.rotate(backbone.keys(self.stash["k"]), cos, sin)
        lay = self.layout.to(keys.device)  # the layer ran where its keys are
        text_after = lay.valid & ~lay.visual & (lay.source > self.image_end.to(keys.device)[:, None])
        queries, valid, visual = backbone.queries(self.stash["q"]), lay.valid, lay.visual
        prompt = keys.shape[2] - self.drafts  # drafts are the last entries of every layout: text, never removed
        if self.drafts:  # scored as the prompt alone: its rows attend only to earlier ones, drafts do not count
            queries, keys, cos, sin = queries[:, :prompt], keys[:, :, :prompt], cos[:, :prompt], sin[:, :prompt]
            valid, visual, text_after = valid[:, :prompt], visual[:, :prompt], text_after[:, :prompt]
        view = AttentionView(
            layer=layer,
            raw_queries=queries,
            keys=keys,
            cos=cos,
            sin=sin,
            key_valid=valid,
            key_visual=visual,
            query_text_after_image=text_after,
            num_heads=backbone.num_heads,
            head_dim=backbone.head_dim,
            scaling=backbone.scaling(layer),
            rotate=backbone.rotate,
        )
        if layer + 1 in self.plan.ranked and self.strategy.score is not None:  # the cut at layer + 1 ranks by these
            self.next_scores = self.strategy.score.score(view)
            if self.drafts:  # the drafts' columns: never visual, never ranked
                self.next_scores = torch.nn.functional.pad(self.next_scores, (0, self.drafts))
        if self.cache is not None and self.strategy.decay.active:
            # Seed the eviction score with the last prompt token's attention at this layer.
            self.cache.layers[layer].seed_scores(view.last_query_attention())
        self.report.add_scoring_flops("prefill", view.flops)
        self.stash.clear()

    # ------------------------------------------------------------------------------------ outputs
    def final_norm(self, args: tuple):
        hidden = args[0]
        lay = self.layout.to(hidden.device)
        if self.injections is not None and len(self.injections.rows) >= len(self.backbone.layers):
            hidden = self.injections.add(len(self.backbone.layers) - 1, hidden, lay.source, lay.valid)
        if not self.changed:
            return None if self.injections is None else (hidden, *args[1:])
        restored = _scatter_rows(self.restore.to(hidden.device, hidden.dtype), lay.source, lay.computed, hidden)
        return (restored, *args[1:])

    def entry_output(self, output) -> None:
        """Attentions and hidden states of the layers after a cut, as transformers would give them without
        pruning: indexed by prompt position. Attention rows and columns of removed tokens hold zeros; a removed
        token's hidden state is the one it had when it was removed (as in the last hidden state)."""
        if not self.changed:
            return
        attentions = getattr(output, "attentions", None)
        if attentions:
            output.attentions = tuple(
                w if lay is None or w is None else unpruned_attention(w, lay, self.length)
                for w, lay in zip(attentions, self.layer_layouts, strict=True)
            )
        hidden = getattr(output, "hidden_states", None)
        if hidden:  # [0] enters layer 0, [j] leaves layer j - 1; the last may be the final (restored) output
            layouts = [None, *self.layer_layouts]
            output.hidden_states = tuple(
                h
                if lay is None or h is None or h is getattr(output, "last_hidden_state", None)
                else _scatter_rows(self.restore.to(h.device, h.dtype), lay.source, lay.computed, h)
                for h, lay in zip(hidden, layouts, strict=False)
            )

    def finish(self) -> Generation | None:
        if self.cache is None:
            return None
        self.cache.prefilled(self.length, *zip(*self.layer_counts, strict=True), drafts=self.drafts)
        self.report.record_cache(self.cache)
        return Generation(self.report, self.horizon)

    def count_logits(self, rows: int) -> None:
        self.report.add_logit_rows("prefill", rows)
