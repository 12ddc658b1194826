"""A DynamicCache whose layers may hold different entries, with per-entry metadata.

Each layer records, for every cached entry, its RoPE position, its column in the full sequence (prompt
index, then one per token processed after the prompt), whether it is real (not padding or filler) and
whether it is a prunable visual token, plus an accumulated attention score for eviction.
The metadata follows every batch operation transformers applies to a cache (beam reorder, select,
repeat), so beam search and friends stay correct after entries were removed.

Decoding is the hot path (one forward per token, every layer), so the bookkeeping is split to keep the
per-layer work per step small:
- *head / tail*: a layer's own metadata (`head_*`) covers its entries up to its last compaction: the
  prompt's kept tokens and the generated tokens compacted with them. Every token processed after the
  prompt has the same metadata in every layer, so it is stored once, in the cache's shared `tail`; a
  layer's entries continue with the tail from column `tail_from`. Tokens after the prompt are never
  visual, so `head_visual` and `scores` cover the head only.
- *host counts*: visual and real entries per layer and sample are kept on the host as (layers, batch)
  tensors, updated arithmetically (evictions, new tokens), so deciding what to evict, building reports and
  sizing compactions need no device sync and no per-layer reductions.
The full-length `positions` / `columns` / `valid` / `visual` of a layer's held entries are derived on
request (a tail token's column follows from its place in the tail, so the tail stores none).

Devices: a model dispatched by accelerate (`device_map="auto"`) computes each layer on its own device, so
each layer's metadata lives where that layer's keys live. The engine may hand in metadata from another
device (the hidden states reach a layer's pre-hook before accelerate moves them); the layer moves it to
its keys' device on the first `update`, and the shared tail is copied to a layer's device when read there.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from .errors import UnsupportedInputError

_HEAD = ("head_positions", "head_columns", "head_valid", "head_visual", "scores")
_COUNTS = ("initial_visual", "final_visual", "visual_count", "entry_count")


def compact(keep: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Index (B, L') that right-aligns the kept entries of every row, in order; L' = `length`, the most any
    row keeps (computed from `keep` when not given, which costs a device sync).

    Rows keeping fewer entries are left-filled with not-kept ones, which callers mark invalid.
    """
    columns = keep.shape[1]
    if length is None:
        length = int(keep.sum(1).max())
    order = torch.argsort(keep.long() * columns + torch.arange(columns, device=keep.device), dim=1)
    return order[:, columns - length :]


class _Tail:
    """Metadata of the tokens processed after the prompt (the same in every layer): (B, T) positions and
    validity, with copies per device for layers on other devices (accelerate)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.positions: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.start = 0  # column of the first tail token in the full sequence (the prompt's length)
        self._copies: dict = {}

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def append(self, positions: torch.Tensor, valid: torch.Tensor) -> None:
        if self.valid is None:
            self.positions, self.valid = positions, valid
        else:
            self.positions = torch.cat([self.positions, positions.to(self.positions.device)], 1)
            self.valid = torch.cat([self.valid, valid.to(self.valid.device)], 1)
        self._copies.clear()

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, valid) on `device`."""
        if self.valid.device == device:
            return self.positions, self.valid
        if device not in self._copies:
            self._copies[device] = (self.positions.to(device), self.valid.to(device))
        return self._copies[device]

    def columns(self, device: torch.device) -> torch.Tensor:
        """(B, T) column of every tail token in the full sequence."""
        return (self.start + torch.arange(self.length, device=device))[None].expand(self.valid.shape[0], -1)

    def index_batch(self, fn) -> None:
        if self.valid is not None:
            self.positions, self.valid = fn(self.positions), fn(self.valid)
        self._copies.clear()

    def truncate(self, columns: int) -> None:
        """Drop the last `columns` tokens (a crop)."""
        keep = self.length - columns
        self.positions, self.valid = self.positions[:, :keep], self.valid[:, :keep]
        self._copies.clear()


