"""Key-norm score: visual tokens whose keys have a small L2 norm matter most (no attention needed).

Keys with low norm tend to receive high attention (Devoto et al. 2024, "A Simple and Effective L2 Norm-Based
Strategy for KV Cache Compression"), so the score is minus the key norm, averaged over key heads. It reads
only the layer's keys: no query, no softmax, so it costs almost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenprune import AttentionView, ScoreProvider


@dataclass(frozen=True)
class KeyNorm(ScoreProvider):
    name: str = "key_norm"

    def score(self, view: AttentionView) -> torch.Tensor:
        # (B, Hkv, Lk, Dh) -> (B, Lk). RoPE rotates pairs of dimensions, so the norm is the same before and after it.
        return -view.keys.float().norm(dim=-1).mean(dim=1)
