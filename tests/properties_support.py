"""Hypothesis strategies and independent helpers for tests/test_properties.py.

Everything a property compares against is recomputed here from the method definitions of docs/methods.md
(schedule counts, decay formula) and the FLOPs and KV-byte formulas in tokenprune/report.py's docstring, or
found independently of the adapter (image placeholders by token id, LLaVA-NeXT newlines by value via
conftest.newline_mask); nothing is read back from tokenprune's engine to build an expectation.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace

import torch
from conftest import reference_prunable
from hypothesis import strategies as st
from reference import RefMethod, Turn

from tokenprune.tiny import NEXT_GRIDS, TinySpec, build_model, make_inputs
from tokenprune.tiny_qwen import QwenSpec, build_qwen_model, make_qwen_inputs

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fast")
# The fast (CI) profile keeps models narrow; the thorough one goes up to the brief's 256.
MAX_HIDDEN = 96 if PROFILE == "fast" else 256
MAX_LAYERS = 8
MAX_STEPS = 8
ATOL = 1e-4  # fp32 logits: dropping tokens vs masking them only reorders sums (~1e-6); see test_reference.py

# Greedy decoding that never stops early and never alters the logits: no EOS (min_new_tokens would mask
# the EOS logit, which the masked reference does not do), raw logits returned for every step.
GENERATE = dict(do_sample=False, output_logits=True, return_dict_in_generate=True, eos_token_id=None)


def generate(model, data: dict, steps: int, **kwargs):
    with torch.no_grad():
        return model.generate(**data, max_new_tokens=steps, **GENERATE, **kwargs)


@st.composite
def turns(draw, batch_size: int, vocab: int, max_turns: int = 2) -> tuple:
    """Further chat turns: new ids (B, M), left-padded per sample (padding mid-sequence, as a batched
    chat turn has; the turn's last token is always real), and the tokens to generate after them."""
    out = []
    for _ in range(draw(st.integers(1, max_turns))):
        new = draw(st.integers(1, 5))
        pads = draw(st.lists(st.integers(0, new - 1), min_size=batch_size, max_size=batch_size))
        mask = (torch.arange(new)[None, :] >= torch.tensor(pads)[:, None]).long()
        seed = draw(st.integers(0, 2**16))
        ids = torch.randint(3, vocab - 1, (batch_size, new), generator=torch.Generator().manual_seed(seed)) * mask
        out.append(Turn(ids, draw(st.integers(1, 4)), mask))
    return tuple(out)


def generate_turns(model, data: dict, steps: int, further: tuple):
    """generate() the prompt, then each further turn as another generate() continuing the same cache (as a
    chat does: input_ids = everything so far + the turn, the previous call's past_key_values).
    Returns (generated tokens (B, all steps), raw logits per step, last output)."""
    out = generate(model, data, steps)
    tokens, logits = [out.sequences[:, data["input_ids"].shape[1] :]], list(out.logits)
    mask, previous = data["attention_mask"], steps
    for turn in further:
        ids = torch.cat([out.sequences, turn.ids], 1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], previous), turn.mask.to(mask.dtype)], 1)
        out = generate(model, dict(input_ids=ids, attention_mask=mask, past_key_values=out.past_key_values), turn.steps)
        tokens.append(out.sequences[:, ids.shape[1] :])
        logits += list(out.logits)
        previous = turn.steps
    return torch.cat(tokens, 1), logits, out


def fed_tokens(batch_size: int, steps: int, further: tuple) -> list[list[int]]:
    """[forward][sample] real tokens each forward feeds after the prompt (forward 0 = prefill: none)."""
    per_forward = [[0] * batch_size] + [[1] * batch_size for _ in range(steps - 1)]
    for turn in further:  # the previous call's last token + the turn, in one forward; then one token each
        per_forward.append([1 + int(n) for n in turn.mask.sum(1)])
        per_forward += [[1] * batch_size for _ in range(turn.steps - 1)]
    return per_forward