class ScoreWindow:
    """What the decode steps since the last eviction round leave for the next round to score: for each step,
    the query of its last token at every scored layer, that token's rotary row and the step's column count.

    Kept with the cache because, like the cache, it is per sample: it follows beam reorders and selections.
    """

    def __init__(self) -> None:
        self.layers: tuple[int, ...] | None = None  # layers scored in this window (None: not decoding yet)
        self.clear()

    def clear(self) -> None:
        # step -> layer (in `layers` order) -> (B, H*Dh); None for a step whose last token was cropped
        self.queries: list[list[torch.Tensor] | None] = []
        self.rotary: list[tuple[torch.Tensor, torch.Tensor] | None] = []  # step -> (cos, sin), (B, 1, Dh) each
        self.columns: list[int] = []  # step -> new tokens (still held)

    def add(self, queries: list[torch.Tensor], rotary: tuple, columns: int) -> None:
        self.queries.append(queries)
        self.rotary.append(tuple(rotary))
        self.columns.append(columns)

    @property
    def has_queries(self) -> bool:
        return any(step is not None for step in self.queries)

    def crop(self, columns: int) -> None:
        """The last `columns` tokens left the cache (assisted or prompt-lookup decoding rejected them): steps
        wholly removed leave the window; a step partly removed keeps its remaining tokens (which later
        queries see) but loses its query, whose token is gone."""
        while columns > 0 and self.columns:
            if self.columns[-1] <= columns:
                columns -= self.columns.pop()
                self.queries.pop()
                self.rotary.pop()
            else:
                self.columns[-1] -= columns
                self.queries[-1] = self.rotary[-1] = None
                columns = 0

    def index_batch(self, fn) -> None:
        self.queries = [None if step is None else [fn(q) for q in step] for step in self.queries]
        self.rotary = [None if rows is None else tuple(fn(t) for t in rows) for rows in self.rotary]


