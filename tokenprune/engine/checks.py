"""What the engine refuses, checked before it changes anything: weights, attention backend, sequence
length against a sliding window, and the inputs of a prefill or of a forward continuing a pruned cache.

Every refusal is a tokenprune error naming what was wrong and what is allowed.
"""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..errors import UnsupportedInputError, UnsupportedModelError

#: attention implementations whose masks the engine can build per pruned layer
SUPPORTED_ATTENTION = ("sdpa", "eager")
#: weight dtypes the engine computes with (quantized weights are refused)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ------------------------------------------------------------------------------------------ the model
def check_weights(model: torch.nn.Module, served: list[torch.nn.Module]) -> None:
    """Refuse weights the engine cannot serve: not loaded, or quantized.

    A language model spread over several devices is fine (every tensor follows its layer); so are
    weights accelerate offloaded to the CPU or disk: they sit on `meta` until its hook loads them.
    """
    params = [p for m in served for p in m.parameters()]
    name = type(model).__name__
    missing = _unserved_meta(model, {id(p) for p in params})
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


def _compiled(module: torch.nn.Module) -> bool:
    """True for a module compiled in place (`module.compile()`) or whose forward was replaced by a compiled one."""
    forward = module.__dict__.get("forward")
    return getattr(module, "_compiled_call_impl", None) is not None or hasattr(forward, "_torchdynamo_orig_callable")


def check_not_compiled(model: torch.nn.Module, modules: list[tuple[str, torch.nn.Module]] | None = None) -> None:
    """Refuse a model compiled with torch.compile, checking `modules` ((name, module) pairs; default: all of the
    model's). Compiled code does not re-check module hooks when they change (dynamo's
    `skip_nnmodule_hook_guards`, on by default): it keeps calling the hooks it was traced with, while the
    engine's per-layer hooks change between a prefill and the decode steps, so a compiled model could run with
    the wrong ones and give silently wrong outputs."""
    for name, module in model.named_modules() if modules is None else modules:
        if _compiled(module):
            where = f"module '{name}' of this {type(model).__name__}" if name else f"this {type(model).__name__}"
            raise UnsupportedModelError(
                f"{where} is compiled with torch.compile, whose compiled code keeps the module hooks it was traced "
                "with while tokenprune's hooks change between the prefill and the decode steps, so its outputs "
                "could be silently wrong; prune the uncompiled model (generate()'s compiled path needs a static "
                "cache, which is refused too)"
            )


def attention_backend(backbone: Backbone) -> str:
    """The attention implementation the language model runs with, if the engine supports it."""
    backend = getattr(backbone.config, "_attn_implementation", None) or "eager"
    if backend not in SUPPORTED_ATTENTION:
        raise UnsupportedModelError(
            f"attention backend '{backend}' is not supported (pruned layers need their own 4D masks); load "
            f"the model with attn_implementation one of {', '.join(SUPPORTED_ATTENTION)}"
        )
    return backend


def check_window(backbone: Backbone, tokens: int) -> None:
    """Sliding-window layers equal full attention while the sequence fits in the window; past it they
    would need windowed masks of their own, which the engine does not build."""
    window = backbone.sliding_window
    if window is not None and tokens > window:
        raise UnsupportedInputError(
            f"{tokens} tokens exceed the backbone's sliding window of {window}; tokenprune masks pruned "
            "layers causally and serves sequences inside the window only"
        )


# ------------------------------------------------------------------------------------------ inputs
def prompt_validity(attention_mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """(B, L) real tokens of a prompt from its 2D padding mask: padding anywhere (left, right, between real
    tokens; `Prefill` keeps what transformers computes), but at least one real token per sample."""
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2:
        raise UnsupportedInputError(
            f"a {attention_mask.dim()}D attention_mask is not supported; pass the 2D (batch, length) padding mask"
        )
    valid = attention_mask.to(device).bool()
    empty = (~valid.any(1)).cpu()
    if bool(empty.any()):
        raise UnsupportedInputError(
            f"attention_mask rows {empty.nonzero().flatten().tolist()} have no real token (all padding); every "
            "sample needs at least one"
        )
    return valid


def check_continuation(
    images_given: bool, filled_here: bool, strategy: str, horizon_needed: bool, held: int, bsz: int
) -> None:
    """A forward continuing a pruned cache: no new image, the cache filled in this context, a horizon for
    a decaying strategy, and one input row per cached sequence."""
    if images_given:
        raise UnsupportedInputError(
            "a new image continuing a pruned KV cache is not supported: its visual tokens would not be "
            "pruned consistently; put every image in the first prompt, or start from an empty cache"
        )
    if not filled_here:
        raise UnsupportedInputError(
            "this pruned cache was filled in another tokenprune.prune() context; continue it inside that context"
        )
    if horizon_needed:
        raise UnsupportedInputError(
            f"strategy '{strategy}' decays the visual KV cache over a horizon; when decoding outside generate(), "
            "pass horizon=<decode steps> to tokenprune.prune()"
        )
    if held != bsz:
        raise UnsupportedInputError(
            f"the pruned cache holds {held} sequences but the input continuing it has {bsz} (a beam search or "
            "num_return_sequences cache keeps every beam); continue it with one input row per cached sequence"
        )


def check_drafts(drafts: int, strategy: str, decays: bool) -> None:
    """A forward carrying drafted tokens to verify (assisted / prompt-lookup decoding) under a decaying cache:
    the decay counts decode forwards, and such a forward is several steps at once, which its schedule does not
    define."""
    if drafts and decays:
        raise UnsupportedInputError(
            f"assisted or prompt-lookup decoding with strategy '{strategy}': its cache decay counts decode "
            "forwards, and a forward verifying drafted tokens is several decode steps at once, which the decay's "
            "schedule does not define; use a strategy without cache decay (fastv, vtw, or decay='none'), or "
            "generate without assistant_model / prompt_lookup_num_tokens"
        )


def continuation_validity(
    attention_mask: torch.Tensor | None, processed: int, new: int, bsz: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, new) real new tokens of a forward continuing a cache of `processed` tokens, and their count per
    sample on the host ((B,): the engine's one host read of a decode step)."""
    if attention_mask is None:
        return torch.ones(bsz, new, dtype=torch.bool, device=device), torch.full((bsz,), new)
    if attention_mask.dim() != 2 or attention_mask.shape[1] != processed + new:
        raise UnsupportedInputError(
            f"attention_mask of shape {tuple(attention_mask.shape)} continuing a pruned cache of "
            f"{processed} tokens with {new} new ones; pass the 2D mask of all {processed + new} tokens "
            "(as generate() does)"
        )
    new_valid = attention_mask[:, -new:].to(device).bool()
    return new_valid, new_valid.sum(1).cpu()


# ------------------------------------------------------------------------------------------ offloading
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
                if (depth == len(path) or getattr(hook, "place_submodules", False)) and holds(
                    hook.weights_map, relative
                ):
                    served = True
            if served:
                break
        if not served:
            missing.append(name)
    return missing