# ----------------------------------------------------------------------------------------------- models
@functools.lru_cache(maxsize=48)
def model_for(spec: TinySpec | QwenSpec, seed: int):
    """Building is the expensive part of an example: one model per (spec, seed), shared by every property."""
    if isinstance(spec, QwenSpec):
        return build_qwen_model(spec, seed=seed)
    return build_model(spec, seed=seed)


@functools.lru_cache(maxsize=24)
def eager_twin(spec: TinySpec | QwenSpec, seed: int):
    """The eager-attention model with exactly the weights of `model_for(spec, seed)` (for the reference)."""
    if spec.attn == "eager":
        return model_for(spec, seed)
    twin = model_for(replace(spec, attn="eager"), seed)
    twin.load_state_dict(model_for(spec, seed).state_dict())
    return twin


@dataclass(frozen=True)
class Case:
    """A model (by spec + weight seed) and one left-padded batch of prompts for it."""

    spec: TinySpec | QwenSpec
    seed: int
    before: tuple[int, ...]  # text tokens before the first image, per sample
    after: tuple[int, ...]  # text tokens after the last image, per sample
    images: tuple[int, ...]  # images per sample
    sizes: tuple[tuple[tuple[int, int], ...], ...] | None  # LLaVA-NeXT (height, width) per image per sample
    input_seed: int
    steps: int  # new tokens to generate
    # Qwen-VL: each sample's content, ("text", n) / ("image", (h, w)) / ("video", (frames, h, w)) in order
    items: tuple | None = None
    videos: tuple[int, ...] | None = None  # videos per sample (Qwen-VL)

    @property
    def visual_items(self) -> list[int]:
        """Images and videos per sample."""
        return [i + v for i, v in zip(self.images, self.videos or [0] * self.batch_size, strict=True)]

    @property
    def batch_size(self) -> int:
        return len(self.before)

    @property
    def layers(self) -> int:
        return self.spec.layers

    def model(self):
        return model_for(self.spec, self.seed)

    def eager(self):
        return eager_twin(self.spec, self.seed)

    def inputs(self) -> dict:
        if self.items is not None:
            return make_qwen_inputs(self.spec, [list(sample) for sample in self.items], seed=self.input_seed)
        sizes = None if self.sizes is None else [list(s) for s in self.sizes]
        return make_inputs(
            self.spec,
            list(self.before),
            list(self.after),
            seed=self.input_seed,
            images=list(self.images),
            image_sizes=sizes,
        )


QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@st.composite
def specs(draw, attn: str | None = None) -> TinySpec | QwenSpec:
    family = draw(st.sampled_from(["llava", "llava_next", *QWEN]))
    heads = draw(st.sampled_from([2, 4]))
    unit = heads * 8  # head_dim a multiple of 8 (even, for RoPE)
    hidden = unit * draw(st.integers(max(1, math.ceil(32 / unit)), MAX_HIDDEN // unit))
    if family in QWEN:
        layers = draw(st.integers(2, MAX_LAYERS))
        return QwenSpec(
            family=family,
            layers=layers,
            hidden=hidden,
            heads=heads,
            kv_heads=draw(st.sampled_from([d for d in (1, 2, 4) if heads % d == 0])),
            intermediate=hidden * draw(st.sampled_from([1, 2, 3])),
            attn=attn or draw(st.sampled_from(["sdpa", "eager"])),
            # Qwen3-VL: deepstack levels added after the first one or two decoder layers
            deepstack_visual_indexes=draw(st.sampled_from([(0,), (0, 1)])),
        )
    return TinySpec(
        layers=draw(st.integers(2, MAX_LAYERS)),
        hidden=hidden,
        heads=heads,
        kv_heads=draw(st.sampled_from([d for d in (1, 2, 4) if heads % d == 0])),  # MHA and GQA
        intermediate=hidden * draw(st.sampled_from([1, 2, 3])),
        # LLaVA-1.5: grid*grid tokens per image (4..36); LLaVA-NeXT crops of grid*grid (up to 88 per image)
        grid=draw(st.integers(2, 6 if family == "llava" else 4)),
        attn=attn or draw(st.sampled_from(["sdpa", "eager"])),
        family=family,
        backbone=draw(st.sampled_from(["llama", "mistral"])),
    )


@st.composite
def image_size(draw, side: int) -> tuple[int, int]:
    """A LLaVA-NeXT image: an anyres grid of crops exactly, or any size (ragged counts after unpadding)."""
    if draw(st.booleans()):
        rows, cols = draw(st.sampled_from(((1, 1), *NEXT_GRIDS)))
        return side * rows, side * cols
    return draw(st.integers(1, 3 * side)), draw(st.integers(1, 3 * side))


@st.composite
def cases(
    draw,
    attn: str | None = None,
    min_batch: int = 1,
    max_batch: int = 4,
    min_steps: int = 1,
    max_steps: int = MAX_STEPS,
    text_only: bool = False,
) -> Case:
    spec = draw(specs(attn))
    bsz = draw(st.integers(min_batch, max_batch))
    before = draw(st.lists(st.integers(0, 10), min_size=bsz, max_size=bsz))
    # text after the last image; 0 (drawn now and then) makes a prompt end with an image placeholder
    after = draw(st.lists(st.integers(0, 10), min_size=bsz, max_size=bsz))
    if text_only:
        images = [0] * bsz
    else:
        images = draw(st.lists(st.integers(1, 2), min_size=bsz, max_size=bsz))
        if bsz > 1 and draw(st.booleans()):
            images[draw(st.integers(0, bsz - 1))] = 0  # a text-only sample inside an image batch
    sizes = items = videos = None
    if spec.family == "llava_next":
        sizes = tuple(tuple(draw(image_size(spec.side)) for _ in range(n)) for n in images)
    if isinstance(spec, QwenSpec):  # each image or video drawn as either, with its own grid
        items, counts, videos = [], [], []
        for b in range(bsz):
            sample, kinds = [("text", before[b])] if before[b] else [], []
            for i in range(images[b]):
                side = st.sampled_from([2, 4, 6, 8])  # patches; 2x2 merge: 1 to 16 tokens per frame pair
                if draw(st.booleans()):
                    sample.append(("video", (draw(st.sampled_from([2, 4])), draw(side), draw(side))))
                else:
                    sample.append(("image", (draw(side), draw(side))))
                kinds.append(sample[-1][0])
                if i < images[b] - 1:
                    sample.append(("text", 1))
            if after[b] or not sample:
                sample.append(("text", max(after[b], 1)))
            items.append(tuple(sample))
            counts.append(kinds.count("image"))
            videos.append(kinds.count("video"))
        images, items, videos = counts, tuple(items), tuple(videos)
    return Case(
        spec=spec,
        seed=draw(st.integers(0, 2)),
        before=tuple(before),
        after=tuple(after),
        images=tuple(images),
        sizes=sizes,
        input_seed=draw(st.integers(0, 2**16)),
        steps=draw(st.integers(min_steps, max_steps)),
        items=items,
        videos=videos,
    )


# ----------------------------------------------------------------------------------------------- strategies
RATIOS = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), st.floats(0.0, 1.0))
FRACTIONS = st.one_of(st.sampled_from([0.0, 0.2, 0.5, 1.0]), st.floats(0.0, 1.0))


@st.composite
def strategies(draw, layers: int, names=("fastv", "vtw", "st3")) -> tuple[str, dict]:
    """A strategy name and a full, valid parameter dict (inside the pydantic ranges, fitting `layers`)."""
    name = draw(st.sampled_from(names))
    if name == "fastv":
        return name, dict(
            k=draw(st.integers(1, layers)), ratio=draw(RATIOS), query=draw(st.sampled_from(["last", "text_mean"]))
        )
    if name == "vtw":
        return name, dict(k=draw(st.integers(0, layers)))
    return name, dict(
        start_layer=draw(st.integers(1, layers)),
        stride=draw(st.integers(1, layers)),
        ratio=draw(RATIOS),
        decay=draw(st.sampled_from(["cosine", "linear", "none"])),
        final_fraction=draw(FRACTIONS),
        horizon=draw(st.one_of(st.none(), st.integers(1, 10))),
        evict_every=draw(st.integers(1, 9)),
    )


