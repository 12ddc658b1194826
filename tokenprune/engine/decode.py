"""A decode step: one forward continuing a pruned cache (a generated token, or a new chat turn of several
tokens).

In the order things happen:
1. `DecodeStep.start` (entry of the model): the continuation is checked, the new tokens' metadata joins
   the cache, and the decay is planned for every layer at once on the host (`EvictionPlan`): how many
   visual entries each layer evicts now, and which layers still evict later (only those are scored).
2. `layer_input` (before each decoder layer): the layer evicts its lowest-scored visual entries at once
   by masking them, and removes evicted entries from its tensors every `evict_every` steps (one gather);
   a layer whose entries differ from the full sequence gets its own mask from its entries' validity.
3. `projected` (after the query source of a scored layer): the query of the last new token is kept.
4. `finish` (the forward returned): the attention each entry received from that query is added to the
   eviction scores of every scored layer, all layers in one pass; the cache's host counts move to the
   state after the evictions, and the report records them.

Decoding is the hot path (every layer, every token; at batch 1 on a GPU the host issuing operations is
the bottleneck): host counts decide everything, and only the hooks a step needs are on the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbones import Backbone
from ..cache import PrunableCache, PrunableLayer
from ..interfaces import CacheDecay, Strategy
from .checks import check_continuation, check_window, continuation_validity
from .masks import decode_mask
from .phase import Generation, HookSet, Phase


@dataclass(frozen=True)
class EvictionPlan:
    """What the decay asks of one decode step, for every layer at once, planned on the host."""

    evict: dict[int, list[int]]  # layer -> visual entries each sample evicts now (layers evicting any)
    visual: torch.Tensor  # host (layers, B) visual entries held after the evictions
    entries: torch.Tensor  # host (layers, B) real entries held after the evictions, this forward's included
    scored: frozenset[int]  # layers that evict at a later step: this step's attention joins their scores

    @classmethod
    def of(cls, decay: CacheDecay, cache: PrunableCache, step: int, horizon: int) -> "EvictionPlan":
        """n_l(t) = decay.keep(t) for every layer, never more than a layer holds (decays do not increase,
        see CacheDecay); a layer is scored while it holds more than its count at the horizon."""
        final = cache.final_visual_counts(lambda initial: decay.keep(horizon, horizon, initial))
        visual = torch.minimum(decay.keep(step, horizon, cache.initial_visual), cache.visual_count)
        count = cache.visual_count - visual
        per_layer = count.tolist()
        later = (visual > final).any(1).tolist()
        return cls(
            evict={i: c for i, c in enumerate(per_layer) if any(c)},
            visual=visual,
            entries=cache.entry_count - count,
            scored=frozenset(i for i, x in enumerate(later) if x),
        )


class DecodeStep(Phase):
    """One forward continuing a pruned cache (see the module docstring for its steps)."""

    def __init__(
        self,
        *,
        backbone: Backbone,
        strategy: Strategy,
        backend: str,
        scaling: float | None,
        cache: PrunableCache,
        generation: Generation,
        new_columns: int,
        new_real: torch.Tensor,
        plan: EvictionPlan | None,
    ) -> None:
        self.backbone, self.strategy, self.backend = backbone, strategy, backend
        self.scaling = scaling  # one attention scaling shared by every layer, else None
        self.cache, self.generation, self.plan = cache, generation, plan
        self.new_columns = new_columns  # M new tokens in this forward
        self.new_real = new_real  # host (B,) real new tokens
        self.new_all_valid = bool((new_real == new_columns).all())  # a padded new turn has padding among them
        self.scored = plan.scored if plan is not None else frozenset()
        if plan is not None:  # every layer may evict, and is scored until it stops evicting
            every = frozenset(range(len(backbone.layers)))
            self.hooks = HookSet(layers=every, queries=every)
        else:  # the cache keeps what prefill left: only layers holding other entries than the full sequence
            self.hooks = HookSet(layers=frozenset(i for i, layer in enumerate(cache.layers) if layer.pruned))
        self.queries = {}  # layer -> (B, H*Dh) query of the last new token
        self.valid = {}  # layer -> (B, entries) validity, when the layer's mask needed it
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
    ) -> "DecodeStep":
        tokens = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        bsz, new = tokens.shape[:2]
        decay = strategy.decay
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
        cache.add_tokens(positions.to(tokens.device).expand(bsz, -1), new_valid, new_real)
        plan = EvictionPlan.of(decay, cache, generation.steps, generation.horizon) if decay.active else None
        return cls(
            backbone=backbone,
            strategy=strategy,
            backend=backend,
            scaling=scaling,
            cache=cache,
            generation=generation,
            new_columns=new,
            new_real=new_real,
            plan=plan,
        )

    # ------------------------------------------------------------------------------------ each layer
    def layer_input(self, layer: int, args: tuple, kwargs: dict):
        held: PrunableLayer = self.cache.layers[layer]
        if self.rope is None:
            self.rope = kwargs["position_embeddings"]
        if self.plan is not None:
            count = self.plan.evict.get(layer)
            if count is not None:  # evicted now: never attended again
                held.evict_lowest(count)
            if held.stale and self.generation.steps % self.strategy.decay.evict_every == 0:
                # Physical removal is batched: one gather of the layer's cache every `evict_every` steps.
                held.remove_evicted(self.plan.entries[layer] - self.new_real)
        held.add_forward(self.new_all_valid)
        if not held.pruned:
            return None  # entries equal the full sequence: the model's own mask is right
        if self.new_columns == 1 and held.all_valid:
            if kwargs.get("attention_mask") is None:
                return None
            mask = None  # one query seeing every entry
        else:
            self.valid[layer] = held.entries_valid()
            dtype = (args[0] if args else kwargs["hidden_states"]).dtype
            mask = decode_mask(self.valid[layer], self.new_columns, self.new_all_valid, self.backend, dtype)
        return args, {**kwargs, "attention_mask": mask}

    def projected(self, layer: int, kind: str, output: torch.Tensor) -> None:
        if layer in self.scored:
            self.queries[layer] = self.backbone.queries(output)[:, -1]  # scored after the forward

    # ------------------------------------------------------------------------------------ after the forward
    def finish(self) -> None:
        if self.scored:
            self._accumulate_scores()
        plan = self.plan
        self.cache.forward_done(self.new_columns, plan.visual if plan else None, plan.entries if plan else None)
        self.generation.report.record_cache(self.cache, new_tokens=self.new_real, new_columns=self.new_columns)

    def count_logits(self, rows: int) -> None:
        self.generation.report.add_logit_rows("decode", rows)

    def _accumulate_scores(self) -> None:
        """Add the attention each entry received from this step's last query to the eviction scores of every
        scored layer (VTA's "attention received").

        This runs once after the forward instead of in each layer's hook: the queries of all scored layers
        are rotated together (they share this step's positions), then each layer costs one matmul against
        its cached keys, a softmax and a mean over heads. Scores are only read by later steps' evictions,
        which is why they can wait until the forward is done.
        """
        backbone, cache = self.backbone, self.cache
        layers = sorted(self.scored)
        heads, kv_heads, head_dim = backbone.num_heads, backbone.num_kv_heads, backbone.head_dim
        home = self.queries[layers[0]].device
        q = torch.stack([self.queries[i].to(home) for i in layers], 1)  # (B, layers, H*Dh)
        bsz = q.shape[0]
        q = q.view(bsz, len(layers) * heads, 1, head_dim)
        cos, sin = (t.to(home) for t in backbone.last_rotary_row(self.rope))
        q = backbone.rotate(q, cos, sin)
        if self.scaling is not None:
            q = q * self.scaling
        flops = 0
        for j, i in enumerate(layers):
            held: PrunableLayer = cache.layers[i]
            keys = held.keys
            # query heads h = kv * groups + g share key head kv (repeat_kv): fold the groups, don't copy keys
            qi = q[:, j * heads : (j + 1) * heads].to(keys.device).reshape(bsz, kv_heads, heads // kv_heads, head_dim)
            logits = torch.matmul(qi, keys.transpose(-1, -2))  # (B, Hkv, groups, entries)
            if self.scaling is None:
                logits = logits * backbone.scaling(i)
            if not held.all_valid:
                valid = self.valid.get(i)
                if valid is None:
                    valid = held.entries_valid()
                logits = torch.where(valid[:, None, None, :], logits, float("-inf"))
            held.add_scores(torch.softmax(logits, dim=-1, dtype=torch.float32).mean(dim=(1, 2)))
            flops += 2 * bsz * heads * keys.shape[2] * head_dim
        self.generation.report.add_scoring_flops("decode", flops)
