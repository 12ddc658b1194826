"""`tokenprune demo`: the unpruned model vs FastV, VTW and ST3 on one input, in one table.

Without arguments it runs on a small random LLaVA-1.5-shaped model (`tokenprune.tiny`) with a synthetic
input, so it needs no weights and no network; `--family` picks another embedded tiny model (LLaVA-NeXT,
Qwen2-VL, Qwen2.5-VL, Qwen3-VL), fed a synthetic picture and prompt through its processor. With
`--model DIR --image FILE --prompt TEXT` it runs on real local weights. Every method gets the same input
and greedy decoding; latency is timed side by side with `tokenprune.timing` and shown as ratios to the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

import tokenprune as tp

from . import timing
from .data import load_image
from .metrics import agreement, first_token_kl
from .models import ATTENTION, DTYPES, FAMILIES, load_model, resolve_device, resolve_dtype
from .tiny import TinySpec, build_model, make_inputs

#: the embedded default: LLaVA-1.5's 576 visual tokens (24x24 grid) on a narrow 8-layer LLaMA decoder
DEFAULT_SPEC = TinySpec(layers=8, hidden=256, heads=8, kv_heads=8, intermediate=688, vocab=1024, grid=24)
#: synthetic prompt layout around the image, close to LLaVA-1.5's chat template (~64 text tokens)
TEXT_BEFORE, TEXT_AFTER = 40, 24
#: the question about the synthetic picture, for the tiny models of the other families
TINY_PROMPT = "What shapes are in the picture, and what colour is each one?"


class DemoError(Exception):
    """A user-facing problem (bad path, unreadable image, ...): printed without traceback, exit code 2."""


USER_ERRORS = (DemoError,)


# ------------------------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    real = parser.add_argument_group("real weights (all three, or none for the built-in tiny random model)")
    real.add_argument("--model", metavar="DIR", help="local Hugging Face LLaVA model directory")
    real.add_argument("--image", metavar="FILE", help="image file (anything PIL can open)")
    real.add_argument("--prompt", metavar="TEXT", help="question about the image")
    parser.add_argument(
        "--family",
        choices=list(FAMILIES),
        help="family of the built-in tiny random model (default llava: LLaVA-1.5); not with --model",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, metavar="N", help="greedy tokens to generate (default 32)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        metavar="N",
        help="interleaved timing repeats; the median is shown (default 3)",
    )
    parser.add_argument(
        "--device", default="auto", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)",
    )
    parser.add_argument(
        "--attn", default="sdpa", choices=list(ATTENTION), help="attention implementation (default sdpa)"
    )
    parser.add_argument("--json", metavar="PATH", help="write every report, timing and output to this JSON file")
    # Undocumented: a smaller random model for tests, e.g. "layers=4,hidden=64,grid=6" (LLaVA-1.5: TinySpec
    # fields; other families: their spec's integer fields, checked by tokenprune.models).
    parser.add_argument("--tiny-spec", help=argparse.SUPPRESS)


def parse_tiny_spec(text: str | None, attn: str = "sdpa") -> TinySpec:
    """TinySpec from "key=value,..." on top of the demo default (ints only, attn from --attn)."""
    spec = dataclasses.replace(DEFAULT_SPEC, attn=attn)
    values = parse_tiny_overrides(text)
    if not values:
        return spec
    names = {f.name for f in dataclasses.fields(TinySpec)} - {"attn"}
    unknown = sorted(set(values) - names)
    if unknown:
        raise DemoError(f"bad --tiny-spec key(s) {unknown}; expected key=int with key in {sorted(names)}")
    return dataclasses.replace(spec, **values)


def parse_tiny_overrides(text: str | None) -> dict | None:
    """Integer spec overrides from "key=value,..." for `load_model(tiny=...)`, which checks the keys."""
    if not text:
        return None
    values = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DemoError(f"bad --tiny-spec item {item!r}; expected key=int")
        try:
            values[key.strip()] = int(value)
        except ValueError:
            raise DemoError(f"bad --tiny-spec value {item!r}: {value!r} is not an integer") from None
    return values


# ------------------------------------------------------------------------------------------- setup
@dataclass
class Setup:
    """A model, one batch-1 input, and what the table needs to know about them."""

    model: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    description: str
    num_layers: int
    visual_tokens: int
    synthetic: bool
    decode: Callable[[list[int]], str] | None = None
    info: dict = field(default_factory=dict)


def _to(inputs: dict, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    return out


def real_setup(model_dir: str, image, prompt: str, device: str, dtype: str, attn: str) -> Setup:
    """Local weights through `tokenprune.models` (the processor and its chat template prepare the input)."""
    loaded = load_model(model_dir, dtype=dtype, device=device, attn=attn)
    info = {"source": str(model_dir), "class": type(loaded.model).__name__, "prompt": prompt}
    return _loaded_setup(loaded, image, prompt, synthetic=False, info=info)


def family_setup(family: str, tiny: dict | None, device: str, dtype: str, attn: str) -> Setup:
    """The embedded tiny model of `family` through `tokenprune.models`, fed `show.synthetic_image()` and
    `TINY_PROMPT` through its processor."""
    from .show import synthetic_image  # here: show imports this module

    loaded = load_model("tiny", family=family, tiny=tiny, dtype=dtype, device=device, attn=attn)
    info = {"source": "tiny", "family": family, "class": type(loaded.model).__name__, "prompt": TINY_PROMPT}
    return _loaded_setup(loaded, synthetic_image(), TINY_PROMPT, synthetic=True, info=info)


def _loaded_setup(loaded, image, prompt: str, synthetic: bool, info: dict) -> Setup:
    inputs = loaded.inputs([image], prompt)
    config = loaded.model.config
    image_token = getattr(config, "image_token_id", None)
    if image_token is None:
        image_token = getattr(config, "image_token_index", None)
    visual = int((inputs["input_ids"][0] == image_token).sum()) if image_token is not None else 0
    description = f"{loaded.description}, {visual} visual + {inputs['input_ids'].shape[1] - visual} text tokens"
    return Setup(
        model=loaded.model,
        inputs=inputs,
        description=description,
        num_layers=loaded.num_layers,
        visual_tokens=visual,
        synthetic=synthetic,
        decode=loaded.decode,
        info=info,
    )


def tiny_setup(spec: TinySpec, device: torch.device, dtype: torch.dtype) -> Setup:
    model = build_model(spec, dtype=dtype).to(device)
    inputs = _to(make_inputs(spec, text_before=TEXT_BEFORE, text_after=TEXT_AFTER), device, dtype)
    description = (
        f"tiny random LLaVA-1.5-shaped model ({spec.layers} layers, hidden {spec.hidden}, "
        f"{spec.visual_tokens} visual + {TEXT_BEFORE + TEXT_AFTER + 1} text tokens)"
    )
    return Setup(
        model=model,
        inputs=inputs,
        description=description,
        num_layers=spec.layers,
        visual_tokens=spec.visual_tokens,
        synthetic=True,
        info={"source": "tiny", "spec": dataclasses.asdict(spec)},
    )


# ------------------------------------------------------------------------------------------- methods
def default_methods(num_layers: int) -> list[tuple[str, dict]]:
    """(strategy name, params) compared by the demo. VTW's default k=16 assumes 32 layers: use half."""
    return [("fastv", {}), ("vtw", {"k": max(1, num_layers // 2)}), ("st3", {})]


def strategy_label(description: dict) -> str:
    params = " ".join(f"{k}={v}" for k, v in description.items() if k != "name" and v is not None)
    return f"{description['name']}\n[dim]{params}[/dim]" if params else description["name"]


# ------------------------------------------------------------------------------------------- metrics
def run_length(counts: list[int]) -> str:
    """[576, 576, 288, 288] -> "576x2 288x2"."""
    groups: list[list[int]] = []
    for c in counts:
        if groups and groups[-1][0] == c:
            groups[-1][1] += 1
        else:
            groups.append([c, 1])
    return " ".join(f"{value}x{n}" for value, n in groups)


def pct(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


def tokens_text(value: float) -> str:
    """An equivalent visual token count: 306.0 -> "306", 15.1666 -> "15.2"."""
    return f"{value:.1f}".removesuffix(".0")


def times(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}x"


# ------------------------------------------------------------------------------------------- run
def run_demo(
    *,
    model: str | None = None,
    image: str | None = None,
    prompt: str | None = None,
    max_new_tokens: int = 32,
    repeats: int = 3,
    device: str = "auto",
    dtype: str = "auto",
    attn: str = "sdpa",
    json_path: str | None = None,
    spec: TinySpec | None = None,
    family: str | None = None,
    tiny: dict | None = None,
    console: Console | None = None,
    progress_console: Console | None = None,
) -> dict:
    """Run the demo, print its table on `console` and return everything measured (also what --json writes).

    Without `model`: the tiny LLaVA-1.5 of `spec` (family None or "llava"), or the tiny model of `family` with the
    `tiny` spec overrides (see `tokenprune.models.load_model`)."""
    console = console or Console()
    progress_console = progress_console or Console(stderr=True)
    given = [name for name, value in (("--model", model), ("--image", image), ("--prompt", prompt)) if value]
    if given and len(given) != 3:
        missing = sorted({"--model", "--image", "--prompt"} - set(given))
        raise DemoError(f"{', '.join(given)} given without {', '.join(missing)}: real weights need all three")
    if model and (family is not None or tiny):
        raise DemoError("--family and the tiny model's spec apply to the built-in tiny model only, not --model")
    family = family or "llava"
    if family not in FAMILIES:
        raise DemoError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    if max_new_tokens < 2:
        raise DemoError(f"--max-new-tokens must be >= 2 to time decoding, not {max_new_tokens}")
    if repeats < 1:
        raise DemoError(f"--repeats must be >= 1, not {repeats}")
    if json_path and not Path(json_path).resolve().parent.is_dir():
        raise DemoError(f"cannot write --json {json_path}: folder {Path(json_path).parent} does not exist")
    if model:
        picture = load_image(image)  # before anything slow: a bad path fails at once
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)

    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress_console,
        transient=True,
    ) as progress:
        step = progress.add_task("loading model", total=None)
        if model:
            setup = real_setup(model, picture, prompt, device, dtype, attn)
        elif family != "llava":
            setup = family_setup(family, tiny, device, dtype, attn)
        else:
            setup = tiny_setup(spec or dataclasses.replace(DEFAULT_SPEC, attn=attn), dev, dt)
        methods = default_methods(setup.num_layers)
        strategies = [tp.resolve_strategy(name, **params) for name, params in methods]
        for strategy in strategies:
            strategy.check(setup.num_layers)  # a clear error now rather than mid-run

        total = (1 + len(strategies)) * (1 + 1 + repeats)  # quality runs, warm-up, repeats
        progress.update(step, description="greedy generation", total=total, completed=0)

        inputs, m = setup.inputs, setup.model
        prompt_len = inputs["input_ids"].shape[1]
        fixed = {"min_new_tokens": max_new_tokens} if setup.synthetic else {}

        def generate(n: int, **extra):
            return m.generate(**inputs, max_new_tokens=n, do_sample=False, num_beams=1, **extra)

        # ---- quality runs: the report, the greedy tokens and the first-token logits of each method
        results: list[dict[str, Any]] = []
        with torch.inference_mode():
            for name, factory in [("baseline", contextlib.nullcontext)] + [
                (s.name, (lambda s=s: tp.prune(m, s))) for s in strategies
            ]:
                progress.update(step, description=f"greedy generation: {name}")
                with factory() as run:
                    out = generate(max_new_tokens, output_logits=True, return_dict_in_generate=True, **fixed)
                tokens = out.sequences[0, prompt_len:].tolist()
                results.append(
                    {
                        "name": name,
                        "strategy": run.strategy.describe() if run is not None else None,
                        "report": run.report.to_dict() if run is not None else None,
                        "tokens": tokens,
                        "text": setup.decode(tokens) if setup.decode else None,
                        "_logits": out.logits[0][0].detach(),
                    }
                )
                progress.advance(step)

        # ---- timing: interleaved repeats, medians, ratios to the baseline
        def timed_generate(n: int, stopping_criteria) -> None:
            generate(n, min_new_tokens=n, stopping_criteria=stopping_criteria)

        timed_methods = [timing.baseline_method()] + [(s.name, (lambda s=s: tp.prune(m, s))) for s in strategies]

        def on_step(label: str) -> None:
            progress.update(step, description=f"timing, {label}")
            progress.advance(step)

        timings = timing.measure(
            timed_methods, timed_generate, new_tokens=max_new_tokens, repeats=repeats, warmup=1, on_step=on_step
        )

    rel = timing.ratios(timings)
    base = results[0]
    for r in results:
        r["agreement"] = agreement(r["tokens"], base["tokens"])
        r["first_token_kl"] = first_token_kl(r.pop("_logits"), base["_logits"]) if r is not base else 0.0
        r["timing"] = {**timings[r["name"]].to_dict(), **rel[r["name"]]}
    base.pop("_logits", None)

    summary = {
        "tokenprune_version": tp.__version__,
        "model": {
            **setup.info,
            "description": setup.description,
            "layers": setup.num_layers,
            "visual_tokens": setup.visual_tokens,
            "prompt_tokens": prompt_len,
        },
        "device": str(dev),
        "dtype": str(dt).removeprefix("torch."),
        "attn": attn,
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "methods": results,
    }
    console.print(make_table(summary, timings["baseline"]))
    if json_path:
        try:
            Path(json_path).write_text(json.dumps(summary, indent=2))
        except OSError as exc:
            raise DemoError(f"cannot write --json {json_path}: {exc}") from None
        console.print(f"[dim]reports written to {json_path}[/dim]")
    return summary


def make_table(summary: dict, baseline_timing: timing.Timing) -> Table:
    model = summary["model"]
    table = Table(
        title=f"tokenprune demo: {model['description']}",
        caption=(
            f"{summary['max_new_tokens']} greedy new tokens, {summary['device']} {summary['dtype']} {summary['attn']}, "
            f"median of {summary['repeats']} interleaved repeats. Baseline: TTFT "
            f"{baseline_timing.ttft * 1e3:.1f} ms, decode {baseline_timing.decode_per_token * 1e3:.2f} ms/token "
            "(absolute times mean little on CPU; read the ratios)."
            + (
                " Random weights: agreement and KL say little about real quality."
                if model.get("source") == "tiny"
                else ""
            )
        ),
        caption_justify="left",
    )
    table.add_column("Method", overflow="fold")
    table.add_column("Visual tokens per layer", overflow="fold")
    table.add_column("Prefill FLOPs", justify="right")
    table.add_column("Equiv. visual tokens", justify="right")
    table.add_column("Visual KV", justify="right")
    table.add_column("Total KV", justify="right")
    table.add_column("TTFT", justify="right")
    table.add_column("Decode/tok", justify="right")
    table.add_column("Agree", justify="right")
    table.add_column("KL 1st", justify="right")
    for r in summary["methods"]:
        t = r["timing"]
        if r["report"] is None:
            label = "baseline\n[dim]unpruned[/dim]"
            tokens = run_length([model["visual_tokens"]] * model["layers"])
            flops = visual_kv = total_kv = 1.0
            equivalent = model["visual_tokens"]
        else:
            report = r["report"]
            label = strategy_label(r["strategy"])
            tokens = run_length([layer[0] for layer in report["prefill_visual_tokens"]])
            flops = report["flops"]["prefill_ratio"]
            equivalent = report["equivalent_visual_tokens"][0]
            visual_kv = report["kv_bytes"]["visual"]["mean_ratio"]
            total_kv = report["kv_bytes"]["total"]["mean_ratio"]
        table.add_row(
            label,
            tokens,
            pct(flops),
            tokens_text(equivalent),
            pct(visual_kv),
            pct(total_kv),
            times(t["ttft_ratio"]),
            times(t["decode_ratio"]),
            pct(r["agreement"]),
            f"{r['first_token_kl']:.3g}",
        )
    return table


def command(args: argparse.Namespace, console: Console | None = None) -> int:
    """Entry of the `demo` subcommand; returns the exit code."""
    llava = args.family in (None, "llava")
    spec = parse_tiny_spec(args.tiny_spec, args.attn) if args.tiny_spec and llava else None
    tiny = None if llava else parse_tiny_overrides(args.tiny_spec)
    run_demo(
        model=args.model,
        image=args.image,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        device=args.device,
        dtype=args.dtype,
        attn=args.attn,
        json_path=args.json,
        spec=spec,
        family=args.family,
        tiny=tiny,
        console=console,
    )
    return 0
