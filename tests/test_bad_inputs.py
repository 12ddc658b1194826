"""Inputs and models the engine cannot serve get a tokenprune error that names the problem; the model
is left exactly as it was. Two models pruned at once, also from two threads, do not interfere."""

import threading

import pytest
import torch
from conftest import FAMILIES, fresh_model, greedy, inputs, tiny_model

import tokenprune as tp
from tokenprune.tiny import TinySpec, build_model, llava_config


def hooks(model):
    return {name: (list(m._forward_pre_hooks), list(m._forward_hooks)) for name, m in model.named_modules()}


def assert_untouched(model, data, before_hooks, before_out):
    assert hooks(model) == before_hooks
    after = greedy(model, data, 4)
    assert torch.equal(after.sequences, before_out.sequences)


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholders_without_any_image_run_as_text_untouched(family):
    """transformers runs image placeholders without pixel values as ordinary text tokens; so does a pruned model,
    bit for bit, with no hook doing anything (no report)."""
    model = tiny_model(family=family)
    data = inputs("padded", family=family)
    text = {k: data[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in data}
    assert bool((data["input_ids"] == model.config.image_token_id).any())
    plain, plain_logits = greedy(model, text, 4), model(**text).logits
    with tp.prune(model, "st3") as run:
        pruned, pruned_logits = greedy(model, text, 4), model(**text).logits
    assert torch.equal(pruned.sequences, plain.sequences)
    assert all(torch.equal(a, b) for a, b in zip(pruned.logits, plain.logits, strict=True))
    assert torch.equal(pruned_logits, plain_logits)
    assert run.reports == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("how", ["generate", "forward"])
def test_placeholder_count_not_matching_the_image_features(family, how):
    """One placeholder too few (what a wrong image_seq_length or a truncated prompt gives).

    Qwen-VL's generate() computes the 3D positions from the grids before the first forward, and fails there
    itself (a shape-mismatch RuntimeError in get_rope_index), before tokenprune sees the input; a forward gets
    tokenprune's error.
    """
    model = tiny_model(family=family)
    data = inputs("single", family=family)
    before, before_hooks = greedy(model, data, 4), hooks(model)
    ids = data["input_ids"]
    first = int((ids[0] == model.config.image_token_id).nonzero()[0])
    short = {
        **data,
        "input_ids": torch.cat([ids[:, :first], ids[:, first + 1 :]], 1),
        "attention_mask": data["attention_mask"][:, 1:],
    }
    placeholders = int((short["input_ids"] == model.config.image_token_id).sum())
    if how == "generate" and "mm_token_type_ids" in data:
        short["mm_token_type_ids"] = torch.cat(
            [data["mm_token_type_ids"][:, :first], data["mm_token_type_ids"][:, first + 1 :]], 1
        )
        with tp.prune(model, "fastv"), pytest.raises(RuntimeError, match="shape mismatch"):
            model.generate(**short, max_new_tokens=2)
        assert_untouched(model, data, before_hooks, before)
        return
    if "mm_token_type_ids" in data:
        short["mm_token_type_ids"] = torch.cat(
            [data["mm_token_type_ids"][:, :first], data["mm_token_type_ids"][:, first + 1 :]], 1
        )
    with (
        tp.prune(model, "fastv"),
        pytest.raises(
            tp.UnsupportedInputError,
            # worded as transformers' own error (its tests match "Image features and image tokens do not match")
            match=rf"^Image features and image tokens do not match: .*{placeholders} image placeholder tokens.*"
            rf"1 image\(s\) give {placeholders + 1}",
        ),
    ):
        if how == "generate":
            model.generate(**short, max_new_tokens=2)
        else:
            model(**short)
    assert_untouched(model, data, before_hooks, before)


def test_images_without_placeholders():
    model = tiny_model()
    data = inputs("single")
    text = {**data, "input_ids": data["input_ids"].masked_fill(data["input_ids"] == model.config.image_token_id, 7)}
    with tp.prune(model, "fastv"), pytest.raises(tp.UnsupportedInputError, match="0 image placeholder tokens.*give 36"):
        model(**text)


@pytest.mark.parametrize("backend", ["flash_attention_2", "flex_attention", "sdpa_paged"])
def test_unsupported_attention_backends_name_the_supported_ones(backend):
    """flash_attention_2 is not installed here, so it is set on the config as a model loaded with it would be."""
    model = build_model(TinySpec(layers=2))
    model.config.text_config._attn_implementation = backend
    before_hooks = hooks(model)
    with pytest.raises(tp.UnsupportedModelError, match=rf"'{backend}' is not supported.*one of sdpa, eager"):
        with tp.prune(model, "fastv", k=1):
            pass
    assert hooks(model) == before_hooks


def test_weights_on_the_meta_device():
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config(TinySpec(layers=2)))
    with pytest.raises(tp.UnsupportedModelError, match="meta device"):
        tp.prune(model, "fastv", k=1)


