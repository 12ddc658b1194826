"""`PruningSession`: one `tp.prune(...)` context. It installs and removes the hooks, and hands every hook
call to the phase of the forward that is running: a `Prefill` (prefill.py), a `DecodeStep` (decode.py) or
`IDLE` (phase.py). What the engine refuses is checked in checks.py.

Devices (a model dispatched by accelerate, `device_map="auto"`): every tensor the engine makes follows the
tensor it is used with, never `model.device`. A layer's pre-hook runs before accelerate's own hook moves
the layer's inputs, so the prefill layout follows the hidden states it indexes, scores and per-entry cache
metadata follow that layer's keys (`PrunableLayer` keeps them together), and the masks / rotary rows /
position ids handed to a layer are moved to its execution device by accelerate with the other arguments.
Report counts are gathered on the device of the prompt. Weights that accelerate offloaded (on `meta` until
its hook loads them) are accepted; weights on `meta` that nothing will load are refused.
"""

from __future__ import annotations

import inspect
import weakref

import torch

from ..cache import PrunableCache
from ..errors import AlreadyPrunedError, UnsupportedInputError
from ..interfaces import ModelAdapter, Strategy
from ..report import Report
from .checks import attention_backend, check_not_compiled, check_weights
from .decode import DecodeStep
from .phase import IDLE, NO_HOOKS, Generation, HookSet, Phase
from .prefill import Prefill


def session_of(module: torch.nn.Module) -> "PruningSession | None":
    """The pruning session whose hooks sit on `module`, if any (no global registry needed)."""
    for hook in module._forward_pre_hooks.values():
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, PruningSession):
            return owner
    return None


