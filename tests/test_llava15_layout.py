"""End-to-end checks at LLaVA-1.5's real token layout.

A 32-layer decoder (narrow, so it runs on a CPU) with 576 visual tokens per image and ~64 text tokens, a
left-padded batch of two, 64 greedy tokens: every strategy against the masked reference, so schedules,
rounding and VTA over a long horizon are checked at the sizes users run, not only on toy layouts.
"""

import pytest
import torch
from reference import RefMethod, reference_generate

import tokenprune as tp
from tokenprune.tiny import TinySpec, build_model, make_inputs

STEPS = 64
CASES = [
    # ~40 s on 2 CPU cores (the reference recomputes VTA's eviction scores at every layer and step): run with -m slow
    pytest.param(
        "st3",
        {},
        RefMethod("st3", start_layer=2, stride=3, ratio=0.2, decay="cosine", final_fraction=0.2, evict_every=8),
        id="st3",
        marks=pytest.mark.slow,
    ),
    pytest.param("fastv", dict(k=2, ratio=0.5), RefMethod("fastv", k=2, ratio=0.5), id="fastv"),
    pytest.param("vtw", dict(k=16), RefMethod("vtw", k=16), id="vtw"),
]


@pytest.mark.parametrize("name,params,ref_method", CASES)
def test_llava15_layout_matches_reference(name, params, ref_method):
    spec = TinySpec(layers=32, hidden=64, heads=4, kv_heads=4, intermediate=128, grid=24, attn="sdpa")
    model = build_model(spec)
    reference_model = build_model(TinySpec(**{**spec.__dict__, "attn": "eager"}))
    data = make_inputs(spec, text_before=[35, 20], text_after=[28, 9])
    with torch.no_grad(), tp.prune(model, name, **params) as run:
        out = model.generate(
            **data,
            max_new_tokens=STEPS,
            min_new_tokens=STEPS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    ref = reference_generate(reference_model, data, ref_method, STEPS)
    assert run.report.kept_visual == ref.kept
    assert run.report.visual_cache_entries == ref.visual_per_step
    assert torch.equal(out.sequences[:, data["input_ids"].shape[1] :], ref.tokens)
    for a, b in zip(out.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
