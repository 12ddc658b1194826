"""The pruning engine: hooks that remove visual tokens per layer, without touching transformers' code.

Data flow of one `generate()` call:

1. *Entry* (forward pre-hook on the module that still sees `input_ids`): the adapter marks the visual
   tokens of every sample; a `PrunableCache` replaces the fresh cache; a `_Prefill` state starts with the
   full layout (every prompt token, in order).
2. *Prefill, per decoder layer* (forward pre-hook): at a cut layer the schedule says how many visual tokens
   each sample keeps; they are ranked by the scores computed at the end of the previous layer's attention
   (forward hook on `self_attn`, queries from a hook on `q_proj`: "QK heredity", no extra attention pass).
   Removed tokens leave the hidden states, rotary tables, position ids, the layer's mask and therefore
   that layer's KV cache. Samples keep different counts: each is right-aligned and left-filled with
   masked-out filler so tensors stay rectangular and the last token stays last.
3. *Final norm* (pre-hook): removed tokens are put back with the hidden state they had when removed,
   so outputs keep the prompt's length.
4. *Decode*: at the entry, the decay's counts for every layer are planned on the host (`_plan_decay`);
   per layer (pre-hook), the lowest-scored visual entries (attention received, accumulated over steps)
   are evicted at once by masking and physically removed from the cache tensors every `evict_every`
   steps; layers whose entries differ from the full sequence get their own attention mask built from the
   cache's per-entry metadata. After the forward, the attention of this step's query is added to the
   eviction scores of every layer that evicts later (`_decode_scores`, all layers in one pass).
5. *Report*: counts per layer / step are recorded without per-layer syncs and turned into FLOPs and KV
   bytes when read.

Per-layer hooks are held only while a phase needs them (`_use_hooks`): every hook costs time at every call
of its module, and decoding calls every module once per token.

Devices (a model dispatched by accelerate, `device_map="auto"`): every tensor the engine makes follows the
tensor it is used with, never `model.device`. A layer's pre-hook runs before accelerate's own hook moves
the layer's inputs, so the prefill layout follows the hidden states it indexes, scores and per-entry cache
metadata follow that layer's keys (`PrunableLayer` keeps them together), and the masks / rotary rows /
position ids handed to a layer are moved to its execution device by accelerate with the other arguments.
Report counts are gathered on the device of the prompt (`_Prefill.home`). Weights that accelerate offloaded
(on `meta` until its hook loads them) are accepted; weights on `meta` that nothing will load are refused.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig

from .cache import PrunableCache, PrunableLayer, compact
from .errors import AlreadyPrunedError, UnsupportedInputError, UnsupportedModelError
from .interfaces import AttentionView, ModelAdapter, Strategy, VisualTokens
from .report import Report

SUPPORTED_ATTENTION = ("sdpa", "eager")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class _Layout:
    """The tokens one prefill layer holds: (B, L') rectangles, each sample right-aligned."""

    source: torch.Tensor  # index of each entry in the prompt
    valid: torch.Tensor  # real token (not padding, not filler)
    visual: torch.Tensor  # prunable visual token still present
    positions: torch.Tensor  # RoPE position id

    def select(self, index: torch.Tensor, keep: torch.Tensor) -> "_Layout":
        valid = keep.gather(1, index)
        return _Layout(
            source=self.source.gather(1, index),
            valid=valid,
            visual=self.visual.gather(1, index) & valid,
            positions=self.positions.gather(1, index),
        )

    def to(self, device: torch.device) -> "_Layout":
        if self.source.device == device:
            return self
        return _Layout(*(t.to(device) for t in (self.source, self.valid, self.visual, self.positions)))


@dataclass
class _Prefill:
    layout: _Layout
    cache: PrunableCache | None
    report: Report
    total_visual: torch.Tensor  # host (B,) N_b
    present: torch.Tensor  # host (B,) visual tokens the current layout holds
    budgets: dict  # cut layer that removes tokens -> host (B,) visual tokens kept from it on
    ranked: set[int]  # cut layers that keep some but not all: ranked by the previous layer's scores
    real: torch.Tensor  # host (B,) real tokens the current layout holds (the rest of its columns is filler)
    image_end: torch.Tensor  # (B,) prompt index of the last visual token (-1 without image)
    backend: str
    score_layers: set[int]
    length: int  # padded prompt length
    home: torch.device  # device of the prompt tensors: report counts are gathered here
    changed: bool = False
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # full-length (cos, sin), then per layout
    full_rope: tuple[torch.Tensor, torch.Tensor] | None = None
    mask: torch.Tensor | None = None
    next_scores: torch.Tensor | None = None
    restore: torch.Tensor | None = None  # (B, L, D) hidden state of each removed token
    layer_counts: list = field(default_factory=list)  # per layer: (present, real, columns) of its layout
    stash: dict = field(default_factory=dict)


@dataclass
class _Decode:
    """One forward continuing a pruned cache: a generated token, or a new turn of several tokens."""

    cache: PrunableCache
    new_columns: int  # M new tokens in this forward
    new_all_valid: bool  # every new token is real (a padded new turn has padding among them)
    backend: str
    score_layers: set[int]  # layers whose attention is accumulated for eviction at this step
    evictions: dict  # layer -> [visual entries it evicts now, per sample]
    new_real: torch.Tensor  # host (B,) real new tokens
    queries: dict = field(default_factory=dict)  # layer -> (B, H*Dh) q_proj output of the last new token
    valid: dict = field(default_factory=dict)  # layer -> (B, entries) validity, when the layer needed it
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin) of the new tokens

    @property
    def report(self) -> Report:
        return self.cache.report


