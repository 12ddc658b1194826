"""Compiled models are refused (docs/usage.md, "generate() modes"): torch.compile does not re-check module
hooks when they change (dynamo's `skip_nnmodule_hook_guards`, on by default), so compiled code keeps the hooks
it was traced with while tokenprune's per-layer hooks change between the prefill and the decode steps. Measured
before this refusal existed: a model compiled before the block ran ST3's decode steps without the query hooks
they had installed and failed; nothing guarantees such a run fails rather than computes with the wrong masks.
Every refusal leaves the model as it was."""

import pytest
import torch
from conftest import fresh_model, greedy, inputs

import tokenprune as tp

PATTERN = r"is compiled with torch.compile.*hooks.*silently wrong; prune the uncompiled model"


def _compile_in_place(model) -> None:
    model.compile()


def _compile_forward(model) -> None:
    model.forward = torch.compile(model.forward)


def _compile_language_model(model) -> None:
    model.model.language_model.compile()


@pytest.mark.parametrize(
    "compile_,where",
    [
        (_compile_in_place, "this LlavaForConditionalGeneration"),
        (_compile_forward, "this LlavaForConditionalGeneration"),
        (_compile_language_model, "module 'model.language_model' of this LlavaForConditionalGeneration"),
    ],
    ids=["model.compile", "compiled-forward", "compiled-submodule"],
)
def test_a_compiled_model_is_refused_on_entering(compile_, where):
    model = fresh_model()
    compile_(model)
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    with pytest.raises(tp.UnsupportedModelError, match=rf"^{where} {PATTERN}"):
        with tp.prune(model, "fastv"):
            pass
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()) == hooks


def test_a_model_compiled_inside_the_block_is_refused_at_its_next_forward():
    model = fresh_model()
    data = inputs("padded")
    before = greedy(model, data, 3)
    with tp.prune(model, "fastv", k=2, ratio=0.5):
        model.compile()  # compiles lazily, at the next call: refused before anything is traced
        with pytest.raises(tp.UnsupportedModelError, match=PATTERN):
            greedy(model, data, 3)
    model._compiled_call_impl = None  # back to the eager model
    assert torch.equal(greedy(model, data, 3).sequences, before.sequences)


def test_torch_compile_wrapper_is_refused_naming_the_model():
    model = fresh_model()
    with pytest.raises(tp.UnsupportedModelError, match=r"torch.compile's wrapper of a LlavaForConditionalGeneration"):
        tp.prune(torch.compile(model), "fastv")