class PrunableLayer(DynamicLayer):
    def __init__(self, tail: _Tail) -> None:
        super().__init__()
        self.tail = tail
        # head_visual marks the prompt's prunable visual entries; one is still held while head_valid is set
        self.head_positions = self.head_columns = self.head_valid = self.head_visual = None
        self.scores = None  # (B, head) accumulated attention of held visual entries; +inf for every other entry
        self.tail_from = 0  # tail column of this layer's first entry after its head
        self.pruned = False  # True once this layer's entries differ from the full sequence
        self.all_valid = False  # host flag: no padding / filler entry (then a decode step needs no mask)

    # ------------------------------------------------------------------------------------ metadata
    @property
    def meta_device(self) -> torch.device | None:
        """Where this layer's metadata lives: its keys' device once it holds entries."""
        if self.is_initialized:
            return self.keys.device
        return None if self.head_valid is None else self.head_valid.device

    @property
    def head_length(self) -> int:
        return 0 if self.head_valid is None else self.head_valid.shape[1]

    @property
    def held_tail(self) -> int:
        """Tail columns whose keys this layer holds (the tokens of a running forward join at its update)."""
        held = self.keys.shape[2] if self.is_initialized else self.head_length
        return held - self.head_length

    def _with_tail(self, head: torch.Tensor, tail_part: torch.Tensor | None, columns: int) -> torch.Tensor:
        if columns <= 0:
            return head
        return torch.cat([head, tail_part[:, self.tail_from : self.tail_from + columns]], 1)

    def _tail_meta(self, index: int):
        return self.tail.on(self.head_valid.device)[index] if self.tail.valid is not None else None

    @property
    def positions(self) -> torch.Tensor:
        """(B, held) RoPE position of every held entry."""
        return self._with_tail(self.head_positions, self._tail_meta(0), self.held_tail)

    @property
    def columns(self) -> torch.Tensor:
        """(B, held) column of every held entry in the full sequence (where transformers' outputs index it)."""
        tail = self.tail.columns(self.head_valid.device) if self.tail.valid is not None else None
        return self._with_tail(self.head_columns, tail, self.held_tail)

    @property
    def valid(self) -> torch.Tensor:
        """(B, held) real entries (not padding or filler) among the held ones."""
        return self._with_tail(self.head_valid, self._tail_meta(1), self.held_tail)

    @property
    def visual(self) -> torch.Tensor:
        """(B, held) prunable visual entries held."""
        visual = self.head_visual & self.head_valid
        extra = self.held_tail
        if extra <= 0:
            return visual
        return torch.cat([visual, visual.new_zeros(visual.shape[0], extra)], 1)

    def entries_valid(self) -> torch.Tensor:
        """(B, head + tail) validity of the held entries and of the tokens the running forward adds."""
        return self._with_tail(self.head_valid, self._tail_meta(1), self.tail.length - self.tail_from)

    def append_meta(self, positions, columns, valid, visual, pruned: bool) -> None:
        """The prompt's entries (prefill), appended to the head before the layer caches their keys; `pruned`:
        they are not the full prompt (a cut at or before this layer removed tokens)."""
        self.pruned = pruned
        device = self.meta_device or valid.device
        new = {
            "head_positions": positions,
            "head_columns": columns,
            "head_valid": valid,
            "head_visual": visual,
        }
        for name, value in new.items():
            value, held = value.to(device), getattr(self, name)
            setattr(self, name, value if held is None else torch.cat([held, value], 1))

    def update(self, key_states, value_states, *args, **kwargs):
        out = super().update(key_states, value_states, *args, **kwargs)
        if self.head_valid is not None and self.head_valid.device != self.keys.device:
            # metadata appended before the layer ran (on the previous layer's device) joins its keys
            for name in _HEAD:
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, value.to(self.keys.device))
        return out

    # ------------------------------------------------------------------------------------ eviction
    def seed_scores(self, attention: torch.Tensor) -> None:
        """Start the eviction scores from `attention` (B, head); entries that are not visual never compete."""
        self.scores = attention.float().masked_fill(~self.head_visual, float("inf"))

    def evict(self, count: list[int], held: torch.Tensor, columns: torch.Tensor) -> None:
        """An eviction round: evict the `count[b]` lowest-scored visual entries of each sample and remove them
        from the tensors at once. Ties: the later entry goes first. `held` (host, (B,)): the real entries each
        sample holds afterwards; `columns`: 0, 1, ... up to at least this layer's column count (shared by the
        layers of a round, on any device)."""
        most, head = max(count), self.head_length
        order = _eviction_order(self.scores)
        if self.all_valid and min(count) == most:  # every row evicts as many, and holds nothing but real entries
            evict_alike([self], most, self.scores[None], columns, order=order[None])
            return
        drop = order[:, head - most :]
        if min(count) == most:
            self.head_valid = self.head_valid.scatter(1, drop, False)
        else:  # rows evicting fewer keep the first `most - count[b]` of their candidates
            spare = torch.tensor([[j < most - c for j in range(most)] for c in count], device=drop.device)
            self.head_valid = self.head_valid.scatter(1, drop, self.head_valid.gather(1, drop) & spare)
        self._compact(held)

    def _compact(self, held: torch.Tensor) -> None:
        """Keep only the real entries, head and tail (one gather): each sample keeps its `held[b]` (host count)
        real entries, right-aligned, left-filled with filler up to the most any sample holds."""
        extra = self.held_tail
        valid, positions, columns, visual = self.valid, self.positions, self.columns, self.visual
        length = int(held.max())
        index = compact(valid, length)
        # Filler columns gather entries that are not real (evicted or padding): never visual, scored +inf.
        self.head_valid, self.head_positions, self.head_columns, self.head_visual = (
            t.gather(1, index) for t in (valid, positions, columns, visual)
        )
        padded = torch.cat([self.scores, self.scores.new_full((self.scores.shape[0], extra), float("inf"))], 1)
        self.scores = padded.gather(1, index).masked_fill(~self.head_visual, float("inf"))
        keys, values = take_entries(self.keys[None], self.values[None], index.to(self.keys.device)[None])
        self.keys, self.values = keys[0], values[0]
        self.tail_from += extra
        self.pruned = True
        self.all_valid = bool((held == length).all())

    def crop_last(self, columns: int) -> None:
        """Remove the last `columns` entries: tokens after the prompt (always the last entries, in order, also
        after compactions, which may have moved some of them into the head)."""
        if not self.is_initialized or columns <= 0:
            return
        in_head = columns - self.held_tail
        self.keys, self.values = self.keys[:, :, :-columns], self.values[:, :, :-columns]
        if in_head > 0:  # the head ends with its compacted tail tokens (`tail_from` of them), after the prompt's
            for name in _HEAD:
                value = getattr(self, name)
                if value is not None:  # scores: only under a decay
                    setattr(self, name, value[:, :-in_head])
            self.tail_from -= min(in_head, self.tail_from)

    # ------------------------------------------------------------------------------------ batch operations
    def _index_batch(self, fn) -> None:
        for name in _HEAD:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._index_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._index_batch(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._index_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        super().reset()
        self.head_positions = self.head_columns = self.head_valid = self.head_visual = self.scores = None
        self.tail_from = 0
        self.pruned = self.all_valid = False

    def crop(self, tokens_to_remove: int) -> None:
        raise UnsupportedInputError(
            "a pruned cache is cropped as a whole (PrunableCache.crop), which keeps its shared metadata right"
        )


def _eviction_order(scores: torch.Tensor) -> torch.Tensor:
    """Entries by descending score along the last dim, stable: non-visual entries (+inf) first, the lowest
    visual ones last, and of equal scores the later entry after the earlier (so it goes first)."""
    return torch.argsort(scores, dim=-1, descending=True, stable=True)


def take_entries(keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (G, B, Hkv, entries, Dh) of the entries `index` (G, B, kept), in that order, for every
    head: one row copy per kept entry and head (index_select over the rows of a (G*B*Hkv*entries, Dh) view,
    where entry j of head h of layer g, sample b is row ((g*B + b)*Hkv + h)*entries + j), not an element-wise
    gather (several times slower on the CPU)."""
    size, bsz, kv_heads, entries, _ = keys.shape
    first_rows = torch.arange(0, size * bsz * kv_heads * entries, entries, device=index.device)
    rows = (first_rows.view(size, bsz, kv_heads, 1) + index[:, :, None, :]).flatten()
    shape = (size, bsz, kv_heads, index.shape[-1], -1)
    return tuple(t.reshape(-1, t.shape[-1]).index_select(0, rows).view(shape) for t in (keys, values))


def stack_layers(layers: list[PrunableLayer], name: str) -> torch.Tensor:
    """(G, ...) the tensor attribute `name` of alike `layers` stacked (a view of the one layer's for G = 1)."""
    return getattr(layers[0], name)[None] if len(layers) == 1 else torch.stack([getattr(x, name) for x in layers])


def evict_alike(
    layers: list[PrunableLayer],
    count: int,
    scores: torch.Tensor,
    columns: torch.Tensor,
    keys: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
) -> None:
    """Evict the `count` lowest-scored visual entries of every sample from each of `layers` and remove them from
    the tensors, in one set of operations for all of them. The layers hold alike caches: the same shapes on one
    device, every entry real (`all_valid`), so every row keeps the same `head - count` entries, in order, and
    the tail columns after the head stay where they are. `scores` (G, B, head) are their eviction scores;
    `keys` their stacked keys when the caller has them; `columns`: 0, 1, ... up to at least their length."""
    first = layers[0]
    head = first.head_length
    order = _eviction_order(scores) if order is None else order
    index = order[..., : head - count].sort(-1).values  # (G, B, kept)
    positions = stack_layers(layers, "head_positions").gather(-1, index)
    columns_held = stack_layers(layers, "head_columns").gather(-1, index)
    visual = stack_layers(layers, "head_visual").gather(-1, index)
    scores = scores.gather(-1, index)
    tail = columns[head : first.keys.shape[2]].to(index.device).expand(*index.shape[:2], -1)
    keys = stack_layers(layers, "keys") if keys is None else keys
    keys, values = take_entries(keys, stack_layers(layers, "values"), torch.cat([index, tail], -1).to(keys.device))
    for g, layer in enumerate(layers):
        layer.head_positions, layer.head_visual, layer.scores = positions[g], visual[g], scores[g]
        layer.head_columns = columns_held[g]
        layer.head_valid = layer.head_valid[:, : head - count]
        layer.keys, layer.values = keys[g], values[g]
        layer.pruned = True


class PrunableCache(DynamicCache):
    """Per-layer prunable cache; `get_seq_length()` counts processed tokens, not entries held."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self._make_prunable(num_layers)

    def _make_prunable(self, num_layers: int) -> None:
        self.layer_class_to_replicate = None
        self.tail = _Tail()
        self.layers = [PrunableLayer(self.tail) for _ in range(num_layers)]
        self.window = ScoreWindow()  # decode queries since the last eviction round
        self.closed = False  # the pruning context that filled it has ended: it can no longer be extended
        self.processed = 0  # tokens seen so far (prompt + generated), independent of evictions
        # Host (layers, B) counts, set after the prefill: visual entries right after it (n_l(0) of the decay),
        # visual entries held now, real entries held now (including the running forward's once it started).
        # The count tensors are replaced, never changed in place, so a report may keep them as they are.
        self.initial_visual = self.visual_count = self.entry_count = None
        self.final_visual = None  # visual entries each layer keeps at the decay's horizon (once asked for)
        self.on_crop = None  # called with (cache, real tokens removed (host (B,)), columns) after a crop
        self.drafts = 0  # drafted tokens at the end of the prompt still open to a crop (assisted decoding)

    @classmethod
    def adopt(cls, cache: Cache | None, num_layers: int) -> "PrunableCache":
        """A prunable cache for a prefill: a new one, or the given empty dynamic cache converted in place.

        Converting in place (rather than swapping objects) keeps manual decode loops that reuse their own
        cache object correct; generate() reads the cache back from the outputs either way.
        """
        if cache is None:
            return cls(num_layers)
        cls.check_adoptable(cache)
        if type(cache) is DynamicCache:
            cache.__class__ = cls
        cache._make_prunable(num_layers)
        return cache

    @classmethod
    def check_adoptable(cls, cache: Cache | None) -> None:
        """UnsupportedInputError, naming the cause, for a cache a prefill cannot prune into (checked before
        anything else of the inputs, so the message says what is really wrong)."""
        if cache is None or (isinstance(cache, PrunableCache) and cache.processed == 0):
            return
        if type(cache) is DynamicCache and cache.get_seq_length() == 0 and not cache.offloading:
            return
        name = type(cache).__name__
        if any(type(layer).__name__.startswith("Static") for layer in getattr(cache, "layers", [])) or "Static" in name:
            raise UnsupportedInputError(
                f"a {name} (cache_implementation='static', which generate's compiled path also uses) gives every "
                "layer the same fixed slots, while pruned layers hold different entries; tokenprune serves the "
                "default dynamic cache: drop cache_implementation='static' / compile_config from generate()"
            )
        raise UnsupportedInputError(
            f"{name} cannot hold per-layer pruned entries; pass no cache (generate makes one) "
            "or an empty, non-offloaded DynamicCache"
        )

    def close(self) -> None:
        """The pruning context that filled this cache ended: its layers hold different entries, so only that
        context could extend it correctly; from now on extending it is refused."""
        self.closed = True

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self.closed:
            raise UnsupportedInputError(
                "this KV cache was pruned inside a tokenprune.prune() context that has ended; its layers hold "
                "different entries, so it can only be continued inside that context"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.processed

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        # The model's shared mask describes the full logical sequence; pruned layers get their own.
        return self.processed + query_length, 0

    @property
    def batch_size(self) -> int:
        """Sequences the cache holds (beams included)."""
        return self.layers[0].head_valid.shape[0]

    # ------------------------------------------------------------------------------------ host counts
    def prefilled(self, tokens: int, visual: list, entries: list, columns: list[int], drafts: int = 0) -> None:
        """A prefill of `tokens` columns filled the cache: each layer holds its visual and real entries (host,
        (B,) each) in `columns` columns; the last `drafts` are drafted tokens a crop may remove."""
        self.processed += tokens
        self.tail.start = self.processed
        self.drafts = drafts
        self.initial_visual, self.entry_count = torch.stack(visual), torch.stack(entries)
        self.visual_count = self.initial_visual
        for layer, real, width in zip(self.layers, self.entry_count, columns, strict=True):
            layer.all_valid = bool((real == width).all())

    def add_tokens(self, positions: torch.Tensor, valid: torch.Tensor, real: torch.Tensor, all_real: bool) -> None:
        """Tokens of a forward continuing the cache: their metadata joins the tail (before the layers run, which
        attend to them); `real` (host, (B,)) counts them; `all_real`: none is padding (else no layer holds only
        real entries from now on)."""
        self.tail.append(positions, valid)
        self.drafts = 0  # the prompt's drafts were verified: what is left of them stays
        self.entry_count = self.entry_count + real
        if not all_real:
            for layer in self.layers:
                layer.all_valid = False

    def final_visual_counts(self, compute) -> torch.Tensor:
        """Host (layers, B) visual entries each layer keeps at the decay's horizon: `compute(initial_visual)`,
        asked for once per prefill (it follows beam reorders with the other counts)."""
        if self.final_visual is None:
            self.final_visual = compute(self.initial_visual)
        return self.final_visual

    def forward_done(self, columns: int, visual: torch.Tensor | None, entries: torch.Tensor | None) -> None:
        """A forward of `columns` new tokens continuing the cache returned; when it evicted, each layer now
        holds `visual` / `entries` (host (layers, B)) visual / real entries."""
        self.processed += columns
        if visual is not None:
            self.visual_count, self.entry_count = visual, entries

    # ------------------------------------------------------------------------------------ batch operations
    def _index_counts(self, fn) -> None:
        for name in _COUNTS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.tail.index_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))
        self.window.index_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))
        host = beam_idx.cpu()
        self._index_counts(lambda t: t.index_select(1, host))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.tail.index_batch(lambda t: t[indices.to(t.device)])
        self.window.index_batch(lambda t: t[indices.to(t.device)])
        host = indices.cpu() if isinstance(indices, torch.Tensor) else indices
        self._index_counts(lambda t: t[:, host])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.tail.index_batch(lambda t: t.repeat_interleave(repeats, dim=0))
        self.window.index_batch(lambda t: t.repeat_interleave(repeats, dim=0))
        self._index_counts(lambda t: t.repeat_interleave(repeats, dim=1))

    def reset(self) -> None:
        super().reset()
        self.tail.clear()
        self.window = ScoreWindow()
        self.initial_visual = self.visual_count = self.entry_count = self.final_visual = None
        self.processed = 0

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` processed tokens (transformers' convention: a negative count),
        as assisted and prompt-lookup decoding do with rejected candidates. Only generated tokens can go: they
        are the last entries of every layer, so each layer drops its last entries; visual entries and
        evictions are untouched. Their queries leave the score window (`ScoreWindow.crop`)."""
        if tokens_to_remove > 0:
            raise UnsupportedInputError(
                f"crop({tokens_to_remove}): give the number of tokens to remove as a negative count, as "
                "transformers does"
            )
        columns = -tokens_to_remove
        if columns == 0:
            return
        if columns > self.tail.length + self.drafts:
            raise UnsupportedInputError(
                f"crop of {columns} tokens from a pruned cache holding {self.tail.length} tokens after the prompt "
                f"(and {self.drafts} drafted ones at its end): the prompt's entries are pruned per layer and "
                "cannot be cropped; start from an empty cache"
            )
        from_prompt = columns - self.tail.length if columns > self.tail.length else 0
        if from_prompt:  # drafts of the prefill: the last entries of every layer's head, real text tokens
            removed = self.layers[0].head_valid[:, -from_prompt:].sum(1).cpu()
            self.drafts -= from_prompt
            self.tail.start -= from_prompt
            columns_from_tail = columns - from_prompt
        else:
            removed = torch.zeros(self.batch_size, dtype=torch.long)
            columns_from_tail = columns
        if columns_from_tail:
            removed = removed + self.tail.valid[:, -columns_from_tail:].sum(1).cpu()  # real tokens per sample
        for layer in self.layers:
            layer.crop_last(columns)
        if columns_from_tail:
            self.tail.truncate(columns_from_tail)
        self.window.crop(columns)
        self.entry_count = self.entry_count - removed
        self.processed -= columns
        if self.on_crop is not None:
            self.on_crop(self, removed, columns)