def rank_keep(scores: torch.Tensor, candidates: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mask of the `keep[b]` highest-scored candidates of each row (ties: earlier entry first)."""
    masked = scores.float().masked_fill(~candidates, float("-inf"))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return candidates & (rank < keep[:, None])


def _scatter_rows(into: torch.Tensor, index: torch.Tensor, where: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`into` (B, L, D) with row index[b, j] replaced by rows[b, j] wherever where[b, j]; `index` must not
    repeat within a sample. Out of place, and without reading `where` back to the host."""
    index = index.to(into.device)[..., None].expand(-1, -1, into.shape[-1])
    kept = into.gather(1, index)
    return into.scatter(1, index, torch.where(where.to(into.device)[..., None], rows.to(into.device, into.dtype), kept))


def layer_mask(allowed: torch.Tensor, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K) mask in the convention of the attention backend (sdpa: bool, eager: additive)."""
    allowed = allowed[:, None]
    if backend == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def decode_mask(valid: torch.Tensor, new: int, new_all_valid: bool, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Mask of the last `new` entries of a layer (the tokens of this forward) over all its entries `valid`.

    Each new token sees every real earlier entry and the new ones up to itself; a padding query sees only
    itself so no row is empty.
    """
    if new == 1 and new_all_valid:  # the common decode step: one real query sees exactly the real entries
        return layer_mask(valid[:, None, :], backend, dtype)
    length = valid.shape[1]
    key = torch.arange(length, device=valid.device)[None, None, :]
    query = torch.arange(length - new, length, device=valid.device)[None, :, None]
    return layer_mask((valid[:, None, :] & (key <= query)) | (key == query), backend, dtype)


def prefill_mask(valid: torch.Tensor, backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Causal mask over a layout; filler rows see only themselves so no row is empty."""
    n = valid.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=valid.device)
    return layer_mask((causal[None] & valid[:, None, :]) | eye[None], backend, dtype)


def generation_horizon(prompt_length: int) -> int | None:
    """max_new_tokens of the enclosing `generate()` call, read (never written) from its frames."""
    frame = inspect.currentframe()
    for _ in range(64):
        frame = frame.f_back if frame is not None else None
        if frame is None:
            return None
        config = frame.f_locals.get("generation_config")
        if isinstance(config, GenerationConfig):
            if config.max_new_tokens:
                return int(config.max_new_tokens)
            if config.max_length:
                return max(1, int(config.max_length) - prompt_length)
    return None


def session_of(module: torch.nn.Module) -> "PruningSession | None":
    """The pruning session whose hooks sit on `module`, if any (no global registry needed)."""
    for hook in module._forward_pre_hooks.values():
        owner = getattr(hook, "__self__", None)
        if isinstance(owner, PruningSession):
            return owner
    return None


class PruningSession:
    """One `tp.prune(...)` context: hooks on one model, per-call state, and the reports it produced."""

    def __init__(self, model: torch.nn.Module, adapter: ModelAdapter, strategy: Strategy) -> None:
        self.model = model
        self.adapter = adapter
        self.strategy = strategy
        self.parts = adapter.parts(model)
        self._check_weights()
        self.num_layers = len(self.parts.layers)
        strategy.check(self.num_layers)
        self.cut_layers = strategy.schedule.cut_layers(self.num_layers)
        # One attention scaling for every layer (as in every LLaMA-family model) is folded into the rotated
        # decode queries at once; otherwise each layer's logits are scaled on their own.
        scalings = {float(self.parts.attention(layer).scaling) for layer in self.parts.layers}
        self._scaling = scalings.pop() if len(scalings) == 1 else None
        self.reports: list[Report] = []
        self._handles: list = []  # hooks held for the whole context
        self._layer_handles: dict = {}  # (kind, layer) -> hook of the current phase (see _use_hooks)
        self._hooks_key = None
        self._forward: _Prefill | _Decode | None = None
        self._logits_for: tuple[Report, str] | None = None  # (report, phase) of the forward that just ran
        signature = inspect.signature(self.parts.entry.forward).parameters.values()
        self._entry_params = [p.name for p in signature if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    # ------------------------------------------------------------------------------------------ lifecycle
    @property
    def report(self) -> Report:
        """Report of the latest prefill+generation in this context (empty before any)."""
        return self.reports[-1] if self.reports else Report.empty(self.strategy.describe())

    def _check_weights(self) -> None:
        """Refuse weights the engine cannot serve: not loaded, or quantized.

        A language model spread over several devices is fine (every tensor follows its layer); so are
        weights accelerate offloaded to the CPU or disk: they sit on `meta` until its hook loads them.
        """
        served = [self.parts.language_model, self.parts.lm_head]
        params = [p for m in served for p in m.parameters()]
        name = type(self.model).__name__
        missing = _unserved_meta(self.model, {id(p) for p in params})
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise UnsupportedModelError(
                f"this {name} has weights on the meta device that nothing will load ({shown}); load the weights "
                "(from_pretrained, optionally with device_map='auto', which may offload them to cpu/disk) before pruning"
            )
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype not in SUPPORTED_DTYPES})
        if dtypes:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
            raise UnsupportedModelError(
                f"this {name} has {', '.join(dtypes)} weights (quantized?); tokenprune needs floating-point "
                f"weights: {allowed}"
            )

    def _check_window(self, tokens: int) -> None:
        window = self.parts.sliding_window
        if window is not None and tokens > window:
            raise UnsupportedInputError(
                f"{tokens} tokens exceed the backbone's sliding window of {window}; tokenprune masks pruned "
                "layers causally and serves sequences inside the window only"
            )

    def _backend(self) -> str:
        backend = getattr(self.parts.text_config, "_attn_implementation", None) or "eager"
        if backend not in SUPPORTED_ATTENTION:
            raise UnsupportedModelError(
                f"attention backend '{backend}' is not supported (pruned layers need their own 4D masks); load "
                f"the model with attn_implementation one of {', '.join(SUPPORTED_ATTENTION)}"
            )
        return backend

    def __enter__(self) -> "PruningSession":
        other = session_of(self.parts.entry)
        if other is not None:
            raise AlreadyPrunedError(
                f"this {type(self.model).__name__} is already inside tokenprune.prune(... '{other.strategy.name}'); "
                "leave that context before pruning it again"
            )
        self._backend()
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()
        self._forward = None

    def _install(self) -> None:
        add = self._handles.append
        add(self.parts.entry.register_forward_pre_hook(self._on_entry, with_kwargs=True))
        add(self.parts.entry.register_forward_hook(self._after_entry, with_kwargs=True))
        add(self.parts.norm.register_forward_pre_hook(self._on_norm))
        add(self.parts.lm_head.register_forward_hook(self._on_logits))

    def _use_hooks(self, key, layers=(), queries=(), keys=(), attention=()) -> None:
        """Hold exactly the per-layer hooks a phase needs: a hook costs time at every call of its module,
        and a decode step calls every layer's modules, so modules a phase does not use carry none.

        `layers`: decoder layers whose inputs are rewritten; `queries` / `keys`: layers whose q_proj / k_proj
        output is kept for scoring; `attention`: layers scored after their attention (prefill). `key`
        names the set, so a step that needs the same hooks as the previous one changes nothing.
        """
        if key == self._hooks_key:
            return
        wanted = {("layer", i) for i in layers} | {("q", i) for i in queries} | {("k", i) for i in keys}
        wanted |= {("attention", i) for i in attention}
        for name in [n for n in self._layer_handles if n not in wanted]:
            self._layer_handles.pop(name).remove()
        for kind, i in sorted(wanted - self._layer_handles.keys()):
            layer = self.parts.layers[i]
            attn = self.parts.attention(layer)
            if kind == "layer":
                handle = layer.register_forward_pre_hook(self._layer_hook(i), with_kwargs=True)
            elif kind == "attention":
                handle = attn.register_forward_hook(self._attention_hook(i), with_kwargs=True)
            else:
                handle = (attn.q_proj if kind == "q" else attn.k_proj).register_forward_hook(self._stash_hook(i, kind))
            self._layer_handles[(kind, i)] = handle
        self._hooks_key = key

    @property
    def active(self) -> bool:
        """True while the context is entered (its hooks are on the model)."""
        return bool(self._handles)

    def _remove(self) -> None:
        for handle in [*self._handles, *self._layer_handles.values()]:
            handle.remove()
        self._handles.clear()
        self._layer_handles.clear()
        self._hooks_key = None

    # ------------------------------------------------------------------------------------------ entry
    def _on_entry(self, module, args, kwargs):
        self._forward = None
        self._logits_for = None
        if args:  # bind positional arguments to their names so nothing is lost when kwargs are rewritten
            kwargs = {**dict(zip(self._entry_params, args)), **kwargs}
            args = ()
        cache = kwargs.get("past_key_values")
        if isinstance(cache, PrunableCache) and cache.processed > 0:
            return self._start_decode(cache, kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            if kwargs.get("pixel_values") is not None:
                raise UnsupportedInputError(
                    "an image prompt continuing a KV cache that was not filled inside this tokenprune.prune() "
                    "context is not supported; start generation from an empty cache"
                )
            return None  # continuing a text-only conversation: untouched
        tokens = self.adapter.visual_tokens(self.model, kwargs)
        if tokens is None:
            return None  # text-only input: pass through untouched
        return args, self._start_prefill(tokens, cache, kwargs)

    def _start_prefill(self, tokens: VisualTokens, cache, kwargs: dict) -> dict:
        bsz, length = tokens.prunable.shape
        device = tokens.prunable.device
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            valid = torch.ones(bsz, length, dtype=torch.bool, device=device)
        elif attention_mask.dim() != 2:
            raise UnsupportedInputError(
                f"a {attention_mask.dim()}D attention_mask is not supported; pass the 2D (batch, length) padding mask"
            )
        else:
            valid = attention_mask.to(device).bool()
        if bool((valid[:, :-1] & ~valid[:, 1:]).any()):
            raise UnsupportedInputError(
                "right-padded batch: tokenprune needs left padding (set tokenizer/processor padding_side='left')"
            )
        if not bool(valid[:, -1].all()):
            raise UnsupportedInputError("a sample whose last token is padding is not supported (use left padding)")
        visual = tokens.prunable & valid
        visual[:, -1] = False  # the last prompt token produces the next token: never removed
        planned = generation_horizon(length)
        self._check_window(length + (planned or 0))
        positions = kwargs.get("position_ids")
        if positions is None:  # what the language model itself would use
            positions = torch.arange(length, device=device)[None]
        positions = positions.to(device).expand(bsz, -1)
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(self.parts.text_config, "use_cache", True)
        if use_cache:
            # generate()'s fresh cache (or the caller's own empty one) becomes prunable in place, so whoever
            # holds that object keeps using it; anything else is refused.
            cache = PrunableCache.adopt(cache, self.num_layers, owner=self)
            kwargs = {**kwargs, "past_key_values": cache}
        else:
            cache = None
        decay = self.strategy.decay
        horizon = None
        if decay.active and cache is not None:
            horizon = decay.horizon or planned
        index = torch.arange(length, device=device).expand(bsz, -1)
        # End of the last image, newline tokens included: text_mean scores use the text after it. The last
        # prompt token always counts as text (it is never removed), so that query set is never empty.
        image_tokens = tokens.placeholders & valid
        image_tokens[:, -1] = False
        image_end = torch.where(image_tokens, index, torch.full_like(index, -1)).max(1).values
        report = Report.start(
            strategy=self.strategy.describe(),
            parts=self.parts,
            valid=valid,
            visual=visual,
            image_of=torch.where(valid, tokens.image_of, -1),
            dtype=self._kv_dtype(),
            horizon=horizon,
        )
        self.reports.append(report)
        if cache is not None:
            cache.report = report  # decode steps report to the prefill that filled this cache
        # Read once, before the layers run; from here on the prefill decides from host counts only.
        real, total_visual = torch.stack([valid.sum(1), visual.sum(1)]).cpu()
        budgets, ranked = self._plan_prefill(total_visual)
        score_layers = {c - 1 for c in ranked}
        if decay.active and cache is not None:
            score_layers = set(range(self.num_layers))
        every = range(self.num_layers)
        scored = frozenset(score_layers)
        self._use_hooks(("prefill", scored, cache is None), layers=every, queries=scored,
                        keys=scored if cache is None else (), attention=scored)
        self._forward = _Prefill(
            layout=_Layout(source=index, valid=valid, visual=visual, positions=positions),
            cache=cache,
            report=report,
            total_visual=total_visual,
            present=total_visual,
            real=real,
            budgets=budgets,
            ranked=ranked,
            image_end=image_end,
            backend=self._backend(),
            score_layers=score_layers,
            length=length,
            home=device,
        )
        return kwargs

    def _plan_prefill(self, total_visual: torch.Tensor) -> tuple[dict, set[int]]:
        """Host-side plan of the prefill: the visual tokens each sample keeps at every cut that removes any
        ({layer: (B,)}), and the cuts among them that keep some but not all (they rank by the previous
        layer's scores). Counts follow from the schedule alone, so nothing is read back while layers run."""
        present, budgets, ranked = total_visual, {}, set()
        for layer in self.cut_layers:
            keep = torch.minimum(self.strategy.schedule.keep(layer, present, total_visual).clamp(min=0), present)
            if bool((keep < present).any()):
                budgets[layer] = keep
                if bool(((keep > 0) & (keep < present)).any()):
                    ranked.add(layer)
            present = keep
        return budgets, ranked

    def _kv_dtype(self) -> torch.dtype:
        return self.parts.attention(self.parts.layers[0]).k_proj.weight.dtype

    def _start_decode(self, cache: PrunableCache, kwargs: dict):
        tokens = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        bsz, new = tokens.shape[:2]
        if self.adapter.images_given(kwargs):
            raise UnsupportedInputError(
                "a new image continuing a pruned KV cache is not supported: its visual tokens would not be "
                "pruned consistently; put every image in the first prompt, or start from an empty cache"
            )
        if cache.owner is not self or cache.report is None:
            raise UnsupportedInputError(
                "this pruned cache was filled in another tokenprune.prune() context; continue it inside that context"
            )
        if self.strategy.decay.active and cache.report.horizon is None:
            raise UnsupportedInputError(
                f"strategy '{self.strategy.name}' decays the visual KV cache over a horizon; when decoding "
                "outside generate(), pass horizon=<decode steps> to tokenprune.prune()"
            )
        held = cache.layers[0].head_valid.shape[0]
        if held != bsz:
            raise UnsupportedInputError(
                f"the pruned cache holds {held} sequences but the input continuing it has {bsz} (a beam search or "
                "num_return_sequences cache keeps every beam); continue it with one input row per cached sequence"
            )
        self._check_window(cache.processed + new)
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            new_valid = torch.ones(bsz, new, dtype=torch.bool, device=tokens.device)
            new_real = torch.full((bsz,), new)
        elif attention_mask.dim() != 2 or attention_mask.shape[1] != cache.processed + new:
            raise UnsupportedInputError(
                f"attention_mask of shape {tuple(attention_mask.shape)} continuing a pruned cache of "
                f"{cache.processed} tokens with {new} new ones; pass the 2D mask of all "
                f"{cache.processed + new} tokens (as generate() does)"
            )
        else:
            new_valid = attention_mask[:, -new:].to(tokens.device).bool()
            new_real = new_valid.sum(1).cpu()  # the engine's one host read of a decode step
        positions = kwargs.get("position_ids")
        if positions is None:  # what the language model itself would use: the next `new` positions
            positions = cache.processed + torch.arange(new, device=tokens.device)[None]
        cache.step += 1
        cache.add_tokens(positions.to(tokens.device).expand(bsz, -1), new_valid, new_real)
        evictions, score_layers = self._plan_decay(cache)
        if self.strategy.decay.active:  # every layer may evict, every layer is scored until it stops evicting
            self._use_hooks("decode-decay", layers=range(self.num_layers), queries=range(self.num_layers))
        else:  # the cache keeps what prefill left: only layers holding other entries than the full sequence
            rewritten = frozenset(i for i, layer in enumerate(cache.layers) if layer.pruned)
            self._use_hooks(("decode", rewritten), layers=rewritten)
        self._forward = _Decode(
            cache=cache,
            new_columns=new,
            new_all_valid=bool((new_real == new).all()),
            backend=self._backend(),
            score_layers=score_layers,
            evictions=evictions,
            new_real=new_real,
        )
        return None

    def _plan_decay(self, cache: PrunableCache) -> tuple[dict, set[int]]:
        """Host-side plan of a decode step for every layer at once: how many visual entries each layer
        evicts per sample now (the host counts move to the state after them), and which layers still need
        attention scores because a later step evicts there (decays are non-increasing: see CacheDecay)."""
        decay = self.strategy.decay
        if not decay.active:
            return {}, set()
        horizon = cache.report.horizon
        if cache.final_visual is None:
            cache.final_visual = decay.keep(horizon, horizon, cache.initial_visual)
        target = torch.minimum(decay.keep(cache.step, horizon, cache.initial_visual), cache.visual_count)
        count = cache.visual_count - target
        cache.visual_count, cache.entry_count = target, cache.entry_count - count
        per_layer = count.tolist()
        evictions = {i: c for i, c in enumerate(per_layer) if any(c)}
        later = (target > cache.final_visual).any(1).tolist()
        return evictions, {i for i, x in enumerate(later) if x}

    def _after_entry(self, module, args, kwargs, output):
        f = self._forward
        if f is None:
            return None
        if f.cache is not None:
            if isinstance(f, _Prefill):
                f.cache.processed += f.length
                f.cache.step = 0
                f.cache.start_counts(*zip(*f.layer_counts))
                f.report.record_cache(f.cache)
            else:
                if f.score_layers:
                    self._decode_scores(f)
                f.cache.processed += f.new_columns
                f.report.record_cache(f.cache, new_tokens=f.new_real, new_columns=f.new_columns)
        self._logits_for = (f.report, "prefill" if isinstance(f, _Prefill) else "decode")
        self._forward = None
        return None

    # ------------------------------------------------------------------------------------------ layers
    def _layer_hook(self, i: int):
        def hook(module, args, kwargs):
            f = self._forward
            if f is None:
                return None
            if isinstance(f, _Prefill):
                return self._prefill_layer(i, f, args, kwargs)
            return self._decode_layer(i, f, args, kwargs)

        return hook

    def _prefill_layer(self, i: int, f: _Prefill, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        # The layout follows the hidden states it indexes (on the previous layer's device under accelerate).
        f.layout = f.layout.to(hidden.device)
        if f.full_rope is None:
            cos, sin = kwargs["position_embeddings"]
            bsz = hidden.shape[0]
            f.full_rope = (cos.expand(bsz, -1, -1), sin.expand(bsz, -1, -1))
        if i in self.cut_layers:
            if i in f.budgets:
                hidden = self._cut(i, f, hidden, f.budgets[i])
            f.report.record_cut(i, f.layout.source.to(f.home), f.layout.visual.to(f.home))
        f.layer_counts.append((f.present, f.real, f.layout.valid.shape[1]))
        f.report.record_prefill_layer(i, f.real, f.present)
        if f.cache is not None:
            layer: PrunableLayer = f.cache.layers[i]
            layer.append_meta(f.layout.positions, f.layout.valid, f.layout.visual)
            layer.pruned = f.changed
        if not f.changed:
            return None
        kwargs = {**kwargs, "attention_mask": f.mask, "position_ids": f.layout.positions, "position_embeddings": f.rope}
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    def _cut(self, i: int, f: _Prefill, hidden: torch.Tensor, keep: torch.Tensor):
        lay = f.layout
        device = lay.visual.device
        if i in f.ranked:
            if f.next_scores is None:
                raise UnsupportedModelError(f"layer {i} must rank visual tokens but no scores were computed at layer {i - 1}")
            kept_visual = rank_keep(f.next_scores.to(device), lay.visual, keep.to(device))
        else:  # every sample keeps all or none: no ranking needed
            kept_visual = lay.visual & (keep > 0).to(device)[:, None]
        f.next_scores = None
        keep_mask = (lay.valid & ~lay.visual) | kept_visual
        if f.restore is None:
            f.restore = hidden.new_zeros(hidden.shape[0], f.length, hidden.shape[-1])
        # Keep each dropped token's hidden state at its prompt index (sources are unique within a layout, so
        # one scatter writes them without reading back which tokens were dropped).
        f.restore = _scatter_rows(f.restore, lay.source, lay.valid & ~keep_mask, hidden)
        f.real, f.present = f.real - (f.present - keep), keep
        length = int(f.real.max())
        index = compact(keep_mask, length)
        f.layout = lay.select(index, keep_mask)
        f.changed = True
        hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        src = f.layout.source[..., None]
        cos, sin = (t.to(src.device) for t in f.full_rope)
        f.rope = (cos.gather(1, src.expand(-1, -1, cos.shape[-1])), sin.gather(1, src.expand(-1, -1, sin.shape[-1])))
        if f.backend == "sdpa" and bool((f.real == length).all()):
            f.mask = None  # no filler: the layout is one causal sequence, and sdpa's causal kernel applies
        else:
            f.mask = prefill_mask(f.layout.valid, f.backend, hidden.dtype)
        return hidden

    def _decode_layer(self, i: int, f: _Decode, args, kwargs):
        cache = f.cache
        layer: PrunableLayer = cache.layers[i]
        if f.rope is None:
            f.rope = kwargs["position_embeddings"]
        count = f.evictions.get(i)
        if count is not None:  # evicted now: never attended again
            layer.evict_lowest(count)
        if layer.stale and cache.step % self.strategy.decay.evict_every == 0:
            # Physical removal is batched: one gather of the layer's cache every `evict_every` steps.
            layer.remove_evicted(cache.entry_count[i] - f.new_real)
        layer.all_valid = layer.all_valid and f.new_all_valid
        if not layer.pruned:
            return None  # entries equal the full sequence: the model's own mask is right
        if f.new_columns == 1 and layer.all_valid:
            if kwargs.get("attention_mask") is None:
                return None
            mask = None  # one query seeing every entry
        else:
            f.valid[i] = layer.entries_valid()
            mask = decode_mask(f.valid[i], f.new_columns, f.new_all_valid, f.backend, self._hidden_dtype(args, kwargs))
        return args, {**kwargs, "attention_mask": mask}

    @staticmethod
    def _hidden_dtype(args, kwargs) -> torch.dtype:
        return (args[0] if args else kwargs["hidden_states"]).dtype

    # ------------------------------------------------------------------------------------------ scores
    def _stash_hook(self, i: int, kind: str):
        def hook(module, args, output):
            f = self._forward
            if f is None or i not in f.score_layers:
                return
            if isinstance(f, _Decode):
                if kind == "q":
                    f.queries[i] = output[:, -1]  # scored after the forward, with every layer's at once
            elif kind == "q" or f.cache is None:
                f.stash[kind] = output

        return hook

    def _attention_hook(self, i: int):
        def hook(module, args, kwargs, output):
            f = self._forward
            if not isinstance(f, _Prefill) or i not in f.score_layers:
                return None
            cos, sin = kwargs["position_embeddings"]
            self._prefill_scores(i, f, module, cos, sin)
            f.stash.clear()
            return None

        return hook

    def _view(self, i, f, module, keys, cos, sin, key_valid, key_visual, text_after_image) -> AttentionView:
        return AttentionView(
            layer=i,
            raw_queries=f.stash["q"],
            keys=keys,
            cos=cos,
            sin=sin,
            key_valid=key_valid,
            key_visual=key_visual,
            query_text_after_image=text_after_image,
            num_heads=self.parts.num_heads,
            head_dim=self.parts.head_dim,
            scaling=module.scaling,
            rotary=self.parts.rotary,
        )

    def _prefill_scores(self, i: int, f: _Prefill, module, cos, sin) -> None:
        if f.cache is not None:
            keys = f.cache.layers[i].keys
        else:
            raw = f.stash["k"]
            keys = raw.view(*raw.shape[:2], -1, self.parts.head_dim).transpose(1, 2)
            _, keys = self.parts.rotary(keys, keys, cos, sin)
        lay = f.layout.to(keys.device)  # the layer ran where its keys are
        text_after = lay.valid & ~lay.visual & (lay.source > f.image_end.to(keys.device)[:, None])
        view = self._view(i, f, module, keys, cos, sin, lay.valid, lay.visual, text_after)
        if i + 1 in f.ranked and self.strategy.score is not None:  # the cut at i + 1 ranks this layer's tokens
            f.next_scores = self.strategy.score.score(view)
        if f.cache is not None and self.strategy.decay.active:
            # Seed the eviction score with the last prompt token's attention at this layer.
            f.cache.layers[i].seed_scores(view.last_query_attention())
        f.report.scoring_flops["prefill"] += view.flops

    def _decode_scores(self, f: _Decode) -> None:
        """Accumulate the attention each entry received from this step's last query, in every layer that
        still evicts later (VTA's eviction score).

        Decoding is the hot path, so this runs once after the forward instead of in each layer's hook: the
        queries of all scored layers are rotated together (they share this step's positions), then each
        layer costs one matmul against its cached keys, a softmax and a mean over heads. Scores are only
        read by later steps' evictions, which is why they can wait until the forward is done.
        """
        parts, cache = self.parts, f.cache
        layers = sorted(f.score_layers)
        heads, kv_heads, head_dim = parts.num_heads, parts.num_kv_heads, parts.head_dim
        queries = f.queries
        home = queries[layers[0]].device
        q = torch.stack([queries[i].to(home) for i in layers], 1)  # (B, layers, H*Dh)
        bsz = q.shape[0]
        q = q.view(bsz, len(layers) * heads, 1, head_dim)
        cos, sin = (t[:, -1:].to(home) for t in f.rope)
        q, _ = parts.rotary(q, q, cos, sin)
        if self._scaling is not None:
            q = q * self._scaling
        flops = 0
        for j, i in enumerate(layers):
            layer: PrunableLayer = cache.layers[i]
            keys = layer.keys
            # query heads h = kv * groups + g share key head kv (repeat_kv): fold the groups, don't copy keys
            qi = q[:, j * heads:(j + 1) * heads].to(keys.device).reshape(bsz, kv_heads, heads // kv_heads, head_dim)
            logits = torch.matmul(qi, keys.transpose(-1, -2))  # (B, Hkv, groups, entries)
            if self._scaling is None:
                logits = logits * parts.attention(parts.layers[i]).scaling
            if not layer.all_valid:
                valid = f.valid.get(i)
                if valid is None:
                    valid = layer.entries_valid()
                logits = torch.where(valid[:, None, None, :], logits, float("-inf"))
            layer.add_scores(torch.softmax(logits, dim=-1, dtype=torch.float32).mean(dim=(1, 2)))
            flops += 2 * bsz * heads * keys.shape[2] * head_dim
        f.report.scoring_flops["decode"] += flops

    # ------------------------------------------------------------------------------------------ outputs
    def _on_norm(self, module, args):
        f = self._forward
        if not isinstance(f, _Prefill) or not f.changed:
            return None
        hidden = args[0]
        lay = f.layout.to(hidden.device)
        restored = _scatter_rows(f.restore.to(hidden.device, hidden.dtype), lay.source, lay.valid, hidden)
        return (restored, *args[1:])

    def _on_logits(self, module, args, output):
        # lm_head runs after the entry module returned: count rows only for forwards this session handled.
        if self._logits_for is not None:
            report, phase = self._logits_for
            report.logit_rows[phase] += output.shape[:-1].numel()
            self._logits_for = None


def _offload_hooks(module: torch.nn.Module) -> list:
    """accelerate's AlignDevicesHooks on `module` that load offloaded weights before its forward."""
    hook = getattr(module, "_hf_hook", None)
    hooks = list(getattr(hook, "hooks", [hook])) if hook is not None else []  # SequentialHook holds several
    return [h for h in hooks if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None]


def _unserved_meta(root: torch.nn.Module, among: set[int]) -> list[str]:
    """Names of `root`'s parameters (those whose id is in `among`) on `meta` that no accelerate hook will
    load: not loaded at all.

    accelerate offloads a module's weights to cpu/disk by putting them on `meta` and attaching an
    AlignDevicesHook(offload=True) whose `weights_map` holds them, on the module itself or, with
    `place_submodules`, on an ancestor; the hook loads them onto the execution device for each forward.
    """
    modules = dict(root.named_modules())
    keys: dict[int, set[str]] = {}  # weights_map -> the names it holds (listed once; never loads a weight)

    def holds(weights_map, relative: str) -> bool:
        if id(weights_map) not in keys:
            keys[id(weights_map)] = set(weights_map)  # Mapping iteration lists names only
        # accelerate's PrefixedDataset is indexed by relative names but iterates the full (prefixed) ones
        names = keys[id(weights_map)]
        return relative in names or getattr(weights_map, "prefix", "") + relative in names

    missing = []
    for name, param in root.named_parameters():
        if param.device.type != "meta" or id(param) not in among:
            continue
        owner, _, leaf = name.rpartition(".")
        served = False
        path = owner.split(".") if owner else []
        for depth in range(len(path), -1, -1):  # the owner first, then its ancestors
            holder = ".".join(path[:depth])
            relative = ".".join([*path[depth:], leaf])
            for hook in _offload_hooks(modules[holder]):
                if (depth == len(path) or getattr(hook, "place_submodules", False)) and holds(hook.weights_map, relative):
                    served = True
            if served:
                break
        if not served:
            missing.append(name)
    return missing
