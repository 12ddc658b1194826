"""Load a model with its processor: the embedded tiny random model or a local Hugging Face directory.

`load_model("tiny")` builds a random LLaVA-1.5 (or, with `family="llava_next"`, LLaVA-NeXT) model from
`tokenprune.tiny` together with a real processor (`tiny.build_processor`), so evaluation code runs the
same path (images + prompt -> processor -> `generate` -> decode) with or without real weights.
With `family="qwen2_vl" | "qwen2_5_vl" | "qwen3_vl"` it builds a random Qwen-VL model from
`tokenprune.tiny_qwen` with `qwen_inputs.QwenInputs` (tokenizer + PIL image processor) as its processor.
`load_model(DIR)` loads what `save_pretrained` wrote (or a Hub snapshot) with `AutoProcessor` and
`AutoModelForImageTextToText`; the family comes from the adapter that serves the loaded class. Qwen-VL
directories fall back to `AutoTokenizer` + `AutoImageProcessor` when `AutoProcessor` fails (without
torchvision it cannot build their video processor).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .engine.checks import SUPPORTED_ATTENTION, SUPPORTED_DTYPES
from .errors import ConfigError, DataError, UnsupportedModelError
from .qwen_inputs import MODEL_TYPES as QWEN_MODEL_TYPES
from .qwen_inputs import load_qwen_inputs, tiny_qwen_inputs
from .tiny import TinySpec, build_model, build_processor, build_tokenizer, llava_config
from .tiny_qwen import FAMILIES as QWEN_FAMILIES
from .tiny_qwen import QwenSpec, build_qwen_model, build_qwen_tokenizer, qwen_config

# what the pruning engine supports, by name (the one list lives with the engine's checks)
DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in SUPPORTED_DTYPES}
ATTENTION = SUPPORTED_ATTENTION
LLAVA_FAMILIES = ("llava", "llava_next")
#: inputs with one entry per prompt token, left-padded when samples are batched (`LoadedModel.batch_inputs`)
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
FAMILIES = LLAVA_FAMILIES + QWEN_FAMILIES
FAMILY_NAMES = {
    "llava": "LLaVA-1.5",
    "llava_next": "LLaVA-NeXT",
    "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
    "qwen3_vl": "Qwen3-VL",
}
#: the embedded Qwen-VL shape (family set per family): a decoder like the demo's LLaVA one, 8x8-pixel
#: patches, and images scaled to at most 320x240 pixels (`qwen_inputs.TINY_MAX_PIXELS`): 300 visual tokens
DEFAULT_QWEN_SPEC = QwenSpec(
    layers=8, hidden=256, heads=8, kv_heads=4, intermediate=688, vocab=1024, vision_hidden=64, patch_size=8
)


def default_tiny_spec(family: str) -> TinySpec | QwenSpec:
    """The embedded model of `family`: the demo's LLaVA-1.5 shape; for NeXT the same decoder with a
    Mistral backbone and 12x12-token crops (anyres images then give a few hundred visual tokens); for the
    Qwen-VL families `DEFAULT_QWEN_SPEC`."""
    from .demo import DEFAULT_SPEC  # here, not at import time: the demo may use this module

    if family == "llava":
        return DEFAULT_SPEC
    if family == "llava_next":
        return dataclasses.replace(DEFAULT_SPEC, family="llava_next", backbone="mistral", grid=12)
    if family in QWEN_FAMILIES:
        return dataclasses.replace(DEFAULT_QWEN_SPEC, family=family)
    raise ConfigError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")


@dataclass
class LoadedModel:
    """A model in eval mode, its processor, and what reports and tables need to say about it."""

    model: torch.nn.Module
    processor: Any
    family: str  # tiny: the family asked for; a directory: the name of the adapter serving it
    source: str  # "tiny" or the directory
    description: str
    num_layers: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def tokenizer(self):
        """The processor's tokenizer (the processor itself when it is one)."""
        return getattr(self.processor, "tokenizer", self.processor)

    def prompt_text(self, prompt: str, num_images: int = 1, num_videos: int = 0) -> str:
        """`prompt` in the processor's chat template, one image slot per image (and per video), ready for
        generation."""
        if hasattr(self.processor, "prompt_text"):  # qwen_inputs.QwenInputs
            return self.processor.prompt_text(prompt, num_images, num_videos)
        content = [{"type": "image"}] * num_images + [{"type": "video"}] * num_videos
        content.append({"type": "text", "text": prompt})
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": content}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        if num_videos:
            raise DataError(f"the processor of {self.source} has no chat template to place a video in the prompt")
        # LLaVA-1.5's conversation format, for processors saved without a chat template
        return "USER: " + "<image>\n" * num_images + f"{prompt} ASSISTANT:"

    def inputs(
        self, images: Sequence[Any], prompt: str, videos: Sequence[Sequence[Any]] = ()
    ) -> dict[str, torch.Tensor]:
        """Batch-1 model inputs for `images` (PIL), `videos` (each a list of PIL frames) and `prompt`, on the
        model's device and dtype."""
        images, videos = list(images), [list(frames) for frames in videos]
        return self._encode(images, self.prompt_text(prompt, len(images), len(videos)), videos)

    def chat_prompt(self, messages: list[dict]) -> str:
        """A conversation (Hugging Face chat messages, images as `{"type": "image"}` items of their content) in
        the chat template of the processor or its tokenizer, ready for generation. Without a template only a
        single user turn can be laid out (`prompt_text`)."""
        for templater in (self.processor, self.tokenizer):
            if getattr(templater, "chat_template", None) and hasattr(templater, "apply_chat_template"):
                return templater.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if len(messages) != 1 or messages[0]["role"] != "user":
            roles = ", ".join(m["role"] for m in messages)
            raise DataError(
                f"the processor of {self.source} has no chat template, so only one user turn can be laid out; "
                f"this conversation has the turns: {roles}"
            )
        content = messages[0]["content"]
        if any(item["type"] == "video" for item in content):
            raise DataError(f"the processor of {self.source} has no chat template to place a video in the prompt")
        text = "\n".join(item["text"] for item in content if item["type"] == "text")
        return self.prompt_text(text, sum(item["type"] == "image" for item in content))

    def batch_inputs(self, samples: Sequence[tuple[Sequence[Any], str]]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs of a batch of (images, prompt text already in the chat template) samples.

        Each sample goes through the processor alone, so a sample's inputs are the same whatever shares its
        batch; token-level tensors are then left-padded (pad token, mask 0) and the image tensors concatenated,
        trailing sizes zero-padded to the batch's largest (LLaVA-NeXT's crops per image differ with the aspect
        ratio; the model reads the real count from `image_sizes`)."""
        if not samples:
            raise DataError("an empty batch has no inputs")
        encoded = [self._encode(images, text) for images, text in samples]
        length = max(e["input_ids"].shape[1] for e in encoded)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = {}
        for key in encoded[0]:
            values = [e[key] for e in encoded]
            if key in TOKEN_KEYS:
                fill = pad_id if key == "input_ids" else 0
                out[key] = torch.cat([torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill) for v in values])
                continue
            present = [v for v in values if v is not None]
            if len(present) != len(values):
                raise DataError(f"some samples of the batch have {key} and others not; batch samples alike")
            sizes = [max(v.shape[d] for v in present) for d in range(1, present[0].dim())]
            padded = []
            for v in present:
                pad = []
                for d in reversed(range(1, v.dim())):
                    pad += [0, sizes[d - 1] - v.shape[d]]
                padded.append(torch.nn.functional.pad(v, pad) if any(pad) else v)
            out[key] = torch.cat(padded)
        return out

    def _encode(
        self, images: Sequence[Any], text: str, videos: Sequence[Sequence[Any]] = ()
    ) -> dict[str, torch.Tensor]:
        """Batch-1 inputs of `images`, `videos` and `text` (already in the chat template) on the model's device
        and dtype (pixel values in the model's dtype)."""
        media = {"images": list(images) or None}
        if videos:
            media["videos"] = [list(frames) for frames in videos]
        try:
            encoded = self.processor(**media, text=text, return_tensors="pt")
        except Exception as exc:  # noqa: BLE001 - any processor failure becomes one clear error
            what = f"{len(images)} image(s)" + (f", {len(videos)} video(s)" if videos else "")
            raise DataError(f"the processor of {self.source} could not prepare {what} and the prompt: {exc}") from None
        device, dtype = self.device, self.dtype
        out = {}
        for key, value in dict(encoded).items():
            if isinstance(value, torch.Tensor):
                value = value.to(device, dtype) if key.startswith("pixel_values") else value.to(device)
            out[key] = value
        return out

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of generated token ids, special tokens skipped."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True).strip()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"bad device {name!r} ({exc}); use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device; use 'auto' or 'cpu'")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"bad dtype {name!r}; use 'auto', {', '.join(repr(d) for d in DTYPES)}")
    return DTYPES[name]


def tiny_spec(family: str = "llava", tiny: dict | None = None, attn: str = "sdpa") -> TinySpec | QwenSpec:
    """The default spec of `family` with the `tiny` overrides (TinySpec or, for Qwen-VL, QwenSpec field -> value)."""
    spec = dataclasses.replace(default_tiny_spec(family), attn=attn)
    if not tiny:
        return spec
    qwen = isinstance(spec, QwenSpec)
    fields = {f.name: f for f in dataclasses.fields(spec)}
    unknown = sorted(set(tiny) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown tiny {'Qwen-VL' if qwen else 'LLaVA'} model field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(fields)}"
        )
    tiny = dict(tiny)
    for key, value in tiny.items():
        expected = type(getattr(spec, key))
        if expected is tuple and type(value) is list:  # a list from a JSON or YAML config
            value = tiny[key] = tuple(value)
        if type(value) is not expected:  # bool is an int subclass: compare types exactly
            raise ConfigError(f"tiny model field {key!r} must be {expected.__name__}, not {value!r}")
    kinds = QWEN_FAMILIES if qwen else LLAVA_FAMILIES  # a family override stays within the spec's kind
    if tiny.get("family", family) not in kinds:
        raise ConfigError(f"unknown model family {tiny['family']!r} here; use one of {', '.join(kinds)}")
    try:
        spec = dataclasses.replace(spec, **tiny)
        if qwen:
            qwen_config(spec), build_qwen_tokenizer(spec)
        else:
            llava_config(spec), build_tokenizer(spec)  # validate the rest (backbone, vocab) before the model build
    except ValueError as exc:
        raise ConfigError(f"bad tiny model: {exc}") from None
    return spec


