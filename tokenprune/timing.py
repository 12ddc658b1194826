"""Side-by-side latency measurement: every method against the unpruned baseline, in one process.

Rules (shared by the demo and the benchmarks):
- same inputs for every method, one warm-up run of each before anything is timed;
- interleaved repeats (baseline, A, B, ..., baseline, A, B, ...) so drift (thermal, caches, other
  processes) hits all methods alike; the median over repeats is reported;
- one generate call per repeat, timed token by token through a `StoppingCriteria` clock (called by
  generate after every new token): TTFT = start -> first token (prefill + first token), decode per
  token = first -> last token / (n - 1), end-to-end = the whole call. No subtraction of separately timed
  runs, so noise can never make a decode time negative;
- results are always shown as ratios to the baseline measured here. On CPU, absolute times of small
  models mean little (Python overhead dominates); the ratios are what to read.

`machine(device)` describes what the timings ran on, for every results file that holds timings.

`measure` is generic: it takes (name, context-manager factory) pairs and a callable that runs one
generation, so it times anything that can be switched on with a `with` block.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .ratios import ratio

#: decode steps per block of `Timing.decode_per_token_blocks` (a multiple of ST3's default eviction round)
BLOCK = 16

#: a method to time: its display name and a factory of the context manager that switches it on
Method = tuple[str, Callable[[], ContextManager[Any]]]


class TokenClock(StoppingCriteria):
    """Records the time at which generate() produced each new token; never stops generation."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.sync()
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass
class Timing:
    """Raw timings of one method, one entry per repeat (seconds)."""

    name: str
    new_tokens: int
    ttft_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)  # per token
    full_s: list[float] = field(default_factory=list)
    produced: list[int] = field(default_factory=list)  # new tokens the run actually generated
    blocks_s: list[float] = field(default_factory=list)  # per token, each full block of BLOCK decode steps

    @property
    def ttft(self) -> float:
        """Median time to first token, seconds."""
        return statistics.median(self.ttft_s)

    @property
    def end_to_end(self) -> float:
        """Median time of the full generation, seconds."""
        return statistics.median(self.full_s)

    @property
    def decode_per_token(self) -> float:
        """Median decode time per token after the first, seconds (0 when only one token was produced)."""
        return statistics.median(self.decode_s)

    @property
    def decode_per_token_blocks(self) -> float:
        """Median over every block of BLOCK consecutive decode steps of all repeats, per token (0 without a
        full block): a slow stretch of a shared machine spoils the blocks it overlaps, not a whole repeat,
        and a block holds the same number of a method's periodic steps (VTA's rounds) wherever it starts."""
        return statistics.median(self.blocks_s) if self.blocks_s else 0.0

    def add(self, start: float, stamps: list[float], end: float) -> None:
        self.blocks_s += [(stamps[i + BLOCK] - stamps[i]) / BLOCK for i in range(0, len(stamps) - BLOCK, BLOCK)]
        self.ttft_s.append(stamps[0] - start)
        self.decode_s.append((stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else 0.0)
        self.full_s.append(end - start)
        self.produced.append(len(stamps))

    def to_dict(self) -> dict:
        return {
            "new_tokens": self.new_tokens,
            "repeats": len(self.ttft_s),
            "ttft_s": self.ttft,
            "decode_s_per_token": self.decode_per_token,
            "end_to_end_s": self.end_to_end,
            "ttft_s_all": list(self.ttft_s),
            "decode_s_per_token_all": list(self.decode_s),
            "end_to_end_s_all": list(self.full_s),
            "decode_s_per_token_blocks": self.decode_per_token_blocks,
            "decode_blocks_s_all": list(self.blocks_s),
        }


def ratios(timings: dict[str, Timing], baseline: str = "baseline") -> dict[str, dict[str, float]]:
    """Per method: ttft_ratio, decode_ratio, end_to_end_ratio vs the method named `baseline`
    (`tokenprune.ratios.ratio`: 1.0 when neither decoded, one token each)."""
    base = timings[baseline]
    return {
        name: {
            "ttft_ratio": ratio(t.ttft, base.ttft),
            "decode_ratio": ratio(t.decode_per_token, base.decode_per_token),
            "end_to_end_ratio": ratio(t.end_to_end, base.end_to_end),
        }
        for name, t in timings.items()
    }


def baseline_method(name: str = "baseline") -> Method:
    """The unpruned reference: a context manager that does nothing."""
    return name, contextlib.nullcontext


def default_sync() -> Callable[[], None]:
    """Wait for queued accelerator work before reading the clock (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.synchronize
    return lambda: None


def measure(
    methods: Sequence[Method],
    generate: Callable[[int, StoppingCriteriaList], Any],
    new_tokens: int,
    repeats: int = 3,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Time every method side by side; returns name -> Timing (in the order given).

    `generate(max_new_tokens, stopping_criteria)` runs one generation on fixed inputs and must pass
    `stopping_criteria` to `model.generate`; it should force the length (e.g. `min_new_tokens`) so every
    method decodes the same number of steps. `on_step(label)` is called after each warm-up / repeat of
    each method, for progress displays.
    """
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, not {new_tokens}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, not {repeats}")
    names = [name for name, _ in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    sync = sync or default_sync()
    timings = {name: Timing(name, new_tokens) for name in names}

    def timed() -> tuple[float, list[float], float]:
        clock = TokenClock(sync)
        sync()
        start = time.perf_counter()
        generate(new_tokens, StoppingCriteriaList([clock]))
        sync()
        end = time.perf_counter()
        if not clock.stamps:
            raise RuntimeError("generate() never called its stopping criteria: pass `stopping_criteria` through")
        return start, clock.stamps, end

    with torch.inference_mode():
        for w in range(warmup):
            for name, factory in methods:
                with factory():
                    timed()
                if on_step:
                    on_step(f"warm-up {w + 1}/{warmup}: {name}")
        for r in range(repeats):
            for name, factory in methods:
                with factory():
                    timings[name].add(*timed())
                if on_step:
                    on_step(f"repeat {r + 1}/{repeats}: {name}")
    return timings


# ------------------------------------------------------------------------------------------ machine
def _cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """What measured timings ran on: platform, python, torch, device, cpu, cpu_count, threads, and gpu on CUDA.

    Every results file that holds timings records this (`tokenprune compare` as this dict, `tokenprune bench`
    and the benchmark scripts as its one line, `machine_text`)."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "cpu": _cpu_name(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_text(device: torch.device) -> str:
    """`machine(device)` in one line: "[gpu, ]cpu, N threads, torch X"."""
    info = machine(device)
    text = f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}"
    return f"{info['gpu']}, {text}" if "gpu" in info else text
