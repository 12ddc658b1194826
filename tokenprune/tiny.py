"""Small random LLaVA-1.5 / LLaVA-NeXT models and synthetic inputs: the embedded default of the demo and tests.

Nothing is downloaded: models are built from configs with random weights. The layouts match the real
families: CLIP vision tower -> projector -> LLaMA or Mistral decoder. A LLaVA-1.5 image expands to
`grid * grid` placeholder tokens; a LLaVA-NeXT image to its base crop's `grid * grid` plus its unpadded
anyres grid with one newline token per row, so the count depends on the image size (`next_image_tokens`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MistralConfig,
)
from transformers.image_processing_utils import select_best_resolution

PATCH = 2  # vision patch size in pixels
# anyres grids of LLaVA-NeXT as multiples of the crop side (the real models use 336 * these)
NEXT_GRIDS = ((1, 2), (2, 1), (2, 2), (1, 3), (3, 1))


@dataclass(frozen=True)
class TinySpec:
    layers: int = 4
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab: int = 512
    grid: int = 6  # a crop gives grid * grid visual tokens
    attn: str = "sdpa"
    family: str = "llava"  # "llava" (LLaVA-1.5) or "llava_next"
    backbone: str = "llama"  # "llama" or "mistral"

    @property
    def visual_tokens(self) -> int:
        """Visual tokens of one LLaVA-1.5 image (of one base crop for LLaVA-NeXT)."""
        return self.grid * self.grid

    @property
    def side(self) -> int:
        """Pixel side of one crop."""
        return self.grid * PATCH

    @property
    def pinpoints(self) -> list[list[int]]:
        return [[self.side * h, self.side * w] for h, w in NEXT_GRIDS]


def next_image_tokens(spec: TinySpec, height: int, width: int) -> int:
    """Placeholder tokens of a LLaVA-NeXT image of `height` x `width` pixels (the processor's count).

    Base crop grid*grid, then the anyres grid cropped back to the image's aspect ratio, with one newline
    per row. Written out here, independently of the adapter, so tests check one against the other.
    """
    best_h, best_w = select_best_resolution([height, width], spec.pinpoints)
    rows, cols = spec.grid * (best_h // spec.side), spec.grid * (best_w // spec.side)
    if width / height > cols / rows:
        rows -= 2 * ((rows - int(round(height * (cols / width), 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(width * (rows / height), 7))) // 2)
    return spec.grid * spec.grid + rows * cols + rows


def next_image_crops(spec: TinySpec, height: int, width: int) -> int:
    """Crops (anyres tiles + the base crop) a LLaVA-NeXT image of this size is cut into."""
    best_h, best_w = select_best_resolution([height, width], spec.pinpoints)
    return (best_h // spec.side) * (best_w // spec.side) + 1


def _text_config(spec: TinySpec):
    common = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if spec.backbone == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if spec.backbone == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"unknown tiny backbone '{spec.backbone}'; use 'llama' or 'mistral'")


def llava_config(spec: TinySpec) -> LlavaConfig | LlavaNextConfig:
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=spec.side,
        patch_size=PATCH,
    )
    common = dict(
        vision_config=vision,
        text_config=_text_config(spec),
        image_token_id=spec.vocab - 1,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=0,
    )
    if spec.family == "llava":
        config = LlavaConfig(**common, image_seq_length=spec.visual_tokens)
    elif spec.family == "llava_next":
        config = LlavaNextConfig(**common, image_grid_pinpoints=spec.pinpoints)
    else:
        raise ValueError(f"unknown tiny family '{spec.family}'; use 'llava' or 'llava_next'")
    config._attn_implementation = spec.attn
    return config


def build_model(spec: TinySpec = TinySpec(), seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random LLaVA(-NeXT) model in eval mode. Weights are scaled up so attention is far from uniform."""
    torch.manual_seed(seed)
    config = llava_config(spec)
    config.text_config.initializer_range = 0.08
    cls = LlavaForConditionalGeneration if spec.family == "llava" else LlavaNextForConditionalGeneration
    model = cls(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    return model


def make_inputs(
    spec: TinySpec,
    text_before: list[int] | int = 4,
    text_after: list[int] | int = 8,
    seed: int = 0,
    images: list[int] | None = None,
    image_sizes: list[list[tuple[int, int]]] | None = None,
) -> dict[str, torch.Tensor]:
    """A left-padded batch: [bos] text_before [image]... text_after per sample, with random pixels.

    `text_before` / `text_after` give per-sample lengths (an int means batch 1). `images[b]` is the
    number of images of sample b (default one each; 0 gives a text-only sample); consecutive images are
    separated by one text token. For LLaVA-NeXT, `image_sizes[b]` lists the (height, width) of sample b's
    images (default: one crop-sized image each), which sets their token counts.
    """
    before = [text_before] if isinstance(text_before, int) else list(text_before)
    after = [text_after] if isinstance(text_after, int) else list(text_after)
    bsz = len(before)
    if image_sizes is not None:
        images = [len(sizes) for sizes in image_sizes]
    images = [1] * bsz if images is None else list(images)
    if image_sizes is None:
        image_sizes = [[(spec.side, spec.side)] * n for n in images]
    gen = torch.Generator().manual_seed(seed)
    image_token = spec.vocab - 1
    rows = []
    for b in range(bsz):
        separators = max(images[b] - 1, 0)
        text = torch.randint(3, spec.vocab - 1, (before[b] + after[b] + separators,), generator=gen).tolist()
        row = [1] + text[: before[b]]
        for i, (height, width) in enumerate(image_sizes[b]):
            count = spec.visual_tokens if spec.family == "llava" else next_image_tokens(spec, height, width)
            row += [image_token] * count + ([text[before[b] + i]] if i < separators else [])
        rows.append(row + text[before[b] + separators :])
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(bsz, length, dtype=torch.long)
    attention_mask = torch.zeros(bsz, length, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    sizes = [size for per_sample in image_sizes for size in per_sample]
    if not sizes:
        return out
    if spec.family == "llava":
        out["pixel_values"] = torch.randn(len(sizes), 3, spec.side, spec.side, generator=gen)
    else:
        crops = max(next_image_crops(spec, h, w) for h, w in sizes)
        out["pixel_values"] = torch.randn(len(sizes), crops, 3, spec.side, spec.side, generator=gen)
        out["image_sizes"] = torch.tensor(sizes)
    return out


# ------------------------------------------------------------------------------------------- processor
#: the tiny tokenizer's words after the special tokens: chat roles and punctuation first (so even a small
#: vocabulary can encode the chat template), then option letters and answers, then common English words
TINY_WORDS = (
    "USER",
    "ASSISTANT",
    ":",
    ".",
    ",",
    "?",
    "!",
    "'",
    '"',
    "(",
    ")",
    "-",
    "A",
    "B",
    "C",
    "D",
    "E",
    "yes",
    "no",
    "Yes",
    "No",
    "Is",
    "Are",
    "Does",
    "Do",
    "What",
    "Which",
    "How",
    "The",
    "There",
    "This",
    "It",
    "the",
    "a",
    "an",
    "is",
    "are",
    "was",
    "of",
    "in",
    "on",
    "at",
    "to",
    "and",
    "or",
    "with",
    "for",
    "from",
    "what",
    "which",
    "how",
    "many",
    "there",
    "this",
    "that",
    "it",
    "image",
    "picture",
    "photo",
    "colour",
    "color",
    "shape",
    "shapes",
    "square",
    "circle",
    "triangle",
    "rectangle",
    "ellipse",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "orange",
    "purple",
    "grey",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "7",
    "8",
    "9",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "middle",
    "big",
    "small",
    "large",
    "Answer",
    "answer",
    "question",
    "using",
    "single",
    "word",
    "phrase",
    "Provide",
    "provide",
    "caption",
    "sentence",
    "provided",
    "option",
    "option's",
    "letter",
    "given",
    "choices",
    "directly",
    "Context",
    "Options",
    "Question",
    "s",
    "man",
    "woman",
    "people",
    "person",
    "dog",
    "cat",
    "car",
    "tree",
    "water",
    "sky",
    "house",
    "table",
    "street",
    "sitting",
    "standing",
    "holding",
    "near",
    "next",
    "front",
    "background",
    "be",
    "has",
    "have",
    "do",
    "does",
    "can",
    "not",
    "all",
    "some",
    "by",
    "as",
    "he",
    "she",
    "they",
    "its",
)
_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}USER: {% else -%}ASSISTANT: {% endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'image' -%}<image>\n{% endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' %} {% else %}</s>{% endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def build_tokenizer(spec: TinySpec):
    """A word-level fast tokenizer matching the tiny model's special ids, built offline.

    0 `<pad>`, 1 `<s>` (added at the start), 2 `</s>`, 3 `<unk>`, `vocab - 1` `<image>`; the words of
    `TINY_WORDS` (cut to fit), then filler words `w<i>` up to the vocabulary size.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if spec.vocab < 8:
        raise ValueError(f"tiny vocab must be >= 8 for a tokenizer, not {spec.vocab}")
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = list(TINY_WORDS[: spec.vocab - len(specials) - 1])
    words += [f"w{i}" for i in range(spec.vocab - len(specials) - 1 - len(words))]
    vocab = {token: i for i, token in enumerate(specials + words + ["<image>"])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",  # what batched generation (and tokenprune) needs
        clean_up_tokenization_spaces=False,
    )
    return fast


def build_processor(spec: TinySpec = TinySpec()):
    """A real `LlavaProcessor` / `LlavaNextProcessor` for `build_model(spec)`: images -> pixel values of the
    tiny crop size, `<image>` -> as many placeholder tokens as the model expects, a LLaVA-1.5-style chat
    template ("USER: <image>\\n{text} ASSISTANT:"). Nothing is downloaded.
    """
    from transformers import LlavaNextProcessor, LlavaProcessor

    with _quiet_backend_fallback():  # without torchvision, transformers falls back to the PIL backend, noisily
        from transformers import CLIPImageProcessor, LlavaNextImageProcessor
    tokenizer = build_tokenizer(spec)
    image_options = dict(size={"shortest_edge": spec.side}, crop_size={"height": spec.side, "width": spec.side})
    # CLIP's class token is counted, then dropped by the "default" feature strategy, as for the real models
    processor_options = dict(
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_CHAT_TEMPLATE,
        image_token="<image>",
    )
    if spec.family == "llava":
        return LlavaProcessor(CLIPImageProcessor(**image_options), tokenizer, **processor_options)
    if spec.family == "llava_next":
        images = LlavaNextImageProcessor(**image_options, image_grid_pinpoints=spec.pinpoints)
        return LlavaNextProcessor(images, tokenizer, **processor_options)
    raise ValueError(f"unknown tiny family '{spec.family}'; use 'llava' or 'llava_next'")


@contextlib.contextmanager
def _quiet_backend_fallback():
    """transformers logs errors only inside (e.g. not that torchvision is absent and PIL is used)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