def test_quantized_weights_are_refused():
    model = build_model(TinySpec(layers=2))
    proj = model.model.language_model.layers[0].self_attn.k_proj
    proj.weight = torch.nn.Parameter(proj.weight.data.to(torch.int8), requires_grad=False)
    with pytest.raises(tp.UnsupportedModelError, match="int8 weights.*float32, float16, bfloat16"):
        tp.prune(model, "fastv", k=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_zero_removal_is_bit_identical_and_pruning_runs(family):
    model = fresh_model(family, dtype=torch.bfloat16)
    data = inputs("padded", family=family)
    for key in ("pixel_values", "pixel_values_videos"):
        if key in data:
            data[key] = data[key].to(torch.bfloat16)
    base = greedy(model, data, 6)
    with tp.prune(model, "st3", ratio=0.0, final_fraction=1.0):
        same = greedy(model, data, 6)
    assert torch.equal(base.sequences, same.sequences)
    assert all(torch.equal(a, b) for a, b in zip(base.logits, same.logits, strict=True))
    with tp.prune(model, "st3") as run:
        greedy(model, data, 6)
    assert run.report.kv_bytes()["visual"]["mean_ratio"] < 1
    assert run.report.kv_dtype_bytes == 2


def test_other_vlm_family_names_the_supported_adapters():
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    config = LlavaOnevisionConfig(
        text_config=Qwen2Config(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=2
        ),
        image_token_id=63,
    )
    with pytest.raises(
        tp.UnsupportedModelError,
        match=r"LlavaOnevisionForConditionalGeneration; available adapters: llava \(LlavaForConditionalGeneration\), "
        r"llava_next \(LlavaNextForConditionalGeneration\)",
    ):
        tp.prune(LlavaOnevisionForConditionalGeneration(config), "fastv")


def test_llava_with_a_variable_size_vision_tower_is_refused():
    from transformers import PixtralVisionConfig

    config = llava_config(TinySpec(layers=2))
    config.vision_config = PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=2
    )
    from transformers import LlavaForConditionalGeneration

    with pytest.raises(tp.UnsupportedModelError, match="'pixtral' vision tower.*clip_vision_model"):
        tp.prune(LlavaForConditionalGeneration(config), "fastv", k=1)


def test_two_models_pruned_at_once_do_not_interfere():
    a, b = tiny_model(), tiny_model(family="llava_next")
    data_a, data_b = inputs("padded"), inputs("padded", family="llava_next")
    with tp.prune(a, "fastv", k=2, ratio=0.5) as run_a:
        alone_a = greedy(a, data_a, 6)
    with tp.prune(b, "st3") as run_b:
        alone_b = greedy(b, data_b, 6)
    with tp.prune(a, "fastv", k=2, ratio=0.5) as both_a, tp.prune(b, "st3") as both_b:
        out_a, out_b = greedy(a, data_a, 6), greedy(b, data_b, 6)
    assert torch.equal(out_a.sequences, alone_a.sequences) and torch.equal(out_b.sequences, alone_b.sequences)
    assert both_a.report.to_dict() == run_a.report.to_dict()
    assert both_b.report.to_dict() == run_b.report.to_dict()


def test_two_models_pruned_from_two_threads_do_not_interfere():
    """Each thread generates with its own model and session, many times, at the same time."""
    models = {"llava": tiny_model(seed=1), "llava_next": tiny_model(family="llava_next", seed=1)}
    data = {"llava": inputs("padded"), "llava_next": inputs("padded", family="llava_next")}
    strategies = {"llava": ("fastv", dict(k=2, ratio=0.5)), "llava_next": ("st3", dict())}
    expected = {}
    for key, model in models.items():
        name, params = strategies[key]
        with tp.prune(model, name, **params) as run:
            expected[key] = (greedy(model, data[key], 6).sequences, run.report.to_dict())
    results, errors = {key: [] for key in models}, []
    start = threading.Barrier(len(models))

    def work(key):
        try:
            name, params = strategies[key]
            start.wait()
            with tp.prune(models[key], name, **params) as run:
                for _ in range(4):
                    out = greedy(models[key], data[key], 6)
                    results[key].append((out.sequences, run.report.to_dict()))
        except Exception as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(key,)) for key in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for key, runs in results.items():
        assert len(runs) == 4
        for sequences, report in runs:
            assert torch.equal(sequences, expected[key][0])
            assert report == expected[key][1]


def test_the_same_model_from_a_second_thread_is_refused():
    model = tiny_model()
    inside, release, seen = threading.Event(), threading.Event(), []

    def hold():
        with tp.prune(model, "fastv"):
            inside.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(timeout=30)
    try:
        with pytest.raises(tp.AlreadyPrunedError, match="already inside"):
            with tp.prune(model, "vtw", k=1):
                pass
        seen.append(True)
    finally:
        release.set()
        holder.join()
    assert seen and hooks(model) == hooks(tiny_model())


@pytest.mark.parametrize("kind", ["single", "padded"])
def test_a_static_cache_is_refused_for_what_it_is(kind):
    """generate(cache_implementation="static") (also what its compiled path uses) is refused naming the static
    cache, also for a padded batch, whose 4D mask the static path builds (checked after the cache type)."""
    model = tiny_model()
    data = inputs(kind)
    before, before_hooks = greedy(model, data, 4), hooks(model)
    with tp.prune(model, "st3"):
        with pytest.raises(tp.UnsupportedInputError, match=r"a StaticCache \(cache_implementation='static'"):
            model.generate(**data, max_new_tokens=3, cache_implementation="static")
    assert_untouched(model, data, before_hooks, before)
