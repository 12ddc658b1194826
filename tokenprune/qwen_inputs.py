"""Qwen-VL model inputs without a Qwen processor (they all need torchvision through their video processor).

`QwenInputs` joins a tokenizer and a Qwen-VL image processor (`Qwen2VLImageProcessorPil` works without
torchvision) and lays images and videos out as the real processors do: each image slot
`<|vision_start|><|image_pad|><|vision_end|>` gets `t * h * w / merge**2` <|image_pad|> tokens (from the
image processor's `image_grid_thw`), each video slot (`<|video_pad|>`) as many <|video_pad|> tokens for its
`video_grid_thw` (Qwen3-VL: one run per temporal patch, each after its `<t seconds>` timestamp, as
`Qwen3VLProcessor` writes them), and `mm_token_type_ids` marks them (0 text, 1 image, 2 video).

A video is a list of frames already sampled (PIL images of one size). Each frame is resized and normalised
by the image processor (so frames get the image pixel limits, not the video processor's), and every
`temporal_patch_size` consecutive frames make one temporal patch, with the rows in the order of
`Qwen2VLVideoProcessor.patchify` (a last incomplete patch repeats the last frame, as it does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import UnsupportedInputError
from .tiny_qwen import QwenSpec

#: `model_type` of the Qwen-VL configs this helper serves (config.json of a saved model)
MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_SLOT = VISION_START + IMAGE_PAD + VISION_END
VIDEO_SLOT = VISION_START + VIDEO_PAD + VISION_END
#: frames per second of videos given as frames: Qwen's default sampling rate
DEFAULT_FPS = 2.0
#: pixels of the largest image the tiny models' image processor keeps (bigger ones are scaled down, as Qwen's
#: max_pixels does): 300 visual tokens with 8-pixel patches, 75 with 16-pixel ones
TINY_MAX_PIXELS = 320 * 240


@dataclass
class QwenInputs:
    """Processor-like: `prompt_text(prompt, n, videos)`, `__call__(images=, videos=, text=, return_tensors="pt")`,
    `tokenizer`. `family` (a config's `model_type`) chooses the video layout and inputs."""

    tokenizer: Any
    image_processor: Any
    family: str = "qwen2_5_vl"

    def prompt_text(self, prompt: str, num_images: int = 1, num_videos: int = 0) -> str:
        """A user turn with `num_images` image slots, `num_videos` video slots and `prompt`, then the
        assistant's turn: the tokenizer's chat template if it has one (real checkpoints), else Qwen's ChatML."""
        if getattr(self.tokenizer, "chat_template", None):
            content = [{"type": "image"}] * num_images + [{"type": "video"}] * num_videos
            messages = [{"role": "user", "content": content + [{"type": "text", "text": prompt}]}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        slots = IMAGE_SLOT * num_images + VIDEO_SLOT * num_videos
        return f"<|im_start|>user\n{slots}{prompt}<|im_end|>\n<|im_start|>assistant\n"

    def __call__(
        self, images=None, videos=None, text: str = "", return_tensors: str = "pt", fps: float = DEFAULT_FPS
    ) -> dict[str, torch.Tensor]:
        """Model inputs for `text` with one image slot per image and one video slot per video (a list of
        frames, sampled at `fps` frames per second: Qwen2.5-VL's temporal positions and Qwen3-VL's timestamps
        use it)."""
        images, videos = list(images or []), [list(v) for v in (videos or [])]
        image_token = getattr(self.tokenizer, "image_token", None) or IMAGE_PAD
        video_token = getattr(self.tokenizer, "video_token", None) or VIDEO_PAD
        for token, items, what in ((image_token, images, "image"), (video_token, videos, "video")):
            if text.count(token) != len(items):
                raise UnsupportedInputError(
                    f"the text has {text.count(token)} {what} slot(s) ({token}) for {len(items)} {what}(s); "
                    f"give one slot per {what} (prompt_text() writes them)"
                )
        out: dict[str, torch.Tensor] = {}
        merge = int(self.image_processor.merge_size)
        if images:
            pixels = self.image_processor(images=images, return_tensors="pt")
            counts = [int(g.prod()) // merge**2 for g in pixels["image_grid_thw"]]
            text = _expand(text, image_token, [image_token * n for n in counts])
            out.update(pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"])
        if videos:
            if fps <= 0:
                raise UnsupportedInputError(f"fps must be positive, got {fps}")
            patches = [self._video_patches(frames) for frames in videos]
            grids = torch.tensor([grid for _, grid in patches])
            runs = [
                self._video_tokens(video_token, grid, len(frames), fps)
                for (_, grid), frames in zip(patches, videos, strict=True)
            ]
            text = _expand(text, video_token, runs)
            out.update(pixel_values_videos=torch.cat([rows for rows, _ in patches]), video_grid_thw=grids)
            if self.family == "qwen2_5_vl":
                out["second_per_grid_ts"] = torch.full((len(videos),), self.image_processor.temporal_patch_size / fps)
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        ids = encoded["input_ids"]
        types = (ids == self.tokenizer.convert_tokens_to_ids(image_token)).long()
        types[ids == self.tokenizer.convert_tokens_to_ids(video_token)] = 2
        return {"input_ids": ids, "attention_mask": encoded["attention_mask"], "mm_token_type_ids": types, **out}

    def _video_patches(self, frames: list) -> tuple[torch.Tensor, list[int]]:
        """(rows of pixel_values_videos, [t, h, w]) of one video of PIL frames."""
        if not frames:
            raise UnsupportedInputError("a video has no frames; give a list of at least one PIL image")
        if len({frame.size for frame in frames}) != 1:
            raise UnsupportedInputError(f"the frames of a video differ in size: {sorted({f.size for f in frames})}")
        temporal = int(self.image_processor.temporal_patch_size)
        frames = frames + frames[-1:] * (-len(frames) % temporal)
        pixels = self.image_processor(images=frames, return_tensors="pt")
        _, h, w = pixels["image_grid_thw"][0].tolist()
        size = int(self.image_processor.patch_size)
        # each frame's rows hold it `temporal` times; a temporal patch takes one copy of each of its frames
        per_frame = pixels["pixel_values"].view(len(frames), h * w, -1, temporal, size * size)[..., 0, :]
        grouped = per_frame.view(len(frames) // temporal, temporal, h * w, -1, size * size).permute(0, 2, 3, 1, 4)
        return grouped.reshape(len(frames) // temporal * h * w, -1), [len(frames) // temporal, h, w]

    def _video_tokens(self, video_token: str, grid: list[int], frames: int, fps: float) -> str:
        """The placeholder text of one video of `frames` frames: one run, or (Qwen3-VL) one timestamped run per
        temporal patch."""
        t, h, w = grid
        per_patch = h * w // int(self.image_processor.merge_size) ** 2
        if self.family not in ("qwen3_vl", "qwen3_vl_moe"):
            return video_token * (t * per_patch)
        temporal = int(self.image_processor.temporal_patch_size)
        # the mean time of the first and last frame of each temporal patch, the last frame repeated to fill the
        # last one (as Qwen3VLProcessor._calculate_timestamps)
        index = [min(i, frames - 1) for i in range(t * temporal)]
        times = [(index[i * temporal] + index[i * temporal + temporal - 1]) / 2 / fps for i in range(t)]
        return "".join(f"<{time:.1f} seconds>" + VISION_START + video_token * per_patch + VISION_END for time in times)

    def save_pretrained(self, directory) -> None:
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)


def _expand(text: str, token: str, replacements: list[str]) -> str:
    """`text` with its i-th `token` replaced by `replacements[i]`."""
    pieces = text.split(token)
    return pieces[0] + "".join(r + piece for r, piece in zip(replacements, pieces[1:], strict=True))


def tiny_image_processor(spec: QwenSpec, max_pixels: int = TINY_MAX_PIXELS):
    """The PIL Qwen-VL image processor for the tiny model of `spec`: its patch, temporal patch and merge sizes,
    images scaled to at most `max_pixels` pixels (and at least 4 visual tokens)."""
    from transformers import Qwen2VLImageProcessorPil

    factor = spec.patch_size * spec.spatial_merge_size  # pixels per visual token side
    return Qwen2VLImageProcessorPil(
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.spatial_merge_size,
        size={"shortest_edge": 4 * factor**2, "longest_edge": max(max_pixels, 4 * factor**2)},
    )


def tiny_qwen_inputs(spec: QwenSpec) -> QwenInputs:
    from .tiny_qwen import build_qwen_tokenizer

    return QwenInputs(build_qwen_tokenizer(spec), tiny_image_processor(spec), family=spec.family)


def load_qwen_inputs(directory, family: str) -> QwenInputs:
    """`QwenInputs` from a saved Qwen-VL directory of model type `family`: `AutoTokenizer` + `AutoImageProcessor`
    (the PIL backend)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    image_processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
    return QwenInputs(tokenizer, image_processor, family=family)
