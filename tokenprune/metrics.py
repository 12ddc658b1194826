"""Fidelity of a pruned run to the unpruned baseline, for any data (task metrics live in `tokenprune.data`)."""

from __future__ import annotations

import torch


def agreement(tokens: list[int], reference: list[int]) -> float:
    """Fraction of positions where the greedy tokens equal the reference (missing positions differ)."""
    length = max(len(tokens), len(reference))
    if length == 0:
        return 1.0
    return sum(a == b for a, b in zip(tokens, reference)) / length


def first_token_kl(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """KL(pruned || full) of the first generated token's distribution, averaged over leading dims.

    `logits` and `reference` are (..., vocab) logits of the pruned and the unpruned model at the same
    position. Computed in float32; clamped at 0 (rounding can give -1e-9 for identical inputs).
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    log_q = torch.log_softmax(reference.float(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean().clamp(min=0.0))