def load_model(
    source: str = "tiny",
    *,
    family: str = "llava",
    tiny: dict | None = None,
    dtype: str = "auto",
    device: str = "auto",
    attn: str = "sdpa",
    seed: int = 0,
) -> LoadedModel:
    """The tiny random model (`source="tiny"`, of `family`, `tiny` overriding TinySpec / QwenSpec fields, weights
    from `seed`) or the model saved in directory `source` (its family found from its class), on `device`
    in `dtype` ("auto": bfloat16 on CUDA, else float32), in eval mode, with its processor.
    """
    if attn not in ATTENTION:
        raise ConfigError(f"bad attention implementation {attn!r}; use one of {', '.join(ATTENTION)}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if source == "tiny":
        if family not in FAMILIES:
            raise ConfigError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
        spec = tiny_spec(family, tiny, attn)
        if isinstance(spec, QwenSpec):
            model, processor = build_qwen_model(spec, seed=seed, dtype=dt), tiny_qwen_inputs(spec)
        else:
            model, processor = build_model(spec, seed=seed, dtype=dt), build_processor(spec)
        return LoadedModel(
            model=model.to(dev),
            processor=processor,
            family=spec.family,
            source="tiny",
            description=f"tiny random {FAMILY_NAMES.get(spec.family, spec.family)} "
            f"({spec.layers} layers, hidden {spec.hidden})",
            num_layers=spec.layers,
        )
    if tiny:
        raise ConfigError(
            f"tiny model fields {sorted(tiny)} given for the model directory {source}; they apply to source 'tiny' only"
        )
    return _load_directory(source, dev, dt, attn)


def _load_directory(source: str, device: torch.device, dtype: torch.dtype, attn: str) -> LoadedModel:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .api import resolve_adapter

    directory = Path(source)
    if not directory.exists():
        raise ConfigError(f"model directory not found: {source} (give 'tiny' or a folder written by save_pretrained)")
    if not directory.is_dir():
        raise ConfigError(f"model source {source} is a file; give 'tiny' or a Hugging Face model directory")
    if not (directory / "config.json").is_file():
        raise ConfigError(
            f"{source} is not a Hugging Face model directory (no config.json); "
            "give the folder written by save_pretrained() or downloaded from the Hub"
        )
    _check_served(directory, source)
    with _quiet_transformers():
        try:
            processor = AutoProcessor.from_pretrained(directory)
        except Exception as exc:  # noqa: BLE001 - any loading failure becomes one clear error
            processor = _qwen_fallback(directory, source, exc)
        try:
            model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype, attn_implementation=attn)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"cannot load a model from {source}: {exc}") from None
    model = model.to(device).eval()
    family = resolve_adapter(model).name  # UnsupportedModelError for a class no adapter serves
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
    layers = int(text_config.num_hidden_layers)
    return LoadedModel(
        model=model,
        processor=processor,
        family=family,
        source=str(source),
        description=f"{directory.resolve().name} ({type(model).__name__}, {layers} layers)",
        num_layers=layers,
    )


