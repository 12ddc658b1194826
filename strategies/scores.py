"""Built-in score providers: attention received by each visual token, read without eager attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenprune.interfaces import AttentionView, NoParams, ScoreFactory, ScoreProvider


@dataclass(frozen=True)
class LastQueryAttention(ScoreProvider):
    """Attention from the last prompt token, averaged over heads (FastV's official code, ST3)."""

    name: str = "last_query_attention"

    def score(self, view: AttentionView) -> torch.Tensor:
        return view.last_query_attention()


@dataclass(frozen=True)
class TextMeanAttention(ScoreProvider):
    """Attention averaged over heads and over the text queries after the image (FastV paper text)."""

    name: str = "text_mean_attention"

    def score(self, view: AttentionView) -> torch.Tensor:
        text = view.query_text_after_image  # (B, Lq); never empty: the last token is never visual
        bsz, q_len = text.shape
        first = int(text.float().argmax(dim=1).min())  # earliest row any sample needs
        rows = torch.arange(first, q_len, device=text.device).expand(bsz, -1)
        weights = text[:, first:].float()
        probs = view.attention(rows).mean(dim=1)  # (B, Q, Lk)
        return (probs * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


SCORE_PROVIDERS = [
    ScoreFactory("last_query_attention", NoParams, lambda p: LastQueryAttention(), LastQueryAttention.__doc__),
    ScoreFactory("text_mean_attention", NoParams, lambda p: TextMeanAttention(), TextMeanAttention.__doc__),
]
