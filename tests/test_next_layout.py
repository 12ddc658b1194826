"""End-to-end check at LLaVA-NeXT-7B's real token layout (slow: run with `python -m pytest -m slow`).

A 32-layer decoder (narrow, so it runs on a CPU) with LLaVA-NeXT's anyres counts: 576 tokens per crop, a
480x640-shaped image (2340 visual tokens, 36 of them newlines) and a 336x336-shaped one (1176, 24 newlines)
in one left-padded batch, every strategy against the masked reference. The reference gets its prunable
mask from the merged embeddings, so the newline handling is checked at full size too.
"""

import pytest
import torch
from conftest import reference_prunable
from reference import RefMethod, reference_generate

import tokenprune as tp
from tokenprune.tiny import TinySpec, build_model, make_inputs, next_image_tokens

STEPS = 32
CASES = [
    (
        "st3",
        {},
        RefMethod("st3", start_layer=2, stride=3, ratio=0.2, decay="cosine", final_fraction=0.2, evict_every=8),
    ),
    ("fastv", dict(k=2, ratio=0.5), RefMethod("fastv", k=2, ratio=0.5)),
    ("vtw", dict(k=16), RefMethod("vtw", k=16)),
]
# crop side 48 px = 336 / 7: (72, 96) has 480x640's aspect ratio, (48, 48) is 336x336's
SIZES = [[(72, 96)], [(48, 48)]]


@pytest.mark.slow
@pytest.mark.parametrize("name,params,ref_method", CASES, ids=[c[0] for c in CASES])
def test_llava_next_layout_matches_reference(name, params, ref_method):
    spec = TinySpec(layers=32, hidden=64, heads=2, kv_heads=2, intermediate=128, grid=24, family="llava_next")
    assert [next_image_tokens(spec, *size[0]) for size in SIZES] == [2340, 1176]
    model = build_model(spec)
    reference_model = build_model(TinySpec(**{**spec.__dict__, "attn": "eager"}))
    data = make_inputs(spec, text_before=[35, 20], text_after=[28, 9], image_sizes=SIZES)
    with torch.no_grad(), tp.prune(model, name, **params) as run:
        out = model.generate(
            **data,
            max_new_tokens=STEPS,
            min_new_tokens=STEPS,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prunable = reference_prunable(reference_model, data)
    assert run.report.visual_tokens == [2340 - 36, 1176 - 24]
    ref = reference_generate(reference_model, data, ref_method, STEPS, prunable=prunable)
    assert run.report.kept_visual == ref.kept
    assert run.report.visual_cache_entries == ref.visual_per_step
    assert torch.equal(out.sequences[:, data["input_ids"].shape[1] :], ref.tokens)
    for a, b in zip(out.logits, ref.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
