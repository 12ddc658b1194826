"""An eviction round of VTA (docs/methods.md, "Eviction rounds"): every `evict_every`-th decode step, before
any layer runs, each layer evicts down to the decay's count of that step.

In the order a round runs (`EvictionRound.run`, called by `DecodeStep.start`):
1. The scored layers are split into groups of consecutive layers whose caches are alike (batch 1, every
   entry real, the same shapes: the layers between two PVTP cuts stay alike through every round, since
   they start with the same count and evict the same number), so each group is handled in one set of
   operations on its layers' stacked tensors instead of one per layer.
2. `window_queries`: the queries the cache's score window collected since the last round (the last token
   of every step, at every scored layer) are rotated together, once for all layers.
3. Per group, the attention each held entry received from those queries is added to its eviction score
   (one matmul against the stacked keys, a causal bias over the window's own tokens, a softmax, a sum).
4. Per group, the lowest-scored visual entries leave the tensors (`evict_alike`, or `PrunableLayer.evict`
   for a layer that is not alike to others: padding, filler or batches evicting different counts).
5. The window is cleared and scores, from now on, the layers that still evict at a later round.

Scores are exact: between rounds a layer's entries only grow (each step appends its tokens), so a window
query attended over the entries held at the round, up to its own token; recomputing its attention then
gives what the model computed at that step (sdpa included, which never returns the weights).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..backbones import Backbone
from ..cache import PrunableCache, ScoreWindow, evict_alike, stack_layers
from ..interfaces import CacheDecay


def scored_layers(decay: CacheDecay, cache: PrunableCache, horizon: int, visual: torch.Tensor) -> tuple[int, ...]:
    """Layers that still evict at a later round: holding `visual` (host (layers, B)), more than their count at
    the decay's horizon for some sample. Only those are scored."""
    final = cache.final_visual_counts(lambda initial: decay.keep(horizon, horizon, initial))
    return tuple(i for i, later in enumerate((visual > final).any(1).tolist()) if later)


def window_queries(backbone: Backbone, window: ScoreWindow, scaling: float | None) -> torch.Tensor:
    """(B, layers * H, steps, Dh) the window's queries, rotated at their own positions (and scaled, when every
    layer shares one scaling), for the window's layers in order."""
    queries = [step for step in window.queries if step is not None]
    steps, layers = len(queries), len(window.layers)
    heads, head_dim = backbone.num_heads, backbone.head_dim
    home = queries[0][0].device
    q = torch.stack([q.to(home) for step in queries for q in step])  # (steps * layers, B, H*Dh)
    bsz = q.shape[1]
    # (B, layers, H, steps, Dh) in memory, so every group's heads are one contiguous block of it
    q = q.view(steps, layers, bsz, heads, head_dim).permute(2, 1, 3, 0, 4).contiguous().view(bsz, -1, steps, head_dim)
    rotary = [rows for rows in window.rotary if rows is not None]
    cos, sin = (torch.cat([rows[k].to(home) for rows in rotary], 1) for k in (0, 1))  # (B, steps, Dh)
    q = backbone.rotate(q, cos, sin)
    return q * scaling if scaling is not None else q


def causal_bias(window: ScoreWindow, device: torch.device) -> torch.Tensor:
    """(steps with a query, width) additive bias over the window's own tokens, the last `width` columns of every
    layer: the query of step j sees the tokens of steps up to j (a step whose query was cropped keeps its
    remaining tokens, seen by the later queries, and has no row)."""
    steps, width = len(window.columns), sum(window.columns)
    queried = [step is not None for step in window.queries]
    if width == steps and all(queried):  # one token per step
        return torch.full((steps, width), float("-inf"), device=device).triu(1)
    seen = [n for n, has in zip(itertools.accumulate(window.columns), queried, strict=True) if has]
    hidden = torch.arange(width, device=device) >= torch.tensor(seen, device=device)[:, None]
    return torch.zeros(len(seen), width, device=device).masked_fill(hidden, float("-inf"))


@dataclass
class LayerGroup:
    """Consecutive scored layers handled together: `first` is the position of the first in the window's layers;
    `alike` when they hold alike caches (then `keys` / `scores` are their stacked tensors)."""

    layers: list[int]
    first: int
    alike: bool
    keys: torch.Tensor  # (G, B, Hkv, entries, Dh)
    scores: torch.Tensor  # (G, B, head)


def layer_groups(backbone: Backbone, cache: PrunableCache, evict: dict, scaling: float | None) -> list[LayerGroup]:
    """The window's layers split into runs of alike caches (see the module docstring); others alone."""

    def alike_key(i: int):
        held = cache.layers[i]
        if held.keys.shape[0] != 1 or not held.all_valid:
            return None
        layer_scaling = backbone.scaling(i) if scaling is None else None
        return held.keys.shape, held.keys.device, held.head_length, layer_scaling, tuple(evict.get(i, ()))

    groups = []
    position = 0
    for key, run in itertools.groupby(cache.window.layers, key=alike_key):
        members = [[i] for i in run] if key is None else [list(run)]
        for layers in members:
            held = [cache.layers[i] for i in layers]
            keys, scores = stack_layers(held, "keys"), stack_layers(held, "scores")
            groups.append(LayerGroup(layers, position, key is not None, keys, scores))
            position += len(layers)
    return groups


