"""Models dispatched by accelerate (device_map): pruning works beside accelerate's AlignDevicesHooks.

Two dispatches of the same saved tiny model, both on the CPU (the only device here):
- `per_layer`: every module mapped to "cpu" on its own, hooks forced (`dispatch_model(force_hooks=True)`),
  so each decoder layer runs behind accelerate's hook, as on a multi-GPU split;
- `disk`: layers 2-4 and lm_head offloaded to disk (`from_pretrained(device_map=..., offload_folder=...)`):
  their weights sit on `meta` between forwards and accelerate's hooks load them for each forward.

Each is checked against the same model loaded normally (tokens exact, logits 1e-5, equal reports) and,
for the kept sets and tokens, against the independent masked reference (tests/reference.py).
"""

import pytest
import torch
from conftest import LAYERS, STRATEGY_CASES, greedy, inputs, spec
from reference import reference_generate

import tokenprune as tp
from tokenprune.models import save_tiny

accelerate = pytest.importorskip("accelerate")
from accelerate import dispatch_model  # noqa: E402
from accelerate.hooks import remove_hook_from_module  # noqa: E402
from transformers import LlavaForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

STEPS = 8
ATOL = 1e-5
REF_ATOL = 1e-4  # as tests/test_reference.py: dropping vs masking reorders sums only
OFFLOADED = [2, 3, 4]


def _device_map(disk: tuple[int, ...] = (), lm_head: str = "cpu") -> dict:
    layers = {f"model.language_model.layers.{i}": "disk" if i in disk else "cpu" for i in range(LAYERS)}
    return {
        "model.vision_tower": "cpu",
        "model.multi_modal_projector": "cpu",
        "model.language_model.embed_tokens": "cpu",
        **layers,
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": lm_head,
    }


def _load(directory, attn="sdpa", **kwargs):
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = LlavaForConditionalGeneration.from_pretrained(
            directory, dtype=torch.float32, attn_implementation=attn, **kwargs
        )
    finally:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_warning()
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"), spec("sdpa"), seed=0)


@pytest.fixture(scope="module")
def normal(saved):
    return _load(saved)


@pytest.fixture(scope="module")
def eager(saved):
    return _load(saved, attn="eager")


@pytest.fixture(scope="module")
def dispatched(saved, tmp_path_factory):
    per_layer = dispatch_model(_load(saved), device_map=_device_map(), force_hooks=True)
    disk = _load(
        saved,
        device_map=_device_map(disk=tuple(OFFLOADED), lm_head="disk"),
        offload_folder=str(tmp_path_factory.mktemp("offload")),
    )
    return {"per_layer": per_layer, "disk": disk}


def _layers(model):
    return list(model.model.language_model.layers)


def test_accelerate_hooks_and_offload_are_in_place(dispatched):
    for model in dispatched.values():
        assert all(hasattr(layer, "_hf_hook") for layer in _layers(model))
    disk = dispatched["disk"]
    for i, layer in enumerate(_layers(disk)):
        devices = {p.device.type for p in layer.parameters()}
        assert devices == ({"meta"} if i in OFFLOADED else {"cpu"})
    assert disk.lm_head.weight.device.type == "meta"


@pytest.mark.parametrize("kind", ["per_layer", "disk"])
@pytest.mark.parametrize("batch", ["single", "padded"])
@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_dispatched_model_prunes_like_the_normal_one(dispatched, normal, eager, kind, batch, name, params, ref_method):
    model = dispatched[kind]
    data = inputs(batch)
    with tp.prune(normal, name, **params) as expected_run:
        expected = greedy(normal, data, STEPS)
    with tp.prune(model, name, **params) as run:
        out = greedy(model, data, STEPS)
    assert torch.equal(out.sequences, expected.sequences)
    assert len(out.logits) == STEPS
    for a, b in zip(out.logits, expected.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert run.report.to_dict() == expected_run.report.to_dict()
    if kind == "disk":  # the independent reference, once per case and batch
        ref = reference_generate(eager, data, ref_method, STEPS)
        prompt = data["input_ids"].shape[1]
        assert run.report.kept_visual == ref.kept
        assert run.report.visual_cache_entries == ref.visual_per_step
        assert torch.equal(out.sequences[:, prompt:], ref.tokens)
        for a, b in zip(out.logits, ref.logits, strict=True):
            torch.testing.assert_close(a, b, atol=REF_ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["per_layer", "disk"])
def test_direct_forward_without_cache(dispatched, normal, kind):
    """use_cache=False: scores come from k_proj's output (the hooked leaf module), not the cache."""
    data = inputs("padded")
    with torch.no_grad():
        with tp.prune(normal, "fastv", k=2, ratio=0.5) as expected_run:
            expected = normal(**data, use_cache=False).logits
        with tp.prune(dispatched[kind], "fastv", k=2, ratio=0.5) as run:
            logits = dispatched[kind](**data, use_cache=False).logits
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)
    assert run.report.kept_visual == expected_run.report.kept_visual


def test_beam_search_on_offloaded_model(dispatched, normal):
    data = inputs("padded")
    kwargs = dict(max_new_tokens=5, num_beams=2, do_sample=False)
    with torch.no_grad():
        with tp.prune(normal, "st3"):
            expected = normal.generate(**data, **kwargs)
        with tp.prune(dispatched["disk"], "st3"):
            out = dispatched["disk"].generate(**data, **kwargs)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("kind", ["per_layer", "disk"])
