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


def _self_where_empty(allowed: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """`allowed` (B, Q, K), where a row without any allowed key sees only its own entry (`own`), so no row is
    empty; every other row keeps exactly what transformers' mask gives it (a padding query does not see itself)."""
    return allowed | (own & ~allowed.any(-1, keepdim=True))


def prefill_mask(valid: torch.Tensor, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Causal mask over a layout, real entries as keys: what transformers' mask gives every query, padding
    after a real token included (it sees the real tokens before it); filler and left padding see themselves."""
    n = valid.shape[1]
    allowed = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()[None] & valid[:, None, :]
    return layer_mask(_self_where_empty(allowed, torch.eye(n, dtype=torch.bool, device=valid.device)), backend, dtype)


def decode_mask(valid: torch.Tensor, new: int, new_all_valid: bool, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Mask of the last `new` entries of a layer (the tokens of this forward) over all its entries `valid`.

    Each new token sees every real earlier entry and the real new ones up to itself, as transformers' mask
    gives it (a padding query too).
    """
    if new == 1 and new_all_valid:  # the common decode step: one real query sees exactly the real entries
        return layer_mask(valid[:, None, :], backend, dtype)
    length = valid.shape[1]
    key = torch.arange(length, device=valid.device)[None, None, :]
    query = torch.arange(length - new, length, device=valid.device)[None, :, None]
    return layer_mask(_self_where_empty(valid[:, None, :] & (key <= query), key == query), backend, dtype)
