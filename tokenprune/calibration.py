"""VTW calibration (`find_k`): the earliest withdrawal layer whose first-token KL stays within a budget.

VTW (Lin et al. 2024) picks its layer k on a few calibration samples: the smallest k for which the
distribution of the first output token, with every visual token withdrawn from layer k on, is within
`eta` of the unpruned model's (KL(pruned || full), averaged over samples). The paper's budgets are
eta = 0.003 for LLaVA-1.5-7B, 0.0005 for 13B and 0.0001 for LLaVA-1.6-7B.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .api import prune
from .errors import InvalidParameterError
from .interfaces import ModelAdapter
from .metrics import first_token_kl


@dataclass(frozen=True)
class Calibration:
    """The result of `find_k`: the chosen layer and the KL curve it was chosen from."""

    k: int  # the chosen withdrawal layer (num_layers when no tried k met eta: nothing withdrawn)
    eta: float
    curve: dict[int, float]  # k -> first-token KL averaged over samples, every k tried, ascending
    per_sample: dict[int, list[float]]  # k -> the KL of each sample, in input order
    samples: int
    num_layers: int

    def to_dict(self) -> dict:
        """JSON-ready: the curves become lists of {"k": ..., ...} in ascending k."""
        return {
            "k": self.k,
            "eta": self.eta,
            "samples": self.samples,
            "num_layers": self.num_layers,
            "curve": [{"k": k, "kl": kl} for k, kl in self.curve.items()],
            "per_sample": [{"k": k, "kl": list(kls)} for k, kls in self.per_sample.items()],
        }


def find_k(
    model: torch.nn.Module,
    calibration_inputs: Iterable[dict],
    eta: float = 0.003,
    *,
    ks: Sequence[int] | None = None,
    adapter: str | ModelAdapter | None = None,
    adapter_options: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Calibration:
    """The smallest VTW layer k whose first-token KL(pruned || full), averaged over samples, is <= eta.

    `calibration_inputs` are model input dicts as the processor makes them (input_ids, attention_mask,
    pixel_values, image_sizes, ...), each of batch 1 or a left-padded batch; every sample counts once.
    Each input runs one unpruned prefill forward, then one per k inside `tp.prune(model, "vtw", k=k)`;
    the first token's distribution is the logits at the last prompt position (no generation). Every k
    of `ks` (default 0..num_layers, ascending) is scanned so that `curve` is complete; the smallest
    passing k is chosen even if a larger k does not pass (the curve need not be monotone). k =
    num_layers withdraws nothing and scores exactly 0; if it is not among `ks` and no k passes, the
    answer is num_layers. `on_step(k, mean_kl)` is called after each k (for progress bars). The model
    is left as it was; run it in eval mode (dropout would make both passes random).

    >>> from tokenprune.tiny import TinySpec, build_model, make_inputs
    >>> spec = TinySpec(layers=4)
    >>> model = build_model(spec)
    >>> result = find_k(model, [make_inputs(spec, seed=s) for s in range(2)], eta=0.0)
    >>> result.samples, result.num_layers, list(result.curve), result.curve[4]
    (2, 4, [0, 1, 2, 3, 4], 0.0)
    >>> result.k == min(k for k, kl in result.curve.items() if kl <= 0.0)
    True
    """
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise InvalidParameterError(f"eta must be a finite number >= 0 (a KL budget, e.g. 0.003), not {eta!r}")
    # Validates model, adapter and options before anything runs (UnsupportedModelError propagates).
    probe = prune(model, "vtw", k=0, adapter=adapter, adapter_options=adapter_options)
    layers = probe.num_layers
    ks = _check_ks(ks, layers)
    inputs = [_check_input(model, probe.adapter, batch, i) for i, batch in enumerate(calibration_inputs)]
    if not inputs:
        raise InvalidParameterError("calibration_inputs is empty; give at least one input dict with an image")

    with torch.no_grad():
        # Only the last prompt position matters: left padding puts every sample's last real token there.
        # clone() so the kept row does not hold the whole (batch, length, vocab) logits alive.
        full = [model(**batch, use_cache=False).logits[:, -1].clone() for batch in inputs]
        curve: dict[int, float] = {}
        per_sample: dict[int, list[float]] = {}
        for k in ks:
            kls: list[float] = []
            with prune(model, "vtw", k=k, adapter=adapter, adapter_options=adapter_options):
                for batch, reference in zip(inputs, full, strict=True):
                    pruned = model(**batch, use_cache=False).logits[:, -1]
                    # one call per sample: first_token_kl averages over rows, and samples weigh equally
                    kls += [first_token_kl(p, r) for p, r in zip(pruned, reference, strict=True)]
            per_sample[k] = kls
            curve[k] = sum(kls) / len(kls)
            if on_step is not None:
                on_step(k, curve[k])
    chosen = next((k for k in ks if curve[k] <= eta), layers)
    return Calibration(chosen, float(eta), curve, per_sample, len(per_sample[ks[0]]), layers)


def _check_ks(ks: Sequence[int] | None, layers: int) -> list[int]:
    if ks is None:
        return list(range(layers + 1))
    ks = list(ks)
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= layers]
    if not ks or bad:
        problem = "ks is empty" if not ks else f"ks has {bad!r}"
        raise InvalidParameterError(
            f"{problem}; ks must be integer layers in [0, {layers}] (this model has {layers} decoder layers; "
            f"k = {layers} withdraws nothing)"
        )
    return sorted({int(k) for k in ks})


def _check_input(model: torch.nn.Module, adapter: ModelAdapter, batch: Mapping, index: int) -> dict:
    """`batch` as a plain dict (processors return a BatchFeature mapping); refuse samples VTW cannot touch:
    their KL is 0 for every k and would only dilute the mean."""
    if not isinstance(batch, Mapping):
        raise InvalidParameterError(
            f"calibration input {index} is a {type(batch).__name__}; each must be a dict of model inputs "
            "(input_ids, attention_mask, pixel_values, ...)"
        )
    batch = dict(batch)
    tokens = adapter.visual_tokens(model, batch)  # None for a text-only input
    empty = None if tokens is None else (tokens.prunable.sum(1) == 0).nonzero().flatten().tolist()
    if empty is None or empty:
        rows = "all samples" if empty is None else f"sample(s) {empty}"
        raise InvalidParameterError(
            f"calibration input {index}: {rows} without visual tokens (text-only); VTW withdraws nothing there, "
            "so their KL is 0 for every k. Give inputs with images (pixel_values and image placeholder tokens)"
        )
    return batch
