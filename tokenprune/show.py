"""`tokenprune show`: a PNG of which visual tokens each strategy kept at each cut layer, drawn over the image.

Without `--model` it runs on the embedded tiny random model (`--family`, any of `models.FAMILIES`), without
`--image` on a synthetic picture of a few coloured shapes. Qwen-VL models also take `--video`: a folder of
frames (image files, in name order) or `synthetic` (shapes moving over 8 frames), drawn as a strip of its
temporal patches. Each strategy runs one greedy `generate` on the same input under `tp.prune`;
`tokenprune.pictures` draws its report. Bare strategy names get the demo's parameters (VTW's k = half the
decoder layers, since its default k=16 assumes 32 layers).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from .api import resolve_strategy
from .data import load_image
from .demo import DTYPES, default_methods
from .errors import ConfigError
from .models import ATTENTION, FAMILIES, LLAVA_FAMILIES

DEFAULT_PROMPT = "What shapes are in the picture?"
DEFAULT_STRATEGIES = "st3,fastv,vtw"
DEFAULT_VIDEO_PROMPT = "What happens in the video?"
SYNTHETIC_FRAMES = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE.png", help="PNG file to write")
    parser.add_argument(
        "--model",
        default="tiny",
        metavar="tiny|DIR",
        help="'tiny' (random, default) or a local Hugging Face model directory",
    )
    parser.add_argument("--family", choices=list(FAMILIES), help="family of the tiny model (default llava)")
    picture = parser.add_mutually_exclusive_group()
    picture.add_argument("--image", metavar="FILE", help="image file (default: a synthetic picture of coloured shapes)")
    picture.add_argument(
        "--video",
        metavar="DIR|synthetic",
        help="Qwen-VL models: a folder of video frames (image files, in name order) or 'synthetic'",
    )
    parser.add_argument(
        "--prompt",
        metavar="TEXT",
        help=f"question about the picture (default {DEFAULT_PROMPT!r}, for a video {DEFAULT_VIDEO_PROMPT!r})",
    )
    parser.add_argument(
        "--strategies",
        default=DEFAULT_STRATEGIES,
        metavar="NAMES",
        help=f"comma-separated strategy names, one row each (default {DEFAULT_STRATEGIES})",
    )
    parser.add_argument("--device", default="auto", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", *DTYPES],
        help="weights dtype (default: bfloat16 on GPU, float32 on CPU)",
    )
    parser.add_argument(
        "--attn", default="sdpa", choices=list(ATTENTION), help="attention implementation (default sdpa)"
    )
    # Undocumented: a smaller tiny model for tests, e.g. "layers=4,hidden=64,grid=4".
    parser.add_argument("--tiny-spec", help=argparse.SUPPRESS)


def parse_tiny_spec(text: str | None) -> dict | None:
    """TinySpec overrides from "key=value,...": integers where they parse, else strings."""
    if not text:
        return None
    values: dict = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --tiny-spec item {item!r}; expected key=value")
        value = value.strip()
        values[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
    return values


def strategy_names(text: str) -> list[str]:
    """The comma-separated names of --strategies, each checked against the registered strategies."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError("--strategies is empty; give names like st3,fastv,vtw")
    for name in names:
        resolve_strategy(name)  # an unknown name fails here, listing the available ones
    return names


def with_defaults(names: list[str], num_layers: int) -> list[tuple[str, dict]]:
    """(name, params): the demo's parameters for a model of this depth (VTW's k), else the strategy's defaults."""
    defaults = dict(default_methods(num_layers))
    return [(name, defaults.get(name, {})) for name in names]


# ------------------------------------------------------------------------------------------- images
def synthetic_image(width: int = 480, height: int = 360):
    """A few coloured shapes on a light background: something to see where the kept tokens are."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (236, 236, 228))
    draw = ImageDraw.Draw(image)
    w, h = width / 480, height / 360
    draw.ellipse((40 * w, 40 * h, 190 * w, 190 * h), fill=(214, 40, 40))
    draw.rectangle((270 * w, 60 * h, 440 * w, 170 * h), fill=(40, 80, 200))
    draw.polygon([(120 * w, 330 * h), (220 * w, 200 * h), (320 * w, 330 * h)], fill=(240, 190, 30))
    draw.ellipse((340 * w, 220 * h, 460 * w, 340 * h), fill=(40, 160, 80))
    return image


def synthetic_video(frames: int = SYNTHETIC_FRAMES, width: int = 320, height: int = 240) -> list:
    """`frames` frames of the synthetic picture's shapes, the red disc moving right and the blue box down."""
    from PIL import Image, ImageDraw

    out = []
    w, h = width / 480, height / 360
    for f in range(frames):
        step = f / max(frames - 1, 1)
        image = Image.new("RGB", (width, height), (236, 236, 228))
        draw = ImageDraw.Draw(image)
        x = (20 + 280 * step) * w
        draw.ellipse((x, 40 * h, x + 150 * w, 190 * h), fill=(214, 40, 40))
        y = (20 + 200 * step) * h
        draw.rectangle((300 * w, y, 460 * w, y + 110 * h), fill=(40, 80, 200))
        draw.polygon([(60 * w, 340 * h), (140 * w, 230 * h), (220 * w, 340 * h)], fill=(240, 190, 30))
        out.append(image)
    return out


def load_frames(source: str) -> list:
    """The frames of `--video`: 'synthetic', or the image files of a folder in name order."""
    from .data import load_image

    if source == "synthetic":
        return synthetic_video()
    folder = Path(source)
    if not folder.is_dir():
        raise ConfigError(f"--video {source}: not a folder of frames (give a folder of image files or 'synthetic')")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"--video {source}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [load_image(p) for p in files]


# ------------------------------------------------------------------------------------------- command
def command(args: argparse.Namespace, console: Console | None = None) -> int:
    """Entry of the `show` subcommand; prints the path of the written PNG and returns the exit code."""
    from .models import load_model
    from .pictures import render

    console = console or Console()
    out = Path(args.out)
    if not out.resolve().parent.is_dir():
        raise ConfigError(f"cannot write --out {args.out}: folder {out.parent} does not exist")
    tiny = parse_tiny_spec(args.tiny_spec)
    if args.model != "tiny" and (args.family or tiny):
        raise ConfigError("--family applies to the tiny model only; a model directory has its own family")
    needs_videos = "--video needs a model that takes videos (Qwen-VL families)"
    if args.video and args.model == "tiny" and (args.family or "llava") in LLAVA_FAMILIES:
        raise ConfigError(f"{needs_videos}; {args.family or 'llava'} does not")
    frames = load_frames(args.video) if args.video else None
    image = None if frames else (load_image(args.image) if args.image else synthetic_image())
    names = strategy_names(args.strategies)  # checked before the slow load
    loaded = load_model(
        args.model, family=args.family or "llava", tiny=tiny, dtype=args.dtype, device=args.device, attn=args.attn
    )
    if frames and loaded.family in LLAVA_FAMILIES:
        raise ConfigError(f"{needs_videos}; {args.model} is {loaded.family}")
    strategies = with_defaults(names, loaded.num_layers)
    if frames:
        inputs = loaded.inputs([], args.prompt or DEFAULT_VIDEO_PROMPT, videos=[frames])
        picture, where = frames, {"video_index": 0}
    else:
        inputs = loaded.inputs([image], args.prompt or DEFAULT_PROMPT)
        picture, where = image, {}
    title = f"{loaded.description}: visual tokens kept at each cut layer (removed ones dimmed)"
    path = render(loaded.model, inputs, picture, strategies, out, title=title, **where)
    console.print(str(path), highlight=False, soft_wrap=True)
    return 0