@st.composite
def zero_removal(draw, layers: int, max_visual: int) -> tuple[str, dict]:
    """A setting that removes nothing from these prompts (`max_visual`: most visual tokens of a sample)."""
    # a ratio so small that round(n * (1 - ratio)) == n for every n <= max_visual (n * ratio < 0.5)
    tiny = st.floats(0.0, 0.49 / max(max_visual, 1))
    no_decay = st.one_of(
        st.fixed_dictionaries(dict(decay=st.sampled_from(["cosine", "linear"]), final_fraction=st.just(1.0))),
        st.fixed_dictionaries(dict(decay=st.just("none"), final_fraction=FRACTIONS)),
    )
    st3_rest = dict(
        stride=st.integers(1, layers), horizon=st.one_of(st.none(), st.integers(1, 10)), evict_every=st.integers(1, 9)
    )
    kind = draw(
        st.sampled_from(
            [
                "fastv-ratio0",
                "fastv-tiny",
                "fastv-k=layers",
                "vtw-k=layers",
                "st3-ratio0",
                "st3-tiny",
                "st3-start=layers",
            ]
        )
    )
    query = st.sampled_from(["last", "text_mean"])
    if kind.startswith("fastv"):
        k = layers if kind == "fastv-k=layers" else draw(st.integers(1, layers))
        ratio = {"fastv-ratio0": st.just(0.0), "fastv-tiny": tiny, "fastv-k=layers": RATIOS}[kind]
        return "fastv", dict(k=k, ratio=draw(ratio), query=draw(query))
    if kind == "vtw-k=layers":
        return "vtw", dict(k=layers)
    start = layers if kind == "st3-start=layers" else draw(st.integers(1, layers))
    ratio = {"st3-ratio0": st.just(0.0), "st3-tiny": tiny, "st3-start=layers": RATIOS}[kind]
    params = dict(start_layer=start, ratio=draw(ratio), **draw(no_decay), **draw(st.fixed_dictionaries(st3_rest)))
    return "st3", params


def ref_method(name: str, params: dict) -> RefMethod:
    if name == "fastv":
        return RefMethod("fastv", k=params["k"], ratio=params["ratio"], query=params["query"])
    if name == "vtw":
        return RefMethod("vtw", k=params["k"])
    return RefMethod(
        "st3",
        start_layer=params["start_layer"],
        stride=params["stride"],
        ratio=params["ratio"],
        decay=params["decay"],
        final_fraction=params["final_fraction"],
        horizon=params["horizon"],
        evict_every=params["evict_every"],
    )


# ----------------------------------------------------------------------------------------------- expectations
def prunable_mask(model, data: dict, prune_newlines: bool = False) -> torch.Tensor:
    """(B, L) tokens a strategy may remove: real image placeholders, minus LLaVA-NeXT newlines (unless the
    adapter option prune_newlines is set), minus the last prompt token (it produces the next token)."""
    mask = placeholders(model, data)
    not_newline = reference_prunable(model, data, prune_newlines)
    if not_newline is not None:
        mask &= not_newline
    mask[:, -1] = False
    return mask


def placeholders(model, data: dict) -> torch.Tensor:
    """Real image placeholders, and video placeholders where the family has them (Qwen-VL)."""
    ids = data["input_ids"]
    found = ids == model.config.image_token_id
    if getattr(model.config, "video_token_id", None) is not None:
        found |= ids == model.config.video_token_id
    return found & data["attention_mask"].bool()


def cut_layers(name: str, params: dict, layers: int) -> list[int]:
    if name in ("fastv", "vtw"):
        return [params["k"]] if params["k"] < layers else []
    return list(range(params["start_layer"], layers, params["stride"]))


def expected_prefill(name: str, params: dict, layers: int, visual: list[int]) -> list[list[int]]:
    """[layer][sample] visual tokens present in each prefill layer, from docs/methods.md's definitions."""
    cuts = set(cut_layers(name, params, layers))
    present, out = list(visual), []
    for layer in range(layers):
        if layer in cuts:
            if name == "fastv":  # one cut keeping round(N * (1 - ratio))
                present = [min(p, round(n * (1 - params["ratio"]))) for p, n in zip(present, visual, strict=True)]
            elif name == "vtw":  # everything withdrawn
                present = [0] * len(present)
            else:  # PVTP: each cut removes the fraction `ratio` of what is still present
                present = [round(p * (1 - params["ratio"])) for p in present]
        out.append(list(present))
    return out


