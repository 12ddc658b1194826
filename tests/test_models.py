"""tokenprune.models and tiny.build_processor: real processors for the tiny models, loading and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import tokenprune as tp
from tokenprune.errors import ConfigError, UnsupportedModelError
from tokenprune.models import load_model, save_tiny
from tokenprune.tiny import TinySpec, build_model, build_processor, next_image_tokens

SMALL = dict(layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab=128, grid=4)


def _image(height: int, width: int) -> Image.Image:
    return Image.new("RGB", (width, height), (200, 30, 30))


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_save_and_load_round_trip_gives_identical_logits(tmp_path, family):
    spec = TinySpec(**SMALL, family=family)
    save_tiny(tmp_path / "m", spec, seed=3)
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    assert loaded.family == family and loaded.num_layers == 2 and loaded.source == str(tmp_path / "m")
    assert type(loaded.model).__name__ in loaded.description and "2 layers" in loaded.description
    inputs = loaded.inputs([_image(10, 14)], "What colour is the square?")
    assert inputs["pixel_values"].dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(loaded.model(**inputs).logits, build_model(spec, seed=3)(**inputs).logits)
    out = loaded.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert isinstance(loaded.decode(out[0, inputs["input_ids"].shape[1] :]), str)


def test_tiny_source_overrides_and_description():
    loaded = load_model("tiny", tiny=SMALL, seed=1)
    assert loaded.source == "tiny" and loaded.family == "llava" and loaded.num_layers == 2
    assert loaded.description == "tiny random LLaVA-1.5 (2 layers, hidden 32)"
    assert tp.resolve_adapter(loaded.model).name == "llava"
    nxt = load_model("tiny", family="llava_next", tiny=SMALL, dtype="bfloat16")
    assert nxt.family == "llava_next" and nxt.dtype == torch.bfloat16
    assert nxt.inputs([_image(8, 8)], "hi")["pixel_values"].dtype == torch.bfloat16


def test_llava_processor_placeholders_and_generate():
    spec = TinySpec(**SMALL)
    processor, model = build_processor(spec), build_model(spec)
    loaded = load_model("tiny", tiny=SMALL)
    text = loaded.prompt_text("What is it?", 2)
    assert text == "USER: <image>\n<image>\nWhat is it? ASSISTANT:"
    for size in [(8, 8), (30, 50), (50, 10)]:
        inputs = processor(images=[_image(*size)], text=loaded.prompt_text("What is it?"), return_tensors="pt")
        assert int((inputs["input_ids"] == spec.vocab - 1).sum()) == spec.visual_tokens
        assert inputs["input_ids"][0, 0] == 1  # bos
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    inputs = processor(images=[_image(8, 8), _image(9, 20)], text=text, return_tensors="pt")
    assert int((inputs["input_ids"] == spec.vocab - 1).sum()) == 2 * spec.visual_tokens


@pytest.mark.parametrize("size", [(8, 8), (30, 50), (50, 20), (7, 40), (40, 9)])
def test_next_processor_placeholders_follow_image_size(size):
    spec = TinySpec(**SMALL, family="llava_next")
    processor, model = build_processor(spec), build_model(spec)
    text = "USER: <image>\nWhat is it? ASSISTANT:"
    inputs = processor(images=[_image(*size)], text=text, return_tensors="pt")
    assert int((inputs["input_ids"] == spec.vocab - 1).sum()) == next_image_tokens(spec, *size)
    assert inputs["image_sizes"].tolist() == [list(size)]
    with tp.prune(model, "fastv", k=1, ratio=0.5) as run:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert run.report.to_dict()["prompt_tokens"] == [inputs["input_ids"].shape[1]]


def test_tokenizer_special_ids_words_and_decode():
    spec = TinySpec(**SMALL)
    tok = build_processor(spec).tokenizer
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<image>") == spec.vocab - 1 and len(tok) == spec.vocab
    ids = tok("Is it red? yes, B. zzzunknown").input_ids
    assert ids[0] == 1 and tok.unk_token_id in ids
    assert tok.decode(tok("Is it red? yes").input_ids, skip_special_tokens=True) == "Is it red ? yes"
    for word in ["A", "B", "C", "D", "E", "yes", "no"]:
        assert tok.convert_tokens_to_ids(word) != tok.unk_token_id


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ConfigError, match="llava_next"):
        load_model("tiny", family="qwen")
    with pytest.raises(ConfigError, match=r"layerz.*allowed: layers"):
        load_model("tiny", tiny={"layerz": 2})
    with pytest.raises(ConfigError, match="must be int"):
        load_model("tiny", tiny={"layers": "2"})
    with pytest.raises(ConfigError, match="mistral"):
        load_model("tiny", tiny={**SMALL, "backbone": "gpt"})
    with pytest.raises(ConfigError, match="float16"):
        load_model("tiny", tiny=SMALL, dtype="fp8")
    with pytest.raises(ConfigError, match="eager"):
        load_model("tiny", tiny=SMALL, attn="flash")
    with pytest.raises(ConfigError, match="device"):
        load_model("tiny", tiny=SMALL, device="tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            load_model("tiny", tiny=SMALL, device="cuda")
    with pytest.raises(ConfigError, match="only"):
        load_model(str(tmp_path), tiny=SMALL)
    # a loadable image-text model no adapter serves
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    other = tmp_path / "paligemma"
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=4
        ).to_dict(),
        text_config=GemmaConfig(
            vocab_size=64,
            head_dim=8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ).to_dict(),
    )
    PaliGemmaForConditionalGeneration(config).save_pretrained(other)
    build_processor(TinySpec(**SMALL)).save_pretrained(other)
    with pytest.raises(UnsupportedModelError, match="type 'paligemma' \\(PaliGemmaForConditionalGeneration\\)"):
        load_model(str(other))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "nonsense"}))
    with pytest.raises(UnsupportedModelError, match="type 'nonsense' \\(no image-text-to-text model class"):
        load_model(str(broken))


# ------------------------------------------------------------------------------------------- Qwen-VL
QWEN_SMALL = dict(layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab=256, patch_size=4)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_tiny_qwen_inputs_placeholders_follow_the_grid_and_generate(family):
    from tokenprune.tiny_qwen import QwenSpec, qwen_visual_tokens

    loaded = load_model("tiny", family=family, tiny=QWEN_SMALL, seed=1)
    assert loaded.family == family and loaded.num_layers == 2 and loaded.source == "tiny"
    assert tp.resolve_adapter(loaded.model).name == "qwen_vl"
    text = loaded.prompt_text("What is it?", 2)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2 and text.endswith("assistant\n")
    config = loaded.model.config
    for sizes in [[(64, 48)], [(40, 100), (30, 30)]]:
        inputs = loaded.inputs([_image(*size) for size in sizes], "What colour is the square?")
        grids = inputs["image_grid_thw"]
        image_processor = loaded.processor.image_processor
        assert grids.shape == (len(sizes), 3) and image_processor.patch_size == 4 and image_processor.merge_size == 2
        placeholders = inputs["input_ids"][0] == config.image_token_id
        assert int(placeholders.sum()) == sum(qwen_visual_tokens(QwenSpec(), g) for g in grids) > 0
        assert torch.equal(inputs["mm_token_type_ids"][0], placeholders.long())
        assert inputs["pixel_values"].shape[0] == int(grids.prod(-1).sum())
        assert int((inputs["input_ids"] == config.vision_start_token_id).sum()) == len(sizes)
        with tp.prune(loaded.model, "st3") as run:
            out = loaded.model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert run.report.to_dict()["prompt_tokens"] == [inputs["input_ids"].shape[1]]
        assert isinstance(loaded.decode(out[0, inputs["input_ids"].shape[1] :]), str)


def test_saved_tiny_qwen_directory_loads_without_auto_processor(tmp_path):
    from tokenprune.models import tiny_spec
    from tokenprune.qwen_inputs import QwenInputs

    spec = tiny_spec("qwen2_5_vl", QWEN_SMALL)
    save_tiny(tmp_path / "q", spec, seed=2)
    loaded = load_model(str(tmp_path / "q"), device="cpu")
    assert isinstance(loaded.processor, QwenInputs) and loaded.family == "qwen_vl" and loaded.num_layers == 2
    fresh = load_model("tiny", family="qwen2_5_vl", tiny=QWEN_SMALL, seed=2)
    inputs = loaded.inputs([_image(40, 56)], "What colour is the square?")
    expected = fresh.inputs([_image(40, 56)], "What colour is the square?")
    assert inputs.keys() == expected.keys() and all(torch.equal(inputs[k], expected[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(loaded.model(**inputs).logits, fresh.model(**inputs).logits)


def test_tiny_qwen_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"Qwen-VL model field\(s\) grid; allowed: family, layers"):
        load_model("tiny", family="qwen2_vl", tiny={"grid": 4})
    with pytest.raises(ConfigError, match="qwen2_vl, qwen2_5_vl, qwen3_vl"):
        load_model("tiny", family="qwen2_vl", tiny={"family": "llava"})
    with pytest.raises(ConfigError, match="head_dim"):
        load_model("tiny", family="qwen3_vl", tiny={**QWEN_SMALL, "heads": 16})
    # a list (from a config file) for a tuple field is taken as the tuple
    loaded = load_model("tiny", family="qwen3_vl", tiny={**QWEN_SMALL, "deepstack_visual_indexes": [1]})
    assert loaded.model.config.vision_config.deepstack_visual_indexes == [1]
    # a Qwen-VL directory whose tokenizer / image processor cannot be loaded either: one clear error
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ConfigError, match="torchvision"):
        load_model(str(tmp_path))


def _frame(shade: int):
    from PIL import Image

    return Image.new("RGB", (40, 24), (shade, 255 - shade, 90))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_tiny_qwen_video_inputs_follow_the_processors_layout_and_generate(family):
    from tokenprune.tiny_qwen import QwenSpec, qwen_visual_tokens

    loaded = load_model("tiny", family=family, tiny=QWEN_SMALL, seed=1)
    config = loaded.model.config
    frames = [_frame(shade) for shade in (10, 80, 150, 220, 250)]  # 5 frames: the last patch repeats frame 4
    inputs = loaded.processor(videos=[frames], text=loaded.prompt_text("What moves?", 0, 1), fps=1.0)
    grid = inputs["video_grid_thw"]
    assert grid.tolist() == [[3, 24 // 4, 40 // 4]]
    ids = inputs["input_ids"][0]
    placeholders = ids == config.video_token_id
    assert int(placeholders.sum()) == qwen_visual_tokens(QwenSpec(), grid[0]) == 3 * 6 * 10 // 4
    assert torch.equal(inputs["mm_token_type_ids"][0], 2 * placeholders.long())
    # the rows of each temporal patch hold its two frames, each as the image processor makes it alone
    image_rows = [loaded.processor(images=[f], text="<|image_pad|>")["pixel_values"] for f in frames]
    rows = inputs["pixel_values_videos"].view(3, 60, 3, 2, 16)
    for patch, (first, second) in enumerate([(0, 1), (2, 3), (4, 4)]):
        assert torch.equal(rows[patch, :, :, 0], image_rows[first].view(60, 3, 2, 16)[:, :, 0])
        assert torch.equal(rows[patch, :, :, 1], image_rows[second].view(60, 3, 2, 16)[:, :, 1])
    run_text = loaded.processor._video_tokens("<|video_pad|>", grid[0].tolist(), len(frames), 1.0)
    if family == "qwen3_vl":  # one run per temporal patch, after its timestamp (frames 0-1, 2-3, 4-4 at 1 fps)
        run = "<|vision_start|>" + "<|video_pad|>" * 15 + "<|vision_end|>"
        assert run_text == "".join(f"<{t} seconds>" + run for t in ("0.5", "2.5", "4.0"))
        assert int((ids == config.vision_start_token_id).sum()) == 1 + 3
    else:
        assert run_text == "<|video_pad|>" * 45 and int((ids == config.vision_start_token_id).sum()) == 1
    if family == "qwen2_5_vl":
        assert inputs["second_per_grid_ts"].tolist() == [2.0]  # temporal_patch_size / fps
    with tp.prune(loaded.model, "st3") as run:
        loaded.model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert run.report.to_dict()["visual_tokens_per_video"] == [[45]]


def test_equal_frames_give_the_images_own_pixel_rows():
    """An image is its own frame repeated: a video of two copies is exactly the image's rows."""
    loaded = load_model("tiny", family="qwen2_vl", tiny=QWEN_SMALL)
    image = _image(40, 56)
    video = loaded.processor(videos=[[image, image]], text="<|video_pad|>")
    alone = loaded.processor(images=[image], text="<|image_pad|>")
    assert torch.equal(video["pixel_values_videos"], alone["pixel_values"])
    assert torch.equal(video["video_grid_thw"], alone["image_grid_thw"])


def test_qwen_video_input_errors():
    loaded = load_model("tiny", family="qwen2_vl", tiny=QWEN_SMALL)
    with pytest.raises(tp.UnsupportedInputError, match="1 video slot"):
        loaded.processor(videos=[], text="<|video_pad|>")
    with pytest.raises(tp.UnsupportedInputError, match="differ in size"):
        loaded.processor(videos=[[_frame(1), _image(40, 56)]], text="<|video_pad|>")
    with pytest.raises(tp.UnsupportedInputError, match="no frames"):
        loaded.processor(videos=[[]], text="<|video_pad|>")
    with pytest.raises(tp.UnsupportedInputError, match="fps must be positive"):
        loaded.processor(videos=[[_frame(1)]], text="<|video_pad|>", fps=0)
    inputs = loaded.inputs([], "What moves?", videos=[[_frame(1), _frame(2)]])
    assert inputs["video_grid_thw"].tolist() == [[1, 6, 10]] and "pixel_values" not in inputs
