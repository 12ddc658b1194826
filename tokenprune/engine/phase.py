"""The phase protocol: one forward of the model, as the engine sees it.

The session installs the hooks and hands every hook call to the current phase: a `Prefill` (a prompt
with images), a `DecodeStep` (a forward continuing a pruned cache) or `IDLE` (anything else, and between
forwards). A phase implements only the calls it uses; the defaults leave the model's computation alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..report import Report


@dataclass(frozen=True)
class HookSet:
    """The per-layer hooks a phase needs on the model: `layers` get their inputs rewritten; `queries` /
    `keys` have the output of their query / key source kept for scoring; `attention` are scored after
    their attention ran; `language_model`: the language model's own arguments are rewritten (its
    hidden-state additions taken over, see `Backbone.take_injections`).
    Every hook costs time at every call of its module, and decoding calls every
    module once per token, so modules a phase does not use carry none."""

    layers: frozenset[int] = frozenset()
    queries: frozenset[int] = frozenset()
    keys: frozenset[int] = frozenset()
    attention: frozenset[int] = frozenset()
    language_model: bool = False


NO_HOOKS = HookSet()


@dataclass
class Generation:
    """What a prefill leaves to the forwards that continue its cache (decode steps, later turns)."""

    report: Report  # the report those forwards extend
    horizon: int | None  # decode steps of the decay (None: no decay, or decoding outside generate())
    steps: int = 0  # forwards that continued the cache so far


class Phase:
    """One forward. Hook calls arrive in the order the model runs: `language_model_input` when the language
    model is called (after the vision features were merged), `layer_input` before each decoder layer,
    `projected` after a query/key source, `attended` after an attention, `final_norm` before the final
    norm, then `entry_output` and `finish` when the forward returns and `count_logits` when the head ran."""

    hooks: HookSet = NO_HOOKS
    kwargs: dict | None = None  # replacement keyword arguments of the entry module (None: its own)

    def language_model_input(self, kwargs: dict) -> dict | None:
        """Replacement keyword arguments of the language model, or None to leave them."""
        return None

    def layer_input(self, layer: int, args: tuple, kwargs: dict):
        """Replacement (args, kwargs) of decoder layer `layer`, or None to leave them."""
        return None

    def projected(self, layer: int, kind: str, output) -> None:
        """The output of layer `layer`'s query source (`kind` "q") or key source ("k")."""

    def attended(self, layer: int, kwargs: dict) -> None:
        """Layer `layer`'s attention ran with `kwargs` (its cache entries now include this forward's)."""

    def final_norm(self, args: tuple):
        """Replacement args of the final norm, or None."""
        return None

    def entry_output(self, output) -> None:
        """The entry module returned `output`; its per-layer outputs may be rewritten in place."""

    def finish(self) -> Generation | None:
        """The forward returned; a prefill returns the Generation its cache continues with."""
        return None

    def count_logits(self, rows: int) -> None:
        """The head computed `rows` logit rows for this forward."""


IDLE = Phase()
