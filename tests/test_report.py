"""Report numbers against independent counts: cache tensors actually held, hand-computed FLOPs."""

import json

import pytest
from conftest import STRATEGY_CASES, ZERO_REMOVAL, greedy, inputs, tiny_model

import tokenprune as tp
from tokenprune.report import Report


@pytest.mark.parametrize("name,params,ref_method", STRATEGY_CASES)
def test_kv_bytes_match_cache_tensors(name, params, ref_method):
    model = tiny_model()
    data = inputs("padded")
    with tp.prune(model, name, **params) as run:
        out = greedy(model, data, 9)
    held = sum(
        layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        for layer in out.past_key_values.layers
    )
    kv = run.report.kv_bytes()
    assert kv["total"]["per_step"][-1] == held
    base = greedy(model, data, 9).past_key_values
    base_held = sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in base.layers)
    assert kv["total"]["baseline_peak"] == base_held
    # pruning never costs more than the baseline
    flops = run.report.flops()
    assert flops["prefill"] <= flops["baseline_prefill"]
    assert kv["total"]["peak"] <= kv["total"]["baseline_peak"]
    assert kv["visual"]["mean"] <= kv["visual"]["baseline_mean"]
    json.dumps(run.report.to_dict())  # JSON-ready


def test_prefill_flops_by_hand():
    model = tiny_model()
    data = inputs("single")
    with tp.prune(model, "fastv", k=2, ratio=0.5) as run:
        greedy(model, data, 1)
    c = model.config.text_config
    d, f, h, kv, dh = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    n_all = int(data["attention_mask"].sum())
    n_kept = n_all - 18  # 36 visual tokens, half removed

    def layer(n):
        linear = 2 * n * (d * h * dh + 2 * d * kv * dh + h * dh * d + 3 * d * f)
        return linear + 4 * h * dh * n * (n + 1) // 2

    lm_head = 2 * d * c.vocab_size  # generate computes logits of the last token only
    flops = run.report.flops()
    assert flops["baseline_prefill"] == c.num_hidden_layers * layer(n_all) + lm_head
    assert (
        flops["prefill"]
        == 2 * layer(n_all) + (c.num_hidden_layers - 2) * layer(n_kept) + lm_head + flops["scoring_prefill"]
    )
    # scoring: one query row against the n_all keys of layer 1, every head
    assert flops["scoring_prefill"] == 2 * h * n_all * dh
    assert flops["fastv_formula"]["baseline_prefill"] == c.num_hidden_layers * (
        4 * n_all * d * d + 2 * n_all**2 * d + 2 * n_all * d * f
    )


# ------------------------------------------------------------------------------------------- equivalent visual tokens
# visual tokens per sample of the padded batches (conftest): LLaVA-1.5's 6x6 grid; the Qwen-VL grids of QWEN_BATCHES
PADDED_VISUAL = {"llava": [36, 36, 36], "qwen2_5_vl": [24, 48, 12]}


@pytest.mark.parametrize("family", list(PADDED_VISUAL))
@pytest.mark.parametrize("k,ratio", [(2, 0.5), (1, 0.7), (5, 0.25)])
def test_equivalent_visual_tokens_follow_fastvs_formula(family, k, ratio):
    model = tiny_model(family=family)
    layers = model.config.text_config.num_hidden_layers
    with tp.prune(model, "fastv", k=k, ratio=ratio) as run:
        greedy(model, inputs("padded", family=family), 2)
    report = run.report
    assert report.visual_tokens == PADDED_VISUAL[family]
    expected = [(k * n + (layers - k) * round(n * (1 - ratio))) / layers for n in PADDED_VISUAL[family]]
    assert report.equivalent_visual_tokens == expected  # exact: the same integers divided once
    assert report.to_dict()["equivalent_visual_tokens"] == expected


def test_equivalent_visual_tokens_of_vtw_count_the_layers_before_withdrawal():
    model = tiny_model()
    with tp.prune(model, "vtw", k=4) as run:
        greedy(model, inputs("single"), 2)
    assert run.report.equivalent_visual_tokens == [4 * 36 / 6]


@pytest.mark.parametrize("name,params", ZERO_REMOVAL)
def test_equivalent_visual_tokens_without_pruning_are_n(name, params):
    model = tiny_model()
    with tp.prune(model, name, **params) as run:
        greedy(model, inputs("padded"), 2)
    assert run.report.equivalent_visual_tokens == [36.0, 36.0, 36.0]


def test_equivalent_visual_tokens_of_a_report_without_prefill_are_empty():
    report = Report.empty({"name": "fastv"})
    assert report.equivalent_visual_tokens == [] and report.to_dict()["equivalent_visual_tokens"] == []
