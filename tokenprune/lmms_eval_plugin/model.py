"""The `tokenprune` model of lmms-eval: any model tokenprune serves, generating under a pruning strategy.

`--model_args pretrained=DIR,strategy=st3,ratio=0.3,...` become this class's keywords (lmms-eval turns
"0.3" into a float and "true" into True). What is not a setting of this class is a parameter of the
strategy, validated by tokenprune before the model is loaded, so a bad argument fails at once, naming it.

One `generate_until` call, in the order things happen:
1. each request becomes a `Sample` (its document's images, the prompt in the model's chat template, its
   generation settings); the simple model reads them from `doc_to_visual` + the context, the chat model
   (`chat.py`) from `doc_to_messages`;
2. samples with the same settings are batched in document order (`--batch_size`), left-padded;
3. each batch is generated inside `tokenprune.prune(...)` (nothing for `strategy=none`), and, with
   `paired_baseline=true`, also without pruning, in alternating order (the time ratios are then measured
   side by side in this process);
4. each sample's text is cut at its stop strings; its record (`record.py`) travels with it to lmms-eval's
   logged samples (`token_counts[i]["tokenprune"]`);
5. at the end (`clean`, which lmms-eval calls once on every process) the records of all processes are
   gathered and their aggregate is logged once, by the main process, into the results file's `throughput`.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import tokenprune as tp

from ..errors import DataError, InvalidParameterError, UnsupportedInputError
from ..metrics import agreement
from ..models import load_model
from . import record

#: what a task's generation_kwargs may set; other keys (model-specific ones of other lmms-eval models) are ignored
GENERATION_KEYS = ("until", "max_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample")
IMAGE_TOKEN = "<image>"  # LLaVA-style tasks write it into the context; the chat template places images instead


@dataclass
class Sample:
    """One request, ready for the model."""

    task: str
    doc_id: int
    images: list
    prompt: str  # in the chat template
    generation: dict  # the task's generation_kwargs
    padding: bool = False  # a copy lmms-eval adds so that data-parallel shards have equal lengths

    @property
    def settings_key(self) -> str:
        return json.dumps(self.generation, sort_keys=True, default=str)


@dataclass
class Clock(BaseStreamer):
    """Times a `generate` call: `put` sees the prompt, then every generated token; the first token ends the
    prefill. Synchronises the device first so that GPU times are real."""

    device: torch.device
    marks: list = field(default_factory=list)

    def _mark(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append(time.perf_counter())

    def put(self, value) -> None:
        self._mark()

    def end(self) -> None:
        self._mark()

    @property
    def seconds(self) -> dict[str, float]:
        """total seconds; streamed (not beam search): prefill (prompt to first token) and decode (first token
        to the end) too."""
        total = self.marks[-1] - self.marks[0]
        if len(self.marks) < 3:  # started and ended by hand: beam search takes no streamer
            return {"total": total}
        return {"total": total, "prefill": self.marks[1] - self.marks[0], "decode": self.marks[-1] - self.marks[1]}


class StopStrings(StoppingCriteria):
    """Done for each sample once its generated text holds one of the task's stop strings. (transformers'
    `stop_strings` needs a tokenizer vocabulary of the usual shape, which small test tokenizers lack.)"""

    def __init__(self, until: list[str], prompt_length: int, decode) -> None:
        self.until, self.prompt_length, self.decode = [u for u in until if u], prompt_length, decode

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = [self.decode(row[self.prompt_length :]) for row in input_ids]
        return torch.tensor([any(u in t for u in self.until) for t in texts], device=input_ids.device)


@dataclass
class RecordedCounts(TokenCounts):
    """lmms-eval's per-sample token counts with the pruning record beside them: lmms-eval writes a sample's
    `to_dict()` into its logged sample."""

    tokenprune: dict | None = None

    def to_dict(self) -> dict:
        return {**super().to_dict(), "tokenprune": self.tokenprune}


class TokenpruneModel(lmms):
    """lmms-eval's simple model interface (`generate_until` from a context and `doc_to_visual`)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        strategy: str = "st3",
        *,
        device: str | None = None,
        dtype: str = "auto",
        attn: str = "sdpa",
        batch_size: int | str = 1,
        max_new_tokens: int = 1024,
        paired_baseline: bool = False,
        adapter_options: str | dict | None = None,
        max_batch_size: int | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator

        self.strategy = None if strategy == "none" else tp.resolve_strategy(strategy, **params)
        if self.strategy is None and params:
            raise InvalidParameterError(
                f"strategy 'none' (the unpruned baseline) takes no parameters; got {', '.join(sorted(params))}"
            )
        self.batch_size_per_gpu = _positive_int("batch_size", batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        if not isinstance(paired_baseline, bool):
            raise InvalidParameterError(f"paired_baseline must be true or false, not {paired_baseline!r}")
        self.paired_baseline = paired_baseline and self.strategy is not None
        self.adapter_options = _options(adapter_options)
        self.accelerator = Accelerator()
        if device is None or device in ("auto", "cuda"):  # one GPU per process in data-parallel runs
            device = f"cuda:{self.accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
        self.loaded = load_model(str(pretrained), dtype=dtype, device=device, attn=attn)
        if self.strategy is not None:  # does it fit this model (depth, family options)? before any request
            self._prune().strategy.check(self.loaded.num_layers)
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        self.records: list[dict] = []
        self.batches_run = 0

    # ------------------------------------------------------------------------------ lmms-eval's interface
    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def loglikelihood(self, requests) -> list:
        raise UnsupportedInputError(
            "the tokenprune model generates (generate_until tasks); loglikelihood tasks (multiple choice scored "
            "by likelihood) are not served: pruning acts on generation, and a likelihood forward is not one"
        )

    def generate_until_multi_round(self, requests) -> list:
        raise UnsupportedInputError(
            "the tokenprune model serves single-round generate_until tasks; multi-round tasks are not served yet"
        )

    def generate_until(self, requests) -> list:
        samples = [self.sample(request) for request in requests]
        results: list[GenerationResult | None] = [None] * len(samples)
        for batch in self._batches(samples):
            for index, result in zip(batch, self._generate([samples[i] for i in batch]), strict=True):
                results[index] = result
        return results

    def clean(self) -> None:
        """lmms-eval's end of the requests, on every process: gather the records, log their aggregate once."""
        records = _gathered(self.records)
        if self._rank == 0 and records:
            from lmms_eval.models.model_utils.gen_metrics import log_metrics

            records = record.unique(records)
            summary = record.aggregate(records)
            elapsed = summary["total_seconds"]
            log_metrics(
                total_elapsed_time=elapsed,
                total_gen_tokens=int(summary["new_tokens"]),
                avg_speed=summary["new_tokens"] / elapsed if elapsed > 0 else 0.0,
                additional_metrics={record.PREFIX + key: value for key, value in summary.items()},
            )
        self.records = []
        super().clean()

    # ------------------------------------------------------------------------------ requests -> samples
    def sample(self, request) -> Sample:
        context, generation, doc_to_visual, doc_id, task, split = request.args
        doc = self.task_dict[task][split][doc_id]
        images = self._images(doc_to_visual(doc) if doc_to_visual is not None else [], task, doc_id)
        text = context.replace(IMAGE_TOKEN, "").strip()
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
        prompt = self.loaded.chat_prompt([{"role": "user", "content": content}])
        return Sample(task, doc_id, images, prompt, dict(generation or {}), _is_padding(request))

    @staticmethod
    def _images(visuals, task: str, doc_id) -> list:
        visuals = [v for v in (visuals or []) if v is not None]
        if not visuals:
            raise DataError(
                f"document {doc_id} of task '{task}' gives no image; the tokenprune model evaluates visual token "
                "pruning, so every document needs one (check the task's doc_to_visual)"
            )
        images = []
        for visual in visuals:
            if isinstance(visual, Image.Image):
                images.append(visual.convert("RGB"))
            else:
                raise UnsupportedInputError(
                    f"document {doc_id} of task '{task}' gives a {type(visual).__name__} ({str(visual)[:80]!r}); "
                    "the tokenprune model serves image documents (PIL images); video and audio tasks are not "
                    "served yet"
                )
        return images

    # ------------------------------------------------------------------------------ batches
    def _batches(self, samples: list[Sample]) -> list[list[int]]:
        """Indices of samples with the same generation settings, in document order, `batch_size` at a time."""
        groups: dict[str, list[int]] = {}
        for index, sample in enumerate(samples):
            groups.setdefault(sample.settings_key, []).append(index)
        size = self.batch_size_per_gpu
        return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]

    def _prune(self):
        return tp.prune(self.model, self.strategy, adapter_options=self.adapter_options or None)

    def _generate(self, batch: list[Sample]) -> list[GenerationResult]:
        inputs = self.loaded.batch_inputs([(s.images, s.prompt) for s in batch])
        settings, until = self._settings(batch[0])
        length = inputs["input_ids"].shape[1]
        if until:  # each sample stops at its first stop string (and its text is cut there)
            settings["stopping_criteria"] = StoppingCriteriaList([StopStrings(until, length, self._text)])
        runs = {}
        self.batches_run += 1
        order = ("pruned", "baseline") if self.batches_run % 2 else ("baseline", "pruned")
        for name in order if self.paired_baseline else ("pruned",):
            runs[name] = self._run(inputs, settings, pruned=name == "pruned" and self.strategy is not None)
        tokens, seconds, report = runs["pruned"]
        visual = None if report is not None else self._visual_tokens(inputs)
        results = []
        for b, sample in enumerate(batch):
            new = _generated(tokens[b, length:], self.tokenizer)
            text = _cut(self._text(new), until).strip()
            if report is not None:
                rec = report.sample_summary(b)
            else:
                rec = record.baseline_record(int(inputs["attention_mask"][b].sum()), visual[b], self.loaded.num_layers)
            rec.update(new_tokens=len(new), seconds={k: v / len(batch) for k, v in seconds.items()})
            if self.paired_baseline:
                base_tokens, base_seconds, _ = runs["baseline"]
                rec["baseline_seconds"] = {k: v / len(batch) for k, v in base_seconds.items()}
                rec["agreement"] = agreement(new, _generated(base_tokens[b, length:], self.tokenizer))
            rec.update(task=sample.task, doc_id=sample.doc_id, process=self._rank)
            if not sample.padding:
                self.records.append(rec)
            counts = RecordedCounts(
                input_tokens=rec["prompt_tokens"], output_tokens=len(new), tokenprune=_public(rec, self.strategy)
            )
            results.append(GenerationResult(text=text, token_counts=counts))
        return results

    def _run(self, inputs: dict, settings: dict, pruned: bool):
        clock = Clock(self.device)
        streamed = settings["num_beams"] == 1  # transformers' beam search takes no streamer
        if not streamed:
            clock.put(None)
        report = None
        with torch.inference_mode():
            if pruned:
                with self._prune() as run:
                    out = self.model.generate(**inputs, **settings, streamer=clock if streamed else None)
                report = run.report
            else:
                out = self.model.generate(**inputs, **settings, streamer=clock if streamed else None)
        if not streamed:
            clock.end()
        return out, clock.seconds, report

    def _settings(self, sample: Sample) -> tuple[dict, list[str]]:
        """`generate` keywords and stop strings from a task's generation_kwargs (greedy unless it asks to sample)."""
        g = sample.generation
        ignored = sorted(set(g) - set(GENERATION_KEYS))
        if ignored:
            warnings.warn(f"task '{sample.task}': generation_kwargs {ignored} are not used by the tokenprune model")
        until = g.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        if not all(isinstance(u, str) for u in until):
            raise DataError(f"task '{sample.task}': generation_kwargs 'until' must be strings, got {until!r}")
        temperature = float(g.get("temperature") or 0)
        sample_tokens = bool(g.get("do_sample", temperature > 0))
        settings = {
            "max_new_tokens": _positive_int("max_new_tokens", g.get("max_new_tokens", self.max_new_tokens)),
            "num_beams": _positive_int("num_beams", g.get("num_beams") or 1),
            "do_sample": sample_tokens,
            "temperature": temperature if sample_tokens else None,
            "top_p": g.get("top_p") if sample_tokens else None,
            "top_k": g.get("top_k") if sample_tokens else None,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        return settings, until

    def _text(self, token_ids) -> str:
        """Generated text as it is, whitespace kept (a stop string may be whitespace), special tokens skipped."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _visual_tokens(self, inputs: dict) -> list[int]:
        """Prunable visual tokens of each sample, as the adapter finds them (what a pruned run's report counts)."""
        found = tp.resolve_adapter(self.model).visual_tokens(self.model, inputs)
        return [0] * inputs["input_ids"].shape[0] if found is None else found.prunable.sum(1).tolist()


def _gathered(records: list[dict]) -> list[dict]:
    """Every process's records, on every process (torch.distributed, which lmms-eval's own gathering uses too;
    accelerate's helpers see no distributed run on CPU processes)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records
    shards = [None] * dist.get_world_size()
    dist.all_gather_object(shards, records)
    return [r for shard in shards for r in shard]


def _generated(row: torch.Tensor, tokenizer) -> list[int]:
    """The generated tokens of one sample, without the padding after its end."""
    tokens = row.tolist()
    pad = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )  # what generate pads with
    while tokens and pad is not None and tokens[-1] == pad:
        tokens.pop()
    return tokens


def _cut(text: str, until: list[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def _public(rec: dict, strategy) -> dict:
    out = {k: v for k, v in rec.items() if k not in ("task", "doc_id")}
    out["strategy"] = strategy.describe() if strategy is not None else {"name": "none"}
    return out


def _is_padding(request) -> bool:
    return bool((getattr(request, "metadata", None) or {}).get("__padding_only__"))


def _positive_int(name: str, value) -> int:
    if isinstance(value, str) and value.isdigit():  # lmms-eval's --batch_size arrives as text
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, not {value!r}")
    return value


def _options(value) -> dict:
    """adapter_options as JSON (`adapter_options='{"prune": "images"}'` in --model_args) or a dict."""
    if value is None or isinstance(value, dict):
        return value or {}
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidParameterError(f"adapter_options must be a JSON object, not {value!r}")
    return parsed
