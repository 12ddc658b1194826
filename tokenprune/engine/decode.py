"""A decode step: one forward continuing a pruned cache (a generated token, or a new chat turn of several
tokens).

In the order things happen:
1. `DecodeStep.start` (entry of the model): the continuation is checked and the new tokens' metadata joins
   the cache. Every `evict_every`-th step is an eviction round (rounds.py, planned on the host for every
   layer at once): the attention that the queries of the steps since the last round gave each entry is
   added to its eviction score, then each layer removes its lowest-scored visual entries from its tensors,
   down to the decay's count of this step.
2. `layer_input` (before each decoder layer): a layer whose entries differ from the full sequence gets its
   own mask from its entries' validity when it needs one (batch 1 after a round needs none).
3. `projected` (after the query source of a scored layer): the query of the last new token is kept.
4. `entry_output` (the forward returned): attentions the caller asked for go to cache positions.
5. `finish`: those queries join the cache's score window for the next round; the
   cache's host counts move to the state after the round, and the report records them.

Decoding is the hot path (every layer, every token; at batch 1 on a GPU the host issuing operations is
the bottleneck): host counts decide everything, the steps between rounds issue no eviction or scoring
operation, and only the hooks a step needs are on the model.
"""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..cache import PrunableCache, PrunableLayer
from ..interfaces import Strategy
from .checks import check_continuation, check_drafts, check_window, continuation_validity
from .masks import decode_mask
from .phase import Generation, HookSet, Phase
from .rounds import EvictionRound, scored_layers


def unpruned_decode_attention(weights: torch.Tensor, held: PrunableLayer, total: int) -> torch.Tensor:
    """(B, H, new, total) attention weights of a decode step from those over a layer's held entries."""
    columns, valid = held.columns.to(weights.device), held.valid.to(weights.device)
    weights = weights.masked_fill(~valid[:, None, None, :], 0)  # filler: zeros
    out = weights.new_zeros(*weights.shape[:3], total)
    return out.scatter(3, columns[:, None, None, :].expand_as(weights), weights)


class DecodeStep(Phase):
    """One forward continuing a pruned cache (see the module docstring for its steps)."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        strategy: Strategy,
        backend: str,
        cache: PrunableCache,
        generation: Generation,
        new_columns: int,
        new_real: torch.Tensor,
        all_real: bool,
        round: EvictionRound | None,
    ) -> None:
        self.backbone, self.strategy, self.backend = backbone, strategy, backend
        self.cache, self.generation, self.round = cache, generation, round
        self.new_columns = new_columns  # M new tokens in this forward
        self.new_real = new_real  # host (B,) real new tokens
        self.new_all_valid = all_real  # a padded new turn has padding among them
        # layers whose queries join the score window (decided at the last round)
        self.scored = frozenset(cache.window.layers or ()) if strategy.decay.active else frozenset()
        layers = {i for i, layer in enumerate(cache.layers) if layer.pruned}
        if self.scored:
            layers.add(min(self.scored))  # its input carries this step's rotary rows
        self.hooks = HookSet(layers=frozenset(layers), queries=self.scored)
        self.queries = {}  # layer -> (B, H*Dh) query of the last new token
        self.rope = None  # (cos, sin) of the new tokens

    @classmethod
    def start(
        cls,
        *,
        backbone: Backbone,
        strategy: Strategy,
        backend: str,
        scaling: float | None,
        cache: PrunableCache,
        generation: Generation | None,
        images_given: bool,
        positions: torch.Tensor | None,
        kwargs: dict,
        drafts: int = 0,
    ) -> "DecodeStep":
        tokens = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        bsz, new = tokens.shape[:2]
        decay = strategy.decay
        check_drafts(drafts, strategy.name, decay.active)
        check_continuation(
            images_given=images_given,
            filled_here=generation is not None,
            strategy=strategy.name,
            horizon_needed=decay.active and generation is not None and generation.horizon is None,
            held=cache.batch_size,
            bsz=bsz,
        )
        check_window(backbone, cache.processed + new)
        new_valid, new_real = continuation_validity(
            kwargs.get("attention_mask"), cache.processed, new, bsz, tokens.device
        )
        if positions is None:  # what the language model itself would use: the next `new` positions
            positions = cache.processed + torch.arange(new, device=tokens.device)[None]
        generation.steps += 1
        all_real = all(real == new for real in new_real.tolist())  # host arithmetic: no tensor operation
        cache.add_tokens(positions.to(tokens.device).expand(bsz, -1), new_valid, new_real, all_real)
        round = None
        if decay.active:
            if cache.window.layers is None:  # the first decode step after the prefill
                cache.window.layers = scored_layers(decay, cache, generation.horizon, cache.visual_count)
            if decay.is_round(generation.steps):
                round = EvictionRound.of(decay, cache, generation.steps, generation.horizon)
        if round is not None:  # before any layer runs (rounds.py)
            generation.report.add_scoring_flops("decode", round.run(backbone, cache, scaling, new_real))
        return cls(
            backbone=backbone,
            strategy=strategy,
            backend=backend,
            cache=cache,
            generation=generation,
            new_columns=new,
            new_real=new_real,
            all_real=all_real,
            round=round,
        )

    # ------------------------------------------------------------------------------------ each layer
    def layer_input(self, layer: int, args: tuple, kwargs: dict):
        held: PrunableLayer = self.cache.layers[layer]
        if self.rope is None:
            self.rope = kwargs["position_embeddings"]
        if not held.pruned:
            return None  # entries equal the full sequence: the model's own mask is right
        if self.new_columns == 1 and held.all_valid:
            if kwargs.get("attention_mask") is None:
                return None
            mask = None  # one query seeing every entry
        else:
            dtype = (args[0] if args else kwargs["hidden_states"]).dtype
            mask = decode_mask(held.entries_valid(), self.new_columns, self.new_all_valid, self.backend, dtype)
        return args, {**kwargs, "attention_mask": mask}

    def projected(self, layer: int, kind: str, output: torch.Tensor) -> None:
        if layer in self.scored:
            self.queries[layer] = self.backbone.queries(output)[:, -1]  # scored at the next round

    # ------------------------------------------------------------------------------------ after the forward
    def entry_output(self, output) -> None:
        """Attentions of the pruned layers as transformers would give them without pruning: (B, H, new, all
        tokens so far), each held entry at its column, removed entries holding zeros."""
        attentions = getattr(output, "attentions", None)
        if not attentions:
            return
        total = self.cache.processed + self.new_columns
        output.attentions = tuple(
            w if w is None or not held.pruned else unpruned_decode_attention(w, held, total)
            for w, held in zip(attentions, self.cache.layers, strict=True)
        )

    def finish(self) -> None:
        if self.scored:
            window = self.cache.window
            window.add(
                [self.queries[i] for i in window.layers], self.backbone.last_rotary_row(self.rope), self.new_columns
            )
        round = self.round
        self.cache.forward_done(self.new_columns, round.visual if round else None, round.entries if round else None)
        self.generation.report.record_cache(self.cache, new_tokens=self.new_real, new_columns=self.new_columns)

    def count_logits(self, rows: int) -> None:
        self.generation.report.add_logit_rows("decode", rows)