@dataclass(frozen=True)
class EvictionRound:
    """What the decay asks of one eviction round, for every layer at once, planned on the host."""

    evict: dict[int, list[int]]  # layer -> visual entries each sample evicts (layers evicting any)
    visual: torch.Tensor  # host (layers, B) visual entries held after the round
    entries: torch.Tensor  # host (layers, B) real entries held after the round, this forward's included
    scored: tuple[int, ...]  # layers that evict at a later round: the next window scores them

    @classmethod
    def of(cls, decay: CacheDecay, cache: PrunableCache, step: int, horizon: int) -> "EvictionRound | None":
        """n_l(t) = decay.keep(t) for every layer, never more than a layer holds (decays do not increase, see
        CacheDecay); None when no layer evicts at this step."""
        visual = torch.minimum(decay.keep(step, horizon, cache.initial_visual), cache.visual_count)
        count = cache.visual_count - visual
        evict = {i: c for i, c in enumerate(count.tolist()) if any(c)}
        if not evict:
            return None
        return cls(
            evict=evict,
            visual=visual,
            entries=cache.entry_count - count,
            scored=scored_layers(decay, cache, horizon, visual),
        )

    def run(self, backbone: Backbone, cache: PrunableCache, scaling: float | None, new_real: torch.Tensor) -> int:
        """Score the window, evict, start the next window (see the module docstring); returns the scoring FLOPs.

        Every evicting layer is in the window's layers: it held more than its final count at the last round
        (its count has not changed since), so it was scored from then on."""
        window = cache.window
        groups = layer_groups(backbone, cache, self.evict, scaling)
        flops = 0
        if window.has_queries:
            q = window_queries(backbone, window, scaling)
            bias = causal_bias(window, q.device)
            for group in groups:
                group.scores, counted = self._score(backbone, cache, scaling, group, q, bias)
                flops += counted
        held = self.entries - new_real  # real entries in each layer's tensors after the round (host)
        first = cache.layers[next(iter(self.evict))].keys.device
        columns = torch.arange(max(cache.layers[i].keys.shape[2] for i in self.evict), device=first)
        for group in groups:
            count = self.evict.get(group.layers[0])
            layers = [cache.layers[i] for i in group.layers]
            if count is not None and group.alike:
                evict_alike(layers, count[0], group.scores, columns, keys=group.keys)
                continue
            for layer, scores in zip(layers, group.scores, strict=True):
                layer.scores = scores
            for i, layer in zip(group.layers, layers, strict=True):
                if i in self.evict:
                    layer.evict(self.evict[i], held[i], columns)
        window.clear()
        window.layers = self.scored
        return flops

    @staticmethod
    def _score(backbone, cache, scaling, group: LayerGroup, q: torch.Tensor, bias: torch.Tensor):
        """The group's scores plus the attention its entries received from the window's queries (the mean over
        heads, summed over the steps), and the FLOPs of computing it."""
        heads, kv_heads, head_dim = backbone.num_heads, backbone.num_kv_heads, backbone.head_dim
        size, steps = len(group.layers), q.shape[2]
        bsz, entries = q.shape[0], group.keys.shape[3]
        keys = group.keys
        # query heads h = kv * groups + g share key head kv (repeat_kv): fold the groups, don't copy keys
        qg = q[:, group.first * heads : (group.first + size) * heads].to(keys.device)
        qg = qg.view(bsz, size, kv_heads, heads // kv_heads * steps, head_dim).transpose(0, 1)
        logits = torch.matmul(qg, keys.transpose(-1, -2))  # (G, B, Hkv, groups * steps, entries)
        if scaling is None:
            logits = logits * backbone.scaling(group.layers[0])  # alike layers share it
        width = bias.shape[1]
        window_columns = logits.view(size, bsz, kv_heads, heads // kv_heads, steps, entries)[..., entries - width :]
        window_columns.add_(bias.to(keys.device))  # in place on the view (`+=` on a slice would copy it back)
        if not group.alike:  # one layer, maybe holding filler or padding
            held = cache.layers[group.layers[0]]
            if not held.all_valid:
                logits = torch.where(held.valid[None, :, None, None, :], logits, float("-inf"))
        received = torch.softmax(logits, dim=-1, dtype=torch.float32).sum(dim=(2, 3))  # (G, B, entries)
        head = group.scores.shape[-1]
        scores = torch.add(group.scores, received[..., :head], alpha=1.0 / heads)
        return scores, 2 * size * bsz * heads * steps * entries * head_dim