def test_model_and_accelerate_hooks_unchanged_after_the_context(dispatched, normal, kind):
    model = dispatched[kind]
    data = inputs("padded")
    before = greedy(model, data, STEPS)
    plain = greedy(normal, data, STEPS)
    assert torch.equal(before.sequences, plain.sequences)
    hooks = {name: m._hf_hook for name, m in model.named_modules() if hasattr(m, "_hf_hook")}
    torch_hooks = _torch_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with tp.prune(model, "st3"):
            greedy(model, data, 4)
            raise RuntimeError("boom")
    with tp.prune(model, "fastv", k=1, ratio=0.7):
        greedy(model, data, 4)
    after = greedy(model, data, STEPS)
    assert torch.equal(after.sequences, before.sequences)
    for a, b in zip(after.logits, before.logits, strict=True):
        assert torch.equal(a, b)
    assert {name: m._hf_hook for name, m in model.named_modules() if hasattr(m, "_hf_hook")} == hooks
    assert _torch_hooks(model) == torch_hooks  # every hook tokenprune added is gone
    if kind == "disk":  # offloaded weights went back to meta: accelerate still owns them
        assert {p.device.type for i in OFFLOADED for p in _layers(model)[i].parameters()} == {"meta"}


def test_meta_weights_nothing_loads_are_refused(saved, tmp_path):
    """Offloaded weights are accepted only while an accelerate hook will load them."""
    model = _load(saved, device_map=_device_map(disk=(3,)), offload_folder=str(tmp_path))
    with tp.prune(model, "fastv", k=2, ratio=0.5):
        pass
    remove_hook_from_module(_layers(model)[3], recurse=True)  # weights stay on meta, nobody loads them
    with pytest.raises(tp.UnsupportedModelError, match=r"meta device.*layers\.3\.") as info:
        tp.prune(model, "fastv", k=2, ratio=0.5)
    assert "more" in str(info.value)  # the message names a few weights, then counts the rest


def _torch_hooks(model):
    return {name: (list(m._forward_pre_hooks), list(m._forward_hooks)) for name, m in model.named_modules()}


@pytest.mark.filterwarnings("ignore:The following device_map keys")  # accelerate lists the parameter
@pytest.mark.parametrize("batch", ["single", "padded"])
def test_llava_next_with_disk_offload(tmp_path, batch):
    """LLaVA-NeXT (ragged visual counts, newline tokens) with offloaded layers prunes like the normal model."""
    from transformers import LlavaNextForConditionalGeneration

    directory = save_tiny(tmp_path / "next", spec("sdpa", family="llava_next"), seed=0)
    device_map = {**_device_map(disk=(1, 4)), "model.image_newline": "cpu"}  # a parameter, not a module
    hf_logging.set_verbosity_error()
    load = dict(dtype=torch.float32, attn_implementation="sdpa")
    normal = LlavaNextForConditionalGeneration.from_pretrained(directory, **load).eval()
    model = LlavaNextForConditionalGeneration.from_pretrained(
        directory, device_map=device_map, offload_folder=str(tmp_path / "offload"), **load
    ).eval()
    hf_logging.set_verbosity_warning()
    data = inputs(batch, family="llava_next")
    with tp.prune(normal, "st3", start_layer=1, stride=1, ratio=0.4, horizon=6) as expected_run:
        expected = greedy(normal, data, STEPS)
    with tp.prune(model, "st3", start_layer=1, stride=1, ratio=0.4, horizon=6) as run:
        out = greedy(model, data, STEPS)
    assert torch.equal(out.sequences, expected.sequences)
    for a, b in zip(out.logits, expected.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert run.report.to_dict() == expected_run.report.to_dict()


@pytest.mark.filterwarnings("ignore:The following device_map keys")
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_vl_saved_and_dispatched_with_disk_offload(tmp_path, family):
    """Qwen-VL through save_pretrained / from_pretrained, with offloaded layers (Qwen3-VL: deepstack levels
    added after layers 0 and 1, layer 1 on disk), prunes like the model loaded normally: images and a video in
    one padded batch."""
    from transformers import AutoModelForImageTextToText

    from tokenprune.tiny_qwen import build_qwen_model

    directory = tmp_path / family
    build_qwen_model(spec("sdpa", family=family), seed=0).save_pretrained(directory)
    layers = {f"model.language_model.layers.{i}": "disk" if i in (1, 4) else "cpu" for i in range(LAYERS)}
    device_map = {
        "model.visual": "cpu",
        "model.language_model.embed_tokens": "cpu",
        **layers,
        "model.language_model.norm": "cpu",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    hf_logging.set_verbosity_error()
    load = dict(dtype=torch.float32, attn_implementation="sdpa")
    normal = AutoModelForImageTextToText.from_pretrained(directory, **load).eval()
    model = AutoModelForImageTextToText.from_pretrained(
        directory, device_map=device_map, offload_folder=str(tmp_path / "offload"), **load
    ).eval()
    hf_logging.set_verbosity_warning()
    data = inputs("padded", family=family)
    params = dict(start_layer=1, stride=1, ratio=0.4, horizon=6)
    with tp.prune(normal, "st3", **params) as expected_run:
        expected = greedy(normal, data, STEPS)
    with tp.prune(model, "st3", **params) as run:
        out = greedy(model, data, STEPS)
    assert torch.equal(out.sequences, expected.sequences)
    for a, b in zip(out.logits, expected.logits, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert run.report.to_dict() == expected_run.report.to_dict()
    assert run.report.visual_tokens_per_video == [[], [32], []]
