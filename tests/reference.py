"""An independent reference of the methods: keep every token, hide removed ones with explicit per-layer masks.

Nothing here uses tokenprune's engine, cache or score code. The reference runs the unmodified model with
*eager* attention and a plain DynamicCache, reads the attention weights that eager attention returns,
re-derives the kept sets from the method definitions in docs/methods.md, and hides removed visual tokens from
each layer through its own 4D additive mask. Outputs of the kept tokens must then equal the pruned
run's (which physically drops tokens) up to float summation order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache


@dataclass
class RefMethod:
    """Method definitions, re-written from docs/methods.md (not imported from tokenprune)."""

    kind: str  # "fastv" | "vtw" | "st3"
    k: int = 2
    ratio: float = 0.5
    query: str = "last"
    start_layer: int = 2
    stride: int = 2
    decay: str = "none"
    final_fraction: float = 1.0
    horizon: int | None = None
    evict_every: int = 1  # eviction rounds: layers evict down to the decay's count at steps t % evict_every == 0

    def cuts(self, num_layers: int) -> list[int]:
        if self.kind in ("fastv", "vtw"):
            return [self.k] if self.k < num_layers else []
        return list(range(self.start_layer, num_layers, self.stride))

    def keep(self, present: int, total: int) -> int:
        if self.kind == "fastv":
            return min(present, round(total * (1 - self.ratio)))
        if self.kind == "vtw":
            return 0
        return round(present * (1 - self.ratio))

    def fraction(self, t: int, horizon: int) -> float:
        f = self.final_fraction
        if self.decay == "cosine":
            return f + (1 - f) * (1 + math.cos(math.pi * min(t, horizon) / horizon)) / 2
        if self.decay == "linear":
            return 1 - (1 - f) * min(t, horizon) / horizon
        return 1.0


@dataclass
class Turn:
    """A further chat turn: `ids` (B, M) appended after the tokens generated so far, then `steps` tokens."""

    ids: torch.Tensor
    steps: int
    mask: torch.Tensor | None = None  # (B, M) padding of the new turn (None: all real)


@dataclass
class RefResult:
    logits: list[torch.Tensor]  # per generated token: (B, V) raw logits
    tokens: torch.Tensor  # (B, steps), all turns' generated tokens in order
    kept: dict[int, list[list[int]]]  # cut layer -> sample -> kept visual prompt indices
    visual_per_step: list[list[list[int]]] = field(default_factory=list)  # step -> layer -> sample
    # with record=True: step -> layer -> (B, H, Q, K) eager attention weights over the full sequence
    attentions: list[list[torch.Tensor]] = field(default_factory=list)
    layer_inputs: list[torch.Tensor] = field(default_factory=list)  # prefill: layer -> (B, L, D) its input
    layer_outputs: list[torch.Tensor] = field(default_factory=list)  # prefill: layer -> (B, L, D) its output
    present: list[torch.Tensor] = field(default_factory=list)  # prefill: layer -> (B, L) visual tokens present
    visual: torch.Tensor | None = None  # (B, L) the prunable visual tokens


def _placeholders(model, ids: torch.Tensor) -> torch.Tensor:
    """Image placeholders, and video placeholders for families that have them (Qwen-VL)."""
    found = ids == model.config.image_token_id
    video = getattr(model.config, "video_token_id", None)
    return found | (ids == video) if video is not None else found


def _prompt_positions(model, inputs: dict, am: torch.Tensor):
    """Position ids of the prompt as generate() passes them, and the model's rope deltas (None for 1D RoPE).

    Multimodal RoPE (Qwen-VL): the sequence row (attention_mask cumsum) stacked on the model's own
    `get_rope_index` rows, as generate() builds them; decode steps then continue every row by one.
    """
    text = (am.long().cumsum(-1) - 1).masked_fill(~am, 0)
    rope_index = getattr(model.model, "get_rope_index", None)
    if rope_index is None:
        return text, None
    keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")
    rope, deltas = rope_index(
        inputs["input_ids"], attention_mask=inputs["attention_mask"], **{k: inputs[k] for k in keys if k in inputs}
    )
    return torch.cat([text[None], rope], 0), deltas


def _topk_mask(scores: torch.Tensor, candidates: torch.Tensor, keep: int) -> torch.Tensor:
    """Mask of the `keep` best candidates; ties go to the earlier position."""
    out = torch.zeros_like(candidates)
    idx = candidates.nonzero().flatten().tolist()
    ranked = sorted(idx, key=lambda j: (-float(scores[j]), j))
    out[ranked[:keep]] = True
    return out


@torch.no_grad()
def reference_generate(
    model,
    inputs: dict,
    method: RefMethod,
    steps: int,
    prunable: torch.Tensor | None = None,
    turns: tuple = (),
    record: bool = False,
) -> RefResult:
    """Greedy generation of `steps` tokens under the masked reference (model must use eager attention).

    `prunable` (B, L) limits the removable tokens (default: every image placeholder). Each of `turns`
    continues the same cache: the last generated token and the turn's ids run as one causal chunk, as a
    second generate() call does, then `turn.steps - 1` more tokens. `record`: keep every layer's attention
    weights of every step and the prefill's layer inputs.
    """
    assert model.config.text_config._attn_implementation == "eager"
    lm = model.model.language_model
    layers = list(lm.layers)
    n_layers = len(layers)
    ids, am = inputs["input_ids"], inputs["attention_mask"].bool()
    bsz, length = ids.shape
    # each sample's last real token (the last column under left padding; padding follows it under right padding)
    last_real = [int(am[b].nonzero().max()) for b in range(bsz)]
    visual = _placeholders(model, ids) & am
    if prunable is not None:
        visual &= prunable
    for b in range(bsz):
        visual[b, last_real[b]] = False  # never removed
    total = visual.sum(1).tolist()
    cuts = method.cuts(n_layers)
    present = visual.clone()  # visual tokens still present at the current layer (prefill)
    per_layer_present: list[torch.Tensor] = []
    weights: dict[int, torch.Tensor] = {}
    kept: dict[int, list[list[int]]] = {}
    phase = {"t": 0}
    seq_valid = am.clone()  # grows by one column per generated token
    eviction_scores: list[torch.Tensor] = []
    attentions: list[list[torch.Tensor]] = []
    layer_inputs: list[torch.Tensor] = []
    layer_outputs: list[torch.Tensor] = []

    def layer_post(module, args, output):
        if record and phase["t"] == 0:
            layer_outputs.append((output[0] if isinstance(output, tuple) else output).clone())

    initial: list[torch.Tensor] = []
    dtype = next(model.parameters()).dtype
    minimum = torch.finfo(dtype).min
    horizon = method.horizon or steps

    def text_rows(b: int) -> list[int]:
        image = _placeholders(model, ids[b]) & am[b]
        image[last_real[b]] = False  # the last real token is text
        vis = image.nonzero().flatten()
        end = int(vis.max()) if len(vis) else -1
        return [j for j in range(length) if am[b, j] and not visual[b, j] and j > end]

    def layer_pre(i):
        def hook(module, args, kwargs):
            nonlocal present
            t = phase["t"]
            if t == 0:
                if i in cuts:
                    new = present.clone()
                    for b in range(bsz):
                        n_keep = method.keep(int(present[b].sum()), total[b])
                        if n_keep >= int(present[b].sum()):
                            continue
                        if n_keep == 0:
                            new[b] = False
                            continue
                        w = weights[i - 1][b]  # (H, Q, K) eager weights of the previous layer
                        rows = [length - 1] if method.query == "last" else text_rows(b)
                        score = w[:, rows, :].mean(0).mean(0)
                        new[b] = _topk_mask(score, present[b], n_keep)
                    present = new
                    kept[i] = [present[b].nonzero().flatten().tolist() for b in range(bsz)]
                per_layer_present.append(present.clone())
                if record:
                    layer_inputs.append((args[0] if args else kwargs["hidden_states"]).clone())
                hidden = ~visual | present
                allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & (am & hidden)[:, None, :]
                # as transformers' mask: padding queries see the real keys before them; rows without any see
                # themselves, so none is empty
                empty = ~allowed.any(-1, keepdim=True)
                allowed = allowed | (torch.eye(length, dtype=torch.bool)[None] & empty)
            else:
                layer_present = per_layer_present[i]
                if method.decay != "none" and t % method.evict_every == 0:
                    target = [round(int(initial[i][b]) * method.fraction(t, horizon)) for b in range(bsz)]
                    for b in range(bsz):
                        if int(layer_present[b].sum()) > target[b]:
                            layer_present[b] = _topk_mask(eviction_scores[i][b, :length], layer_present[b], target[b])
                keys = seq_valid.shape[1]
                chunk = phase["chunk"]
                hidden = torch.cat([~visual | layer_present, torch.ones(bsz, keys - length, dtype=torch.bool)], 1)
                causal = torch.ones(chunk, keys, dtype=torch.bool).tril(keys - chunk)
                own = torch.zeros(chunk, keys, dtype=torch.bool)
                own[:, keys - chunk :] = torch.eye(chunk, dtype=torch.bool)
                allowed = (seq_valid & hidden)[:, None, :] & causal[None]
                allowed = allowed | (own[None] & ~allowed.any(-1, keepdim=True))  # rows without a key see themselves
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, minimum)[:, None]
            return args, {**kwargs, "attention_mask": mask}

        return hook

    def attn_post(i):
        def hook(module, args, output):
            w = output[1]  # eager attention weights (B, H, Q, K)
            t = phase["t"]
            if record:
                if i == 0:
                    attentions.append([])
                attentions[-1].append(w.clone())
            if t == 0:
                weights[i] = w.float()
                eviction_scores.append(w[:, :, -1, :].float().mean(1))
            else:
                grown = torch.zeros(bsz, w.shape[-1])
                grown[:, : eviction_scores[i].shape[1]] = eviction_scores[i]
                eviction_scores[i] = grown + w[:, :, -1, :].float().mean(1)

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(layer_pre(i), with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(attn_post(i)))
        handles.append(layer.register_forward_hook(layer_post))
    try:
        cache = DynamicCache()
        positions, rope_deltas = _prompt_positions(model, inputs, am)
        out = model(**inputs, past_key_values=cache, position_ids=positions, use_cache=True)
        initial = [p.sum(1) for p in per_layer_present]
        prefill_present = [p.clone() for p in per_layer_present]  # the decay then evicts from these in place
        logits = [out.logits[:, -1].float()]
        tokens = [logits[-1].argmax(-1)]
        visual_steps = [[p.sum(1).tolist() for p in per_layer_present]]
        next_pos = positions[..., -1] + 1  # (B,) position of the next real token (per row for multimodal RoPE)
        schedule = [(None, None)] * (steps - 1)  # one forward per step: (extra ids, their mask)
        for turn in turns:
            schedule += [(turn.ids, turn.mask)] + [(None, None)] * (turn.steps - 1)
        for t, (extra, extra_mask) in enumerate(schedule, start=1):
            phase["t"] = t
            chunk_ids = tokens[-1][:, None]
            chunk_valid = torch.ones(bsz, 1, dtype=torch.bool)
            if extra is not None:
                chunk_ids = torch.cat([chunk_ids, extra], 1)
                extra_valid = torch.ones_like(extra, dtype=torch.bool) if extra_mask is None else extra_mask.bool()
                chunk_valid = torch.cat([chunk_valid, extra_valid], 1)
            phase["chunk"] = chunk_ids.shape[1]
            seq_valid = torch.cat([seq_valid, chunk_valid], 1)
            if rope_deltas is None:
                chunk_pos = next_pos[:, None] + chunk_valid.long().cumsum(1) - 1
                next_pos = next_pos + chunk_valid.sum(1)
            elif extra is None:  # generate() continues every row of the previous call's positions by one
                chunk_pos = next_pos[..., None]
                next_pos = next_pos + 1
            else:  # a new generate() call: the sequence positions of the whole conversation plus the rope deltas
                text = (seq_valid.long().cumsum(-1) - 1).masked_fill(~seq_valid, 0)
                chunk_pos = (text[:, -chunk_ids.shape[1] :] + rope_deltas)[None]
                next_pos = chunk_pos[..., -1] + 1
            out = model(
                input_ids=chunk_ids,
                attention_mask=seq_valid.long(),
                position_ids=chunk_pos,
                past_key_values=cache,
                use_cache=True,
            )
            logits.append(out.logits[:, -1].float())
            tokens.append(logits[-1].argmax(-1))
            visual_steps.append([p.sum(1).tolist() for p in per_layer_present])
    finally:
        for h in handles:
            h.remove()
    return RefResult(
        logits=logits,
        tokens=torch.stack(tokens, 1),
        kept=kept,
        visual_per_step=visual_steps,
        attentions=attentions,
        layer_inputs=layer_inputs,
        layer_outputs=layer_outputs,
        present=prefill_present,
        visual=visual,
    )
