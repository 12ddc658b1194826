"""A DynamicCache whose layers may hold different entries, with per-entry metadata.

Each layer records, for every cached entry, its RoPE position, whether it is real (not padding or
filler) and whether it is a prunable visual token, plus an accumulated attention score for eviction.
The metadata follows every batch operation transformers applies to a cache (beam reorder, select,
repeat), so beam search and friends stay correct after entries were removed.

Devices: a model dispatched by accelerate (`device_map="auto"`) computes each layer on its own device, so
each layer's metadata lives where that layer's keys live. The engine may hand in metadata from another
device (the hidden states reach a layer's pre-hook before accelerate moves them); the layer moves it to
its keys' device on the first `update`, and later appends follow the metadata already held.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from .errors import UnsupportedInputError

_META = ("positions", "valid", "visual", "scores")


class PrunableLayer(DynamicLayer):
    def __init__(self) -> None:
        super().__init__()
        self.positions = self.valid = self.visual = self.scores = None
        # Host-side (B,) counts, so deciding whether to evict needs no device sync:
        self.initial_visual = None  # visual entries right after prefill: n_l(0) of the decay
        self.visual_count = None  # visual entries held now
        self.pruned = False  # True once this layer's entries differ from the full sequence
        self.all_valid = False  # host flag: no padding / filler entry (then a decode step needs no mask)
        self.stale = False  # entries were masked out but are still in the tensors

    @property
    def meta_device(self) -> torch.device | None:
        """Where this layer's metadata lives: its keys' device once it holds entries."""
        if self.is_initialized:
            return self.keys.device
        return None if self.valid is None else self.valid.device

    def append_meta(self, positions, valid, visual) -> None:
        device = self.meta_device or valid.device
        positions, valid, visual = positions.to(device), valid.to(device), visual.to(device)
        scores = torch.zeros(valid.shape, dtype=torch.float32, device=device)
        if self.positions is None:
            self.positions, self.valid, self.visual, self.scores = positions, valid, visual, scores
        else:
            self.positions = torch.cat([self.positions, positions], 1)
            self.valid = torch.cat([self.valid, valid], 1)
            self.visual = torch.cat([self.visual, visual], 1)
            self.scores = torch.cat([self.scores, scores], 1)

    def update(self, key_states, value_states, *args, **kwargs):
        out = super().update(key_states, value_states, *args, **kwargs)
        if self.valid is not None and self.valid.device != self.keys.device:
            # metadata appended before the layer ran (on the previous layer's device) joins its keys
            for name in _META:
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, value.to(self.keys.device))
        return out

    def mask_out(self, keep: torch.Tensor) -> None:
        """Evict the entries outside `keep` (B, L) logically: masked from now on, removed at the next compaction."""
        keep = keep.to(self.valid.device)
        self.valid = self.valid & keep
        self.visual = self.visual & keep
        self.pruned, self.all_valid, self.stale = True, False, True

    def keep_entries(self, index: torch.Tensor, valid: torch.Tensor) -> None:
        """Keep the entries `index` (B, L') of every sample; `valid` (B, L') marks left filler."""
        index, valid = index.to(self.keys.device), valid.to(self.keys.device)
        kv_index = index[:, None, :, None]
        self.keys = self.keys.gather(2, kv_index.expand(-1, self.keys.shape[1], -1, self.keys.shape[3]))
        self.values = self.values.gather(2, kv_index.expand(-1, self.values.shape[1], -1, self.values.shape[3]))
        for name in _META:
            setattr(self, name, getattr(self, name).gather(1, index))
        self.valid = self.valid & valid
        self.visual = self.visual & valid
        self.pruned, self.stale = True, False
        self.all_valid = bool(self.valid.all())

    def _index_batch(self, fn) -> None:
        for name in (*_META, "initial_visual", "visual_count"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, fn(value))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        host = beam_idx.cpu()
        self._index_batch(lambda t: t.index_select(0, beam_idx.to(t.device) if t.device.type != "cpu" else host))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._index_batch(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._index_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        super().reset()
        self.positions = self.valid = self.visual = self.scores = self.initial_visual = self.visual_count = None
        self.pruned = self.all_valid = self.stale = False

    def crop(self, tokens_to_remove: int) -> None:
        raise UnsupportedInputError(
            "cropping a pruned KV cache (assisted / speculative decoding) is not supported inside "
            "tokenprune.prune(); use greedy, sampling or beam search"
        )


class PrunableCache(DynamicCache):
    """Per-layer prunable cache; `get_seq_length()` counts processed tokens, not entries held."""

    def __init__(self, num_layers: int, owner: object = None) -> None:
        super().__init__()
        self._make_prunable(num_layers, owner)

    def _make_prunable(self, num_layers: int, owner: object) -> None:
        self.layer_class_to_replicate = None
        self.layers = [PrunableLayer() for _ in range(num_layers)]
        self.owner = owner  # the pruning session that filled it; only that session may continue it
        self.report = None  # that session's report of the prefill, which decode steps extend
        self.processed = 0  # tokens seen so far (prompt + generated), independent of evictions
        self.step = 0  # decode steps done

    @classmethod
    def adopt(cls, cache: Cache | None, num_layers: int, owner: object) -> "PrunableCache":
        """A prunable cache for a prefill: a new one, or the given empty dynamic cache converted in place.

        Converting in place (rather than swapping objects) keeps manual decode loops that reuse their own
        cache object correct; generate() reads the cache back from the outputs either way.
        """
        if cache is None:
            return cls(num_layers, owner)
        if type(cache) is DynamicCache and cache.get_seq_length() == 0 and not cache.offloading:
            cache.__class__ = cls
        elif not (isinstance(cache, PrunableCache) and cache.processed == 0):
            raise UnsupportedInputError(
                f"{type(cache).__name__} cannot hold per-layer pruned entries; pass no cache (generate makes one) "
                "or an empty, non-offloaded DynamicCache"
            )
        cache._make_prunable(num_layers, owner)
        return cache

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self.owner is not None and not getattr(self.owner, "active", True):
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
