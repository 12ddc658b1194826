"""Small random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models and synthetic inputs for tests and the demo.

Nothing is downloaded: models are built from configs with random weights and tiny vision towers (2-pixel
patches, two blocks), so a forward takes milliseconds on CPU. What the real families share and the tests
care about is kept: a ViT over flattened `temporal x patch x patch` pixel rows, a 2x2 spatial merger
(an image or video of `t x h x w` patches gives `t * h * w / 4` placeholder tokens), 3D multimodal RoPE
(M-RoPE) whose positions the model computes from `mm_token_type_ids` and the grids, Qwen2.5-VL's windowed
vision attention, and Qwen3-VL's interleaved M-RoPE, timestamped video frames and deepstack levels (visual
features added to the hidden states after the first decoder layers).

Special ids sit at the top of the vocabulary, in the real order: `vocab - 4` <|vision_start|>,
`vocab - 3` <|vision_end|>, `vocab - 2` <|image_pad|>, `vocab - 1` <|video_pad|>. 0 is padding, 1
<|im_start|>, 2 <|im_end|> (end of sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
#: text tokens standing for one Qwen3-VL frame-group timestamp such as "<0.5 seconds>"
TIMESTAMP_TOKENS = 3
#: vision tokens at the top of the vocabulary; random text ids are drawn from [3, vocab - _SPECIALS)
_SPECIALS = 4


@dataclass(frozen=True)
class QwenSpec:
    family: str = "qwen2_5_vl"  # "qwen2_vl", "qwen2_5_vl" or "qwen3_vl"
    layers: int = 4
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab: int = 512
    attn: str = "sdpa"
    vision_depth: int = 2
    vision_hidden: int = 32
    vision_heads: int = 2
    patch_size: int = 2  # pixels
    temporal_patch_size: int = 2  # frames per temporal patch (an image is repeated to fill one)
    spatial_merge_size: int = 2  # merge x merge patches -> one visual token
    # Qwen3-VL: vision blocks whose outputs are added after decoder layers 0, 1, ... (in this order)
    deepstack_visual_indexes: tuple[int, ...] = (0, 1)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mrope_section(self) -> list[int]:
        """Frequencies of the (temporal, height, width) position rows; they sum to head_dim / 2.

        Same proportions as the real models: [16, 24, 24] of 64 (Qwen2/2.5-VL), interleaved [24, 20, 20] of
        64 (Qwen3-VL, where T takes the frequencies that H and W leave).
        """
        half = self.head_dim // 2
        if self.family == "qwen3_vl":
            hw = (half * 5) // 16
            return [half - 2 * hw, hw, hw]
        hw = (half * 3) // 8
        return [half - 2 * hw, hw, hw]

    @property
    def vision_start_id(self) -> int:
        return self.vocab - 4

    @property
    def vision_end_id(self) -> int:
        return self.vocab - 3

    @property
    def image_token_id(self) -> int:
        return self.vocab - 2

    @property
    def video_token_id(self) -> int:
        return self.vocab - 1

    @property
    def patch_dim(self) -> int:
        """Columns of a pixel row: 3 channels x temporal patch x patch x patch, as the real processors flatten."""
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size


def _check_family(spec: QwenSpec) -> None:
    if spec.family not in FAMILIES:
        raise ValueError(f"unknown tiny Qwen family '{spec.family}'; use one of {', '.join(FAMILIES)}")


def qwen_config(spec: QwenSpec):
    """The `Qwen2VLConfig` / `Qwen2_5_VLConfig` / `Qwen3VLConfig` of the tiny model."""
    _check_family(spec)
    if spec.head_dim % 2 or spec.head_dim < 8:
        raise ValueError(f"head_dim (hidden / heads) must be even and >= 8 for M-RoPE, not {spec.head_dim}")
    text = dict(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": spec.mrope_section},
        pad_token_id=0,
        initializer_range=0.08,  # far-from-uniform attention, as in tokenprune.tiny
    )
    vision = dict(
        depth=spec.vision_depth,
        num_heads=spec.vision_heads,
        in_channels=3,
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        spatial_merge_size=spec.spatial_merge_size,
    )
    ids = dict(
        image_token_id=spec.image_token_id,
        video_token_id=spec.video_token_id,
        vision_start_token_id=spec.vision_start_id,
        vision_end_token_id=spec.vision_end_id,
        pad_token_id=0,
    )
    qwen2_ids = dict(bos_token_id=None, eos_token_id=2)  # Qwen2(.5)-VL text configs default to the real ids
    if spec.family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        # `hidden_size` of the Qwen2-VL vision config is the merger's output: the decoder width
        vision.update(embed_dim=spec.vision_hidden, hidden_size=spec.hidden, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text | qwen2_ids, vision_config=vision, **ids)
    elif spec.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        # windows of 2x2 merged tokens, so small grids already have several windows; the last block sees all
        window = 2 * spec.spatial_merge_size * spec.patch_size
        vision.update(
            hidden_size=spec.vision_hidden,
            intermediate_size=2 * spec.vision_hidden,
            out_hidden_size=spec.hidden,
            window_size=window,
            fullatt_block_indexes=[spec.vision_depth - 1],
            tokens_per_second=2,
        )
        config = Qwen2_5_VLConfig(text_config=text | qwen2_ids, vision_config=vision, **ids)
    else:
        from transformers import Qwen3VLConfig

        if any(not 0 <= i < spec.vision_depth for i in spec.deepstack_visual_indexes):
            raise ValueError(f"deepstack_visual_indexes {spec.deepstack_visual_indexes} outside the vision depth")
        if len(spec.deepstack_visual_indexes) > spec.layers:
            raise ValueError("more deepstack levels than decoder layers")
        # the learned position grid is 8x8, interpolated to each image's patch grid as in the real model
        vision.update(
            hidden_size=spec.vision_hidden,
            intermediate_size=2 * spec.vision_hidden,
            out_hidden_size=spec.hidden,
            num_position_embeddings=64,
            deepstack_visual_indexes=list(spec.deepstack_visual_indexes),
        )
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
        config = Qwen3VLConfig(text_config={**text, "head_dim": spec.head_dim}, vision_config=vision, **ids)
    config._attn_implementation = spec.attn
    return config


def build_qwen_model(spec: QwenSpec = QwenSpec(), seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random Qwen2-VL / Qwen2.5-VL / Qwen3-VL `...ForConditionalGeneration` in eval mode."""
    from transformers import (
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
        Qwen3VLForConditionalGeneration,
    )

    torch.manual_seed(seed)
    config = qwen_config(spec)
    cls = {
        "qwen2_vl": Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
        "qwen3_vl": Qwen3VLForConditionalGeneration,
    }[spec.family]
    model = cls(config).to(dtype).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    return model


