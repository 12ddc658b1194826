"""Attention masks for pruned layers, in the convention of the attention backend.

A pruned layer holds other entries than the full sequence, so the model's one shared mask is wrong for
it: each such layer gets its own mask, built from which of its entries are real.
"""

from __future__ import annotations

import torch


def layer_mask(allowed: torch.Tensor, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K) mask in the convention of the attention backend (sdpa: bool, eager: additive)."""
    allowed = allowed[:, None]
    if backend == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def prefill_mask(valid: torch.Tensor, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Causal mask over a layout, real entries as keys: what transformers' mask gives every query, padding
    after a real token included (it sees the real tokens before it). A row without any real key (filler, left padding)
    sees only itself, so no row is empty."""
    n = valid.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()[None] & valid[:, None, :]
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)[None]
    return layer_mask(allowed | (eye & ~allowed.any(-1, keepdim=True)), backend, dtype)


def decode_mask(valid: torch.Tensor, new: int, new_all_valid: bool, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Mask of the last `new` entries of a layer (the tokens of this forward) over all its entries `valid`.

    Each new token sees every real earlier entry and the real new ones up to itself, as transformers' mask
    gives it (a padding query too); a row without any real key sees only itself so no row is empty.
    """
    if new == 1 and new_all_valid:  # the common decode step: one real query sees exactly the real entries
        return layer_mask(valid[:, None, :], backend, dtype)
    length = valid.shape[1]
    key = torch.arange(length, device=valid.device)[None, None, :]
    query = torch.arange(length - new, length, device=valid.device)[None, :, None]
    allowed = valid[:, None, :] & (key <= query)
    return layer_mask(allowed | ((key == query) & ~allowed.any(-1, keepdim=True)), backend, dtype)
