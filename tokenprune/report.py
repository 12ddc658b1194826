"""What a pruned run kept, and what that saves: token counts, FLOPs and KV bytes vs the unpruned baseline.

Counts are recorded while the model runs without a host sync per layer (from the engine's and the
cache's host counters) and turned into lists when read. FLOPs count the language model only (the vision
tower is not pruned) and only real tokens (padding and filler are excluded from baseline and pruned
alike). Per decoder layer and sample with n tokens computed and, when decoding, kv cached entries attended:
  linear = 2 n (D*H*Dh [q] + 2*D*Hkv*Dh [k, v] + H*Dh*D [o] + 3*D*F [SwiGLU])
  attention = 4 H Dh * n(n+1)/2 in prefill (causal QK^T and AV), 4 H Dh * kv per decode token, where kv
  counts the entries a token sees (a multi-token continuation, e.g. a new chat turn, is causal among itself)
plus 2*D*V per logit row of lm_head, plus the attention rows tokenprune computes for scoring (counted on
the pruned side only: honest overhead, so a setting that removes almost nothing can show a ratio just
above 1; settings that remove nothing do no scoring and give exactly 1).
The FastV paper's formula 4nd^2 + 2n^2 d + 2ndm per layer is given for prefill, for comparison with tables.
KV bytes: `total` is what the cache tensors hold (padding and filler included), `visual` the entries of
visual tokens; both per step from 0 (right after prefill), peak and mean over the generation.
A decay evicts in rounds (its `evict_every`) and evicted entries leave the tensors at once, so at batch 1 the
entries a token sees are the entries the kernel computes over; a round's scoring (every window query against
every held key of every scored layer) is counted with the decode step that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backbones import DecoderShape
from .ratios import ratio


@dataclass
class Report:
    strategy: dict
    arch: DecoderShape | None = None  # the sizes that price the language model (its backbone's shape)
    prompt_tokens: list[int] = field(default_factory=list)  # real tokens per sample
    visual_tokens: list[int] = field(default_factory=list)  # N_b per sample (prunable visual tokens)
    images: list[int] = field(default_factory=list)  # images per sample
    videos: list[int] = field(default_factory=list)  # videos per sample
    padded_length: int = 0
    horizon: int | None = None
    kv_dtype_bytes: int = 0
    logit_rows: dict = field(default_factory=lambda: {"prefill": 0, "decode": 0})
    scoring_flops: dict = field(default_factory=lambda: {"prefill": 0, "decode": 0})
    _prefill_tokens: dict = field(default_factory=dict)  # layer -> host (B,) real tokens it computed
    _prefill_visual: dict = field(default_factory=dict)  # layer -> host (B,) visual tokens among them
    # per step: (visual (Lyr,B), entries (Lyr,B), physical (Lyr,), real new tokens (B,), new columns); step 0
    # is the prefill, with (None, 0) for the new tokens
    _steps: list = field(default_factory=list)
    _cuts: dict = field(default_factory=dict)
    # step -> (real tokens removed per sample (host (B,)), columns removed, real entries after (host (Lyr, B))):
    # a crop right after that step (assisted / prompt-lookup decoding rejecting candidates)
    _crops: dict = field(default_factory=dict)
    _image_of: torch.Tensor | None = None  # (B, L) image of each prunable visual token of the prompt, -1 elsewhere
    _video_of: torch.Tensor | None = None  # (B, L) video of each prunable visual token of the prompt, -1 elsewhere

    # ------------------------------------------------------------------------------------ recording
    @classmethod
    def empty(cls, strategy: dict) -> "Report":
        return cls(strategy=strategy)

    @classmethod
    def start(
        cls,
        strategy: dict,
        shape: DecoderShape,
        valid: torch.Tensor,
        visual: torch.Tensor,
        image_of: torch.Tensor,
        video_of: torch.Tensor | None,
        dtype,
        horizon,
    ) -> "Report":
        bsz = valid.shape[0]
        return cls(
            strategy=strategy,
            arch=shape,
            prompt_tokens=valid.sum(1).tolist(),
            visual_tokens=visual.sum(1).tolist(),
            images=(image_of.max(1).values + 1).tolist(),
            videos=[0] * bsz if video_of is None else (video_of.max(1).values + 1).tolist(),
            padded_length=valid.shape[1],
            horizon=horizon,
            kv_dtype_bytes=torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 1,
            _image_of=torch.where(visual, image_of, -1),
            _video_of=None if video_of is None else torch.where(visual, video_of, -1),
        )

    def record_prefill_layer(self, layer: int, tokens: torch.Tensor, visual: torch.Tensor) -> None:
        """A prefill layer computed `tokens` real tokens per sample (host, (B,)), `visual` of them visual."""
        self._prefill_tokens[layer] = tokens
        self._prefill_visual[layer] = visual

    def record_cut(self, layer: int, source: torch.Tensor, visual: torch.Tensor) -> None:
        """From cut layer `layer` on, the prefill holds the prompt tokens `source` (B, L'), `visual` of them visual."""
        self._cuts[layer] = (source, visual)

    def add_scoring_flops(self, phase: str, flops: int) -> None:
        """Attention rows tokenprune computed for scoring ("prefill" or "decode")."""
        self.scoring_flops[phase] += flops

    def add_logit_rows(self, phase: str, rows: int) -> None:
        """The head computed `rows` logit rows in a "prefill" or "decode" forward."""
        self.logit_rows[phase] += rows

    def record_cache(self, cache, new_tokens: torch.Tensor | None = None, new_columns: int = 0) -> None:
        """Cache state after a forward, from the cache's host counts; a decode forward added `new_columns`
        columns holding `new_tokens` (host, (B,)) real tokens. The cache replaces its count tensors rather
        than changing them, so they are kept as they are."""
        self._steps.append(
            (
                cache.visual_count,
                cache.entry_count,
                torch.tensor([layer.keys.shape[2] for layer in cache.layers]),
                new_tokens,
                new_columns,
            )
        )

    def record_crop(self, cache, removed: torch.Tensor, columns: int) -> None:
        """The cache dropped its last `columns` tokens (`removed` real ones per sample) after the latest step:
        the unpruned baseline would have dropped them too."""
        step = len(self._steps) - 1
        earlier = self._crops.get(step)
        if earlier is not None:  # two crops after one step add up
            removed, columns = earlier[0] + removed, earlier[1] + columns
        self._crops[step] = (removed, columns, cache.entry_count)

    def _removed_after(self, step: int) -> tuple[list[int], int]:
        """Real tokens per sample and columns cropped right after `step` (none: zeros)."""
        crop = self._crops.get(step)
        return ([0] * self.batch_size, 0) if crop is None else (crop[0].tolist(), crop[1])

    # ------------------------------------------------------------------------------------ counts
    @property
    def batch_size(self) -> int:
        return len(self.prompt_tokens)

    @property
    def prefill_visual_tokens(self) -> list[list[int]]:
        """[layer][sample] visual tokens present in each prefill layer."""
        return [self._prefill_visual[i].tolist() for i in sorted(self._prefill_visual)]

    @property
    def prefill_tokens(self) -> list[list[int]]:
        """[layer][sample] real tokens computed by each prefill layer."""
        return [self._prefill_tokens[i].tolist() for i in sorted(self._prefill_tokens)]

    @property
    def equivalent_visual_tokens(self) -> list[float]:
        """[sample] visual tokens summed over the prefill layers / the number of layers: the papers' "equivalent
        visual tokens" (FastV k=2 ratio=0.5 on 32 layers, N=576: (2*576 + 30*288) / 32 = 306; unpruned: N)."""
        layers = [self._prefill_visual[i] for i in sorted(self._prefill_visual)]
        if not layers:
            return []
        return [float(n) / len(layers) for n in torch.stack(layers).sum(0).tolist()]

    @property
    def kept_visual(self) -> dict[int, list[list[int]]]:
        """cut layer -> [sample] -> prompt indices of the visual tokens kept from that layer on."""
        out = {}
        for layer, (source, visual) in sorted(self._cuts.items()):
            out[layer] = [src[vis].tolist() for src, vis in zip(source, visual, strict=True)]
        return out

    @staticmethod
    def _counts(item_of: torch.Tensor, items: list[int]) -> list[list[int]]:
        return [[int((row == i).sum()) for i in range(n)] for row, n in zip(item_of, items, strict=True)]

    def _kept_per_item(self, item_of: torch.Tensor | None, items: list[int]) -> dict[int, list[list[int]]]:
        out = {}
        for layer, (source, visual) in sorted(self._cuts.items()):
            if item_of is None:  # a family without this kind of item (videos in LLaVA)
                out[layer] = [[] for _ in items]
                continue
            out[layer] = self._counts(torch.where(visual, item_of.to(source.device).gather(1, source), -1), items)
        return out

    @property
    def visual_tokens_per_image(self) -> list[list[int]]:
        """[sample][image] prunable visual tokens of each image of each sample."""
        return [] if self._image_of is None else self._counts(self._image_of, self.images)

    @property
    def visual_tokens_per_video(self) -> list[list[int]]:
        """[sample][video] prunable visual tokens of each video of each sample."""
        if self._video_of is None:  # no sample has videos (or no prefill yet)
            return [[] for _ in self.videos]
        return self._counts(self._video_of, self.videos)

    @property
    def kept_visual_per_image(self) -> dict[int, list[list[int]]]:
        """cut layer -> [sample][image] visual tokens of each image kept from that layer on."""
        return self._kept_per_item(self._image_of, self.images)

    @property
    def kept_visual_per_video(self) -> dict[int, list[list[int]]]:
        """cut layer -> [sample][video] visual tokens of each video kept from that layer on."""
        return self._kept_per_item(self._video_of, self.videos)

    @property
    def decode_steps(self) -> int:
        return max(0, len(self._steps) - 1)

    @property
    def visual_cache_entries(self) -> list[list[list[int]]]:
        """[step][layer][sample] visual KV entries, step 0 = right after prefill."""
        return [step[0].tolist() for step in self._steps]

    @property
    def cache_entries_per_step(self) -> list[list[list[int]]]:
        """[step][layer][sample] real KV entries (text + generated + visual) attended at each step."""
        return [step[1].tolist() for step in self._steps]

    @property
    def cache_entries(self) -> list[list[int]]:
        """[layer][sample] real KV entries held at the end (after a last crop, if any)."""
        if not self._steps:
            return []
        crop = self._crops.get(len(self._steps) - 1)
        return (self._steps[-1][1] if crop is None else crop[2]).tolist()

    # ------------------------------------------------------------------------------------ FLOPs
    def _decode_flops(self, queries: int, entries: int) -> int:
        """One layer's FLOPs for `queries` new tokens, the last of `entries` held (causal among themselves)."""
        a = self.arch
        attention = queries * (entries - queries) + queries * (queries + 1) // 2
        return queries * a.linear_flops_per_token() + a.attention_flops_per_pair() * attention

    def flops(self) -> dict:
        if self.arch is None:
            return {}
        a = self.arch
        lm_head = a.lm_head_flops_per_row()
        layers = self.prefill_tokens
        prefill = sum(a.prefill_layer_flops(n) for per_layer in layers for n in per_layer)
        prefill += self.logit_rows["prefill"] * lm_head + self.scoring_flops["prefill"]
        baseline_prefill = a.layers * sum(a.prefill_layer_flops(n) for n in self.prompt_tokens)
        baseline_prefill += self.logit_rows["prefill"] * lm_head
        decode_flops = self._decode_flops
        decode = baseline_decode = 0
        seen = list(self.prompt_tokens)  # real tokens of each sample an unpruned cache would hold
        for step, (_, entries, _, queries, _) in enumerate(self._steps[1:], start=1):
            seen = [s - r for s, r in zip(seen, self._removed_after(step - 1)[0], strict=True)]
            queries = queries.tolist()
            for per_layer in entries.tolist():
                decode += sum(decode_flops(q, e) for q, e in zip(queries, per_layer, strict=True))
            seen = [s + q for s, q in zip(seen, queries, strict=True)]
            baseline_decode += a.layers * sum(decode_flops(q, s) for q, s in zip(queries, seen, strict=True))
        decode += self.logit_rows["decode"] * lm_head + self.scoring_flops["decode"]
        baseline_decode += self.logit_rows["decode"] * lm_head
        fastv = sum(a.fastv_formula(n) for per_layer in layers for n in per_layer)
        fastv_base = a.layers * sum(a.fastv_formula(n) for n in self.prompt_tokens)
        return {
            "prefill": prefill,
            "decode": decode,
            "baseline_prefill": baseline_prefill,
            "baseline_decode": baseline_decode,
            "prefill_ratio": ratio(prefill, baseline_prefill),
            "decode_ratio": ratio(decode, baseline_decode),
            "total_ratio": ratio(prefill + decode, baseline_prefill + baseline_decode),
            "scoring_prefill": self.scoring_flops["prefill"],
            "scoring_decode": self.scoring_flops["decode"],
            "fastv_formula": {
                "prefill": fastv,
                "baseline_prefill": fastv_base,
                "prefill_ratio": ratio(fastv, fastv_base),
            },
        }

    # ------------------------------------------------------------------------------------ KV bytes
    def kv_bytes(self) -> dict:
        if not self._steps:
            return {}
        a = self.arch
        per_entry = a.kv_values_per_entry() * self.kv_dtype_bytes
        bsz = self.batch_size
        total, visual, base_total, base_visual = [], [], [], []
        columns = self.padded_length  # what an unpruned cache holds per sample, padding included
        for step, (vis, _, physical, _, new_columns) in enumerate(self._steps):
            columns += new_columns - (self._removed_after(step - 1)[1] if step else 0)
            total.append(int(physical.sum()) * bsz * per_entry)
            visual.append(int(vis.sum()) * per_entry)
            base_total.append(a.layers * bsz * columns * per_entry)
            base_visual.append(a.layers * sum(self.visual_tokens) * per_entry)

        def summary(values, baseline):
            peak, mean = max(values), sum(values) / len(values)
            base_peak, base_mean = max(baseline), sum(baseline) / len(baseline)
            return {
                "peak": peak,
                "mean": mean,
                "baseline_peak": base_peak,
                "baseline_mean": base_mean,
                "peak_ratio": ratio(peak, base_peak),
                "mean_ratio": ratio(mean, base_mean),
                "per_step": values,
            }

        return {"total": summary(total, base_total), "visual": summary(visual, base_visual)}

    # ------------------------------------------------------------------------------------ one sample
    def sample_summary(self, b: int) -> dict:
        """What sample `b` of the batch kept and what that saved, vs the same sample unpruned: its tokens, FLOPs
        and KV entries (its own real tokens, so a sample's summary does not depend on the samples padded beside
        it). The batch's logit rows and scoring FLOPs are shared equally among its samples, so the summaries of
        a batch add up to `flops()`; KV entries are means over the steps (0 = right after prefill), as
        `kv_bytes()`'s means, counted in entries rather than bytes."""
        if not 0 <= b < self.batch_size:
            raise IndexError(f"sample {b} of a report of {self.batch_size} sample(s)")
        a, share = self.arch, 1 / self.batch_size
        tokens = [layer[b] for layer in self.prefill_tokens]
        lm_head = a.lm_head_flops_per_row()
        prefill = sum(a.prefill_layer_flops(n) for n in tokens)
        prefill += share * (self.logit_rows["prefill"] * lm_head + self.scoring_flops["prefill"])
        baseline_prefill = a.layers * a.prefill_layer_flops(self.prompt_tokens[b])
        baseline_prefill += share * self.logit_rows["prefill"] * lm_head
        decode_flops = self._decode_flops
        decode = share * (self.logit_rows["decode"] * lm_head + self.scoring_flops["decode"])
        baseline_decode = share * self.logit_rows["decode"] * lm_head
        seen = self.prompt_tokens[b]
        visual, total, base_total = [], [], []
        for step, (vis, entries, _, queries, _) in enumerate(self._steps):
            entries_b = entries[:, b].tolist()
            if step:
                seen -= self._removed_after(step - 1)[0][b]
                q = int(queries[b])
                decode += sum(decode_flops(q, e) for e in entries_b)
                seen += q
                baseline_decode += a.layers * decode_flops(q, seen)
            visual.append(int(vis[:, b].sum()))
            total.append(sum(entries_b))
            base_total.append(a.layers * seen)
        base_visual = a.layers * self.visual_tokens[b]

        def mean(values: list) -> float:
            return sum(values) / len(values) if values else 0.0

        kv = {
            "visual": {"mean": mean(visual), "baseline_mean": float(base_visual)},
            "total": {"mean": mean(total), "baseline_mean": mean(base_total)},
        }
        return {
            "prompt_tokens": self.prompt_tokens[b],
            "visual_tokens": self.visual_tokens[b],
            "visual_tokens_per_layer": [layer[b] for layer in self.prefill_visual_tokens],
            "equivalent_visual_tokens": self.equivalent_visual_tokens[b],
            "decode_steps": self.decode_steps,
            "flops": {
                "prefill": prefill,
                "decode": decode,
                "baseline_prefill": baseline_prefill,
                "baseline_decode": baseline_decode,
            },
            "prefill_flops_ratio": ratio(prefill, baseline_prefill),
            "total_flops_ratio": ratio(prefill + decode, baseline_prefill + baseline_decode),
            "kv_entries": kv,
            "visual_kv_ratio": ratio(kv["visual"]["mean"], kv["visual"]["baseline_mean"]),
            "total_kv_ratio": ratio(kv["total"]["mean"], kv["total"]["baseline_mean"]),
        }

    # ------------------------------------------------------------------------------------ export
    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "batch_size": self.batch_size,
            "prompt_tokens": self.prompt_tokens,
            "visual_tokens": self.visual_tokens,
            "images": self.images,
            "visual_tokens_per_image": self.visual_tokens_per_image,
            "videos": self.videos,
            "visual_tokens_per_video": self.visual_tokens_per_video,
            "horizon": self.horizon,
            "decode_steps": self.decode_steps,
            "prefill_visual_tokens": self.prefill_visual_tokens,
            "prefill_tokens": self.prefill_tokens,
            "equivalent_visual_tokens": self.equivalent_visual_tokens,
            "kept_visual_positions": {str(k): v for k, v in self.kept_visual.items()},
            "kept_visual_per_image": {str(k): v for k, v in self.kept_visual_per_image.items()},
            "kept_visual_per_video": {str(k): v for k, v in self.kept_visual_per_video.items()},
            "cache_entries": self.cache_entries,
            "visual_cache_entries": self.visual_cache_entries,
            "flops": self.flops(),
            "kv_bytes": self.kv_bytes(),
        }