class PruningSession:
    """One `tp.prune(...)` context: hooks on one model, the running phase, and the reports it produced."""

    def __init__(self, model: torch.nn.Module, adapter: ModelAdapter, strategy: Strategy) -> None:
        self.model = model
        self.adapter = adapter
        self.strategy = strategy
        self.parts = adapter.parts(model)
        self.backbone = self.parts.backbone
        check_weights(model, [self.backbone.model, self.parts.lm_head])
        num_layers = len(self.backbone.layers)
        strategy.check(num_layers)
        self.cut_layers = strategy.schedule.cut_layers(num_layers)
        # One attention scaling for every layer (as in every LLaMA-family model) is folded into the rotated
        # decode queries at once; otherwise each layer's logits are scaled on their own.
        scalings = {self.backbone.scaling(i) for i in range(num_layers)}
        self.scaling = scalings.pop() if len(scalings) == 1 else None
        self.reports: list[Report] = []
        self.phase: Phase = IDLE  # the forward that is running
        self._counting: Phase = IDLE  # the forward whose logits the head computes next
        # caches filled here -> what their prefill left to the forwards continuing them
        self._generations: weakref.WeakKeyDictionary[PrunableCache, Generation] = weakref.WeakKeyDictionary()
        self._handles: list = []  # hooks held for the whole context
        self._layer_handles: dict = {}  # (kind, layer) -> hook the current phase needs
        self._hooks = NO_HOOKS
        self._drafts = 0  # drafted tokens at the end of the running forward's input (`_on_model`)
        entry_name = next(name for name, m in model.named_modules() if m is self.parts.entry)
        self._outer_modules = [("", model), (entry_name, self.parts.entry)]  # checked for compilation per forward
        signature = inspect.signature(self.parts.entry.forward).parameters.values()
        self._entry_params = [p.name for p in signature if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @property
    def num_layers(self) -> int:
        return len(self.backbone.layers)

    @property
    def active(self) -> bool:
        """True while the context is entered (its hooks are on the model)."""
        return bool(self._handles)

    @property
    def report(self) -> Report:
        """Report of the latest prefill+generation in this context (empty before any)."""
        return self.reports[-1] if self.reports else Report.empty(self.strategy.describe())

    # ------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "PruningSession":
        other = session_of(self.parts.entry)
        if other is not None:
            raise AlreadyPrunedError(
                f"this {type(self.model).__name__} is already inside tokenprune.prune(... '{other.strategy.name}'); "
                "leave that context before pruning it again"
            )
        attention_backend(self.backbone)
        check_not_compiled(self.model)
        try:
            add = self._handles.append
            add(self.model.register_forward_pre_hook(self._on_model, with_kwargs=True))
            add(self.parts.entry.register_forward_pre_hook(self._on_entry, with_kwargs=True))
            add(self.parts.entry.register_forward_hook(self._after_entry, with_kwargs=True))
            add(self.backbone.norm.register_forward_pre_hook(self._on_norm))
            add(self.parts.lm_head.register_forward_hook(self._on_logits))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()
        self.phase = self._counting = IDLE
        for cache in list(self._generations):
            cache.close()

    def _remove(self) -> None:
        for handle in [*self._handles, *self._layer_handles.values()]:
            handle.remove()
        self._handles.clear()
        self._layer_handles.clear()
        self._hooks = NO_HOOKS

    def _use_hooks(self, wanted: HookSet) -> None:
        """Hold exactly the per-layer hooks of `wanted` (see HookSet): add the missing, remove the others."""
        if wanted == self._hooks:
            return
        names = {("layer", i) for i in wanted.layers} | {("q", i) for i in wanted.queries}
        names |= {("k", i) for i in wanted.keys} | {("attention", i) for i in wanted.attention}
        names |= {("language_model", 0)} if wanted.language_model else set()
        for name in [n for n in self._layer_handles if n not in names]:
            self._layer_handles.pop(name).remove()
        backbone = self.backbone
        for kind, i in sorted(names - self._layer_handles.keys()):
            if kind == "language_model":
                handle = backbone.model.register_forward_pre_hook(self._on_language_model, with_kwargs=True)
            elif kind == "layer":
                handle = backbone.layers[i].register_forward_pre_hook(self._layer_hook(i), with_kwargs=True)
            elif kind == "attention":
                handle = backbone.attention(i).register_forward_hook(self._attention_hook(i), with_kwargs=True)
            else:
                source = backbone.query_source(i) if kind == "q" else backbone.key_source(i)
                handle = source.register_forward_hook(self._projection_hook(i, kind))
            self._layer_handles[(kind, i)] = handle
        self._hooks = wanted

    # ------------------------------------------------------------------------------------------ a forward
    def _on_model(self, module, args, kwargs):
        """The model's own call: `logits_to_keep=n > 1` asks for the logits of the last n tokens, which is how
        assisted and prompt-lookup decoding verify n - 1 drafted tokens; the entry module does not see it."""
        keep = kwargs.get("logits_to_keep")
        self._drafts = keep - 1 if isinstance(keep, int) and not isinstance(keep, bool) and keep > 1 else 0
        return None

    def _on_entry(self, module, args, kwargs):
        self.phase = self._counting = IDLE
        # compiled inside the block (two attribute reads per forward: the full check ran on entering)
        check_not_compiled(self.model, self._outer_modules)
        if args:  # bind positional arguments to their names so nothing is lost when kwargs are rewritten
            kwargs = {**dict(zip(self._entry_params, args, strict=False)), **kwargs}
        drafts, self._drafts = self._drafts, 0  # this forward's only (the entry may also be called on its own)
        phase = self._phase_for(kwargs, drafts)
        if phase is None:
            return None
        self._use_hooks(phase.hooks)
        self.phase = phase
        return None if phase.kwargs is None else ((), phase.kwargs)

    def _phase_for(self, kwargs: dict, drafts: int = 0) -> Prefill | DecodeStep | None:
        """The phase of a forward with the entry module's `kwargs` ending with `drafts` drafted tokens; None
        leaves it untouched."""
        cache = kwargs.get("past_key_values")
        common = {"backbone": self.backbone, "strategy": self.strategy, "backend": attention_backend(self.backbone)}
        if isinstance(cache, PrunableCache) and cache.processed > 0:
            return DecodeStep.start(
                **common,
                scaling=self.scaling,
                cache=cache,
                generation=self._generations.get(cache),
                images_given=self.adapter.images_given(kwargs),
                positions=self.adapter.positions(kwargs),
                kwargs=kwargs,
                drafts=drafts,
            )
        if cache is not None and cache.get_seq_length() > 0:
            if self.adapter.images_given(kwargs):
                raise UnsupportedInputError(
                    "an image prompt continuing a KV cache that was not filled inside this tokenprune.prune() "
                    "context is not supported; start generation from an empty cache"
                )
            return None  # continuing a text-only conversation: untouched
        tokens = self.adapter.visual_tokens(self.model, kwargs)
        if tokens is None:
            return None  # text-only input: pass through untouched
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(self.backbone.config, "use_cache", True)
        use_cache = use_cache and not self.backbone.layers_drop_cache
        prefill = Prefill.start(
            **common,
            cut_layers=self.cut_layers,
            tokens=tokens,
            positions=self.adapter.positions(kwargs),
            kwargs=kwargs,
            use_cache=use_cache,
            drafts=drafts,
        )
        self.reports.append(prefill.report)
        return prefill

    def _after_entry(self, module, args, kwargs, output):
        phase, self.phase = self.phase, IDLE
        phase.entry_output(output)
        generation = phase.finish()
        if generation is not None:
            self._generations[phase.cache] = generation
            phase.cache.on_crop = generation.report.record_crop  # assisted decoding's crops reach the report
        self._counting = phase  # lm_head runs after the entry module returned
        return None

    def _on_logits(self, module, args, output):
        self._counting.count_logits(output.shape[:-1].numel())
        self._counting = IDLE

    # ------------------------------------------------------------------------------------------ per layer
    def _on_language_model(self, module, args, kwargs):
        replaced = self.phase.language_model_input(kwargs)
        return None if replaced is None else (args, replaced)

    def _layer_hook(self, i: int):
        def hook(module, args, kwargs):
            return self.phase.layer_input(i, args, kwargs)

        return hook

    def _projection_hook(self, i: int, kind: str):
        def hook(module, args, output):
            self.phase.projected(i, kind, output)

        return hook

    def _attention_hook(self, i: int):
        def hook(module, args, kwargs, output):
            self.phase.attended(i, kwargs)

        return hook

    def _on_norm(self, module, args):
        return self.phase.final_norm(args)