def decay_fraction(name: str, params: dict, t: int, horizon: int) -> float:
    if name != "st3" or params["decay"] == "none":
        return 1.0
    f, x = params["final_fraction"], min(t, horizon) / horizon
    if params["decay"] == "cosine":
        return f + (1 - f) * (1 + math.cos(math.pi * x)) / 2
    return 1 - (1 - f) * x


def expected_visual_cache(name: str, params: dict, prefill: list[list[int]], steps: int, horizon: int):
    """[step][layer][sample] visual KV entries after each forward (VTA: n_l(r) = round(n_l(0) * fraction(r)) at
    the last eviction round r <= t, r a multiple of evict_every; r = 0 is the prefill)."""
    every = params.get("evict_every", 1) if name == "st3" else 1
    return [
        [[round(n0 * decay_fraction(name, params, t - t % every, horizon)) for n0 in layer] for layer in prefill]
        for t in range(steps)
    ]


def horizon_of(name: str, params: dict, max_new_tokens: int) -> int:
    return (params.get("horizon") if name == "st3" else None) or max_new_tokens


# ----------------------------------------------------------------------------------------------- comparisons
def assert_same_generation(a_logits, a_tokens, b_logits, b_tokens, pairs, atol: float = ATOL, what: str = ""):
    """Per (row of a, row of b): raw logits agree to `atol` at every step, and so do the greedy tokens.

    Greedy near-ties: two runs whose logits differ by <= atol (float summation order) may pick different
    argmaxes only when the two candidates are within 2 * atol of each other. At such a step the token
    difference is legitimate, the sequences diverge from there on, and the comparison of that row stops
    (after checking the step's logits and that it really is a near-tie). Everything before is compared.
    Returns the number of rows that stopped early at a near-tie (for `note`).
    """
    ties = 0
    for ra, rb in pairs:
        for t in range(len(a_logits)):
            x, y = a_logits[t][ra].float(), b_logits[t][rb].float()
            torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=lambda m: f"{what} row {ra}/{rb} step {t}: {m}")
            ta, tb = int(a_tokens[ra, t]), int(b_tokens[rb, t])
            if ta != tb:
                gap_a, gap_b = float(x[ta] - x[tb]), float(y[tb] - y[ta])
                assert 0 <= gap_a <= 2 * atol and 0 <= gap_b <= 2 * atol, (
                    f"{what} row {ra}/{rb} step {t}: tokens {ta} vs {tb} differ without a near-tie "
                    f"(gaps {gap_a:.3g}, {gap_b:.3g})"
                )
                ties += 1
                break
    return ties


# ----------------------------------------------------------------------------------------------- model state
HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
GLOBAL_HOOKS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
)


def hooks(model) -> dict:
    """Every hook registered on every module (and torch's global module hooks), by identity."""
    out = {name: {attr: list(getattr(m, attr, {}).items()) for attr in HOOK_DICTS} for name, m in model.named_modules()}
    module = torch.nn.modules.module
    out["<global>"] = {attr: list(getattr(module, attr, {}).items()) for attr in GLOBAL_HOOKS}
    return out


def structure(model) -> dict:
    """Module classes, modes and instance attribute names (a patched `forward` would show up here)."""
    return {name: (type(m), m.training, sorted(vars(m))) for name, m in model.named_modules()}


def tensors(model) -> dict:
    """Parameters and buffers: the objects themselves (identity) and a copy of their values."""
    out = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        out[name] = (id(t), t.data_ptr(), t.dtype, t.device, t.requires_grad, t.detach().clone())
    return out


def assert_same_tensors(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name, (ident, ptr, dtype, device, grad, value) in before.items():
        ident2, ptr2, dtype2, device2, grad2, value2 = after[name]
        assert (ident, ptr, dtype, device, grad) == (ident2, ptr2, dtype2, device2, grad2), name
        assert torch.equal(value, value2), name


def cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
