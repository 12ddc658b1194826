"""Kept sets equal the top-k of eager `output_attentions` of the unmodified model at the method's layer/query.

The engine never asks for attention weights: it recomputes one row from the query states the attention
uses (q_proj's output; after q_norm for Qwen3-VL) and the cached keys (sdpa here). The unmodified model's
eager `output_attentions` is the independent ground truth for the first cut, where the pruned model has not
changed anything yet. Qwen-VL runs here as plain forwards: the model derives its 3D positions itself and
its layers receive no position ids.
"""

import pytest
import torch
from conftest import inputs, tiny_model

import tokenprune as tp

# LLaVA-NeXT is left out: its newline tokens are placeholders that are not prunable by default
FAMILIES = [pytest.param(f, id=f) for f in ("llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")]


def eager_attentions(data, family="llava"):
    with torch.no_grad():
        return tiny_model("eager", family=family)(**data, output_attentions=True).attentions


def topk_sets(attn_layer, rows_per_sample, visual, keep):
    out = []
    for b in range(visual.shape[0]):
        score = attn_layer[b][:, rows_per_sample[b], :].mean(0).mean(0)
        cand = visual[b].nonzero().flatten()
        order = sorted(cand.tolist(), key=lambda j: (-float(score[j]), j))
        out.append(sorted(order[: keep[b]]))
    return out


def visual_mask(data, family="llava"):
    config = tiny_model(family=family).config
    ids = data["input_ids"]
    vis = ids == config.image_token_id
    if getattr(config, "video_token_id", None) is not None:
        vis |= ids == config.video_token_id
    vis &= data["attention_mask"].bool()
    vis[:, -1] = False
    return vis


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", ["single", "padded"])
@pytest.mark.parametrize("k,ratio", [(1, 0.5), (2, 0.25), (4, 0.9)])
def test_fastv_last_query_topk(batch, k, ratio, family):
    data = inputs(batch, family=family)
    vis = visual_mask(data, family)
    length = data["input_ids"].shape[1]
    model = tiny_model("sdpa", family=family)
    with torch.no_grad(), tp.prune(model, "fastv", k=k, ratio=ratio) as run:
        model(**data)
    keep = [round(int(n) * (1 - ratio)) for n in vis.sum(1)]
    expected = topk_sets(eager_attentions(data, family)[k - 1], [[length - 1]] * vis.shape[0], vis, keep)
    assert run.report.kept_visual[k] == expected


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", ["single", "padded"])
def test_fastv_text_mean_topk(batch, family):
    data = inputs(batch, family=family)
    vis = visual_mask(data, family)
    valid = data["attention_mask"].bool()
    rows = []
    for b in range(vis.shape[0]):
        end = int(vis[b].nonzero().max())
        rows.append([j for j in range(end + 1, vis.shape[1]) if valid[b, j]])
    model = tiny_model("sdpa", family=family)
    with torch.no_grad(), tp.prune(model, "fastv", k=3, ratio=0.5, query="text_mean") as run:
        model(**data)
    keep = [round(int(n) * 0.5) for n in vis.sum(1)]
    assert run.report.kept_visual[3] == topk_sets(eager_attentions(data, family)[2], rows, vis, keep)


def test_st3_first_cut_uses_previous_layer_attention():
    data = inputs("padded")
    vis = visual_mask(data)
    with torch.no_grad(), tp.prune(tiny_model("sdpa"), "st3", start_layer=3, stride=2, ratio=0.4, horizon=4) as run:
        tiny_model("sdpa")(**data)
    keep = [round(int(n) * 0.6) for n in vis.sum(1)]
    expected = topk_sets(eager_attentions(data)[2], [[vis.shape[1] - 1]] * vis.shape[0], vis, keep)
    assert run.report.kept_visual[3] == expected
    # and the scores must not come from the cut layer itself
    other = topk_sets(eager_attentions(data)[3], [[vis.shape[1] - 1]] * vis.shape[0], vis, keep)
    assert other != expected