def qwen_visual_tokens(spec: QwenSpec, grid_thw) -> int:
    """Placeholder tokens of one image or video of `grid_thw` = (temporal patches, height patches, width
    patches): every `merge x merge` block of patches of every temporal patch becomes one token. Written out
    here, independently of the adapters, so tests check one against the other.
    """
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // (spec.spatial_merge_size**2)


def _grid(spec: QwenSpec, kind: str, size) -> tuple[int, int, int]:
    if kind == "image":
        (h, w), frames = size, spec.temporal_patch_size
    else:
        frames, h, w = size
    merge = spec.spatial_merge_size
    if h <= 0 or w <= 0 or h % merge or w % merge:
        raise ValueError(f"{kind} of {h}x{w} patches: both sides must be positive multiples of {merge}")
    if frames <= 0 or frames % spec.temporal_patch_size:
        raise ValueError(f"video of {frames} frames: must be a positive multiple of {spec.temporal_patch_size}")
    return frames // spec.temporal_patch_size, h, w


def make_qwen_inputs(spec: QwenSpec, samples, seed: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded batch of synthetic prompts laid out as the real Qwen processors lay them out.

    `samples[b]` lists sample b's content in order: `("text", n)` for n random text tokens, `("image", (h, w))`
    for an image of h x w patches (pixels: `h * patch_size` x `w * patch_size`), `("video", (frames, h, w))`
    for `frames` frames of h x w patches. h and w must be multiples of the merge size, frames a multiple of
    the temporal patch size. A sample of text items only is text-only.

    Layouts (what the chat template + processor of transformers 5.x give):
      image:                 <vision_start> <image_pad> * N <vision_end>
      video, Qwen2/2.5-VL:   <vision_start> <video_pad> * N <vision_end>
      video, Qwen3-VL:       <vision_start> (timestamp <vision_start> <video_pad> * h*w/4 <vision_end>) per
                             temporal patch <vision_end>; the processor expands only the template's <video_pad>,
                             so the template's outer start/end pair stays; a timestamp is TIMESTAMP_TOKENS tokens.

    Returns input_ids, attention_mask and mm_token_type_ids (0 text, 1 image, 2 video: the model needs them
    for 3D positions), plus pixel_values / image_grid_thw and pixel_values_videos / video_grid_thw when present
    (rows `t * h * w` per image or video, batch order, columns `spec.patch_dim`), and for Qwen2.5-VL videos
    second_per_grid_ts (1.0 s per temporal patch: the processor's temporal_patch_size / fps at its default 2 fps).
    """
    _check_family(spec)
    gen = torch.Generator().manual_seed(seed)
    text_high = spec.vocab - _SPECIALS

    def text(n: int) -> list[int]:
        return torch.randint(3, text_high, (n,), generator=gen).tolist()

    start, end = spec.vision_start_id, spec.vision_end_id
    rows, grids = [], {"image": [], "video": []}
    for sample in samples:
        row: list[int] = []
        for kind, size in sample:
            if kind == "text":
                row += text(int(size))
                continue
            if kind not in grids:
                raise ValueError(f"unknown content '{kind}'; use 'text', 'image' or 'video'")
            grid = _grid(spec, kind, size)
            grids[kind].append(grid)
            if kind == "image":
                row += [start] + [spec.image_token_id] * qwen_visual_tokens(spec, grid) + [end]
            elif spec.family != "qwen3_vl":
                row += [start] + [spec.video_token_id] * qwen_visual_tokens(spec, grid) + [end]
            else:
                per_frame = qwen_visual_tokens(spec, (1, grid[1], grid[2]))
                row.append(start)
                for _ in range(grid[0]):
                    row += text(TIMESTAMP_TOKENS) + [start] + [spec.video_token_id] * per_frame + [end]
                row.append(end)
        if not row:
            raise ValueError("a sample needs some content")
        rows.append(row)
    bsz, length = len(rows), max(len(r) for r in rows)
    input_ids = torch.zeros(bsz, length, dtype=torch.long)
    attention_mask = torch.zeros(bsz, length, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    types = torch.zeros_like(input_ids)
    types[input_ids == spec.image_token_id] = 1
    types[input_ids == spec.video_token_id] = 2
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": types}
    for kind, pixels_key, grid_key in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        if grids[kind]:
            grid = torch.tensor(grids[kind], dtype=torch.long)
            out[pixels_key] = torch.randn(int(grid.prod(-1).sum()), spec.patch_dim, generator=gen)
            out[grid_key] = grid
    if grids["video"] and spec.family == "qwen2_5_vl":
        out["second_per_grid_ts"] = torch.ones(len(grids["video"]))
    return out


# ------------------------------------------------------------------------------------------- tokenizer
# No `build_qwen_processor`: every Qwen-VL processor of transformers 5.23 takes a video processor, and the
# Qwen video processors need torchvision. Without it the constructor fails (its class check looks the video
# class up in a stub mapping: AttributeError) and `AutoProcessor.from_pretrained` raises ImportError in
# `AutoVideoProcessor`, for real checkpoints too. The tokenizer below and `Qwen2VLImageProcessorPil` work.


def build_qwen_tokenizer(spec: QwenSpec = QwenSpec()):
    """A word-level fast tokenizer with the tiny model's special ids, built offline.

    0 <|endoftext|> (padding), 1 <|im_start|>, 2 <|im_end|> (end of sequence), 3 <unk>, then the words of
    `tokenprune.tiny.TINY_WORDS` (cut to fit) and filler words `w<i>`, and the four vision tokens at the top.
    The tokenizer knows them as `image_token` / `video_token` / `vision_start_token` / `vision_end_token`,
    the names the Qwen processors look up.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .tiny import TINY_WORDS

    _check_family(spec)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vision = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    free = spec.vocab - len(specials) - len(vision)
    if free < 1:
        raise ValueError(f"tiny vocab must be > {len(specials) + len(vision)} for a tokenizer, not {spec.vocab}")
    words = list(TINY_WORDS[:free])
    words += [f"w{i}" for i in range(free - len(words))]
    vocab = {token: i for i, token in enumerate(specials + words + vision)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
            "im_start_token": "<|im_start|>",  # one token in chat-formatted prompts, as in the real tokenizers
        },
        padding_side="left",  # what batched generation (and tokenprune) needs
        clean_up_tokenization_spaces=False,
    )