def _check_served(directory: Path, source: str) -> None:
    """UnsupportedModelError, before anything is loaded, for a directory whose model class no adapter serves
    (its config's model_type names the class `AutoModelForImageTextToText` would build)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from . import registry

    try:
        model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return  # transformers' loading says what is wrong with the file
    served = {name for adapter in registry.adapters() for name in adapter.model_classes}
    found = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type)
    if found not in served:
        what = found or "no image-text-to-text model class of transformers"
        raise UnsupportedModelError(
            f"{source} holds a model of type {model_type!r} ({what}); tokenprune serves {', '.join(sorted(served))}"
        )


def _qwen_fallback(directory: Path, source: str, error: Exception):
    """`QwenInputs` for a Qwen-VL directory whose `AutoProcessor` failed (its video processor needs
    torchvision); for any other directory, or if that fails too, a ConfigError."""
    try:
        model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type not in QWEN_MODEL_TYPES:
        raise ConfigError(f"cannot load a processor from {source}: {error}")
    try:
        return load_qwen_inputs(directory, model_type)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"cannot load a processor from {source}: AutoProcessor failed ({error}; Qwen-VL processors need "
            f"torchvision for their video processor), and so did AutoTokenizer + AutoImageProcessor: {exc}"
        ) from None


def save_tiny(directory: str | Path, spec: TinySpec | QwenSpec, seed: int = 0) -> Path:
    """Write the tiny random model of `spec` and its processor (Qwen-VL: tokenizer and image processor) to
    `directory`, loadable by `load_model`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():
        if isinstance(spec, QwenSpec):
            build_qwen_model(spec, seed=seed).save_pretrained(directory)
            tiny_qwen_inputs(spec).save_pretrained(directory)
        else:
            build_model(spec, seed=seed).save_pretrained(directory)
            build_processor(spec).save_pretrained(directory)
    return directory


@contextlib.contextmanager
def _quiet_transformers():
    """Loading chatter (progress bars, backend notes) would break up the caller's own output."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
