"""Kept sets equal the top-k of eager `output_attentions` of the unmodified model at the method's layer/query.

The engine never asks for attention weights: it recomputes one row from q_proj's output and the cached
keys (sdpa here). The unmodified model's eager `output_attentions` is the independent ground truth for
the first cut, where the pruned model has not changed anything yet.
"""

import pytest
import torch
from conftest import inputs, tiny_model

import tokenprune as tp


def eager_attentions(data):
    with torch.no_grad():
        return tiny_model("eager")(**data, output_attentions=True).attentions


def topk_sets(attn_layer, rows_per_sample, visual, keep):
    out = []
    for b in range(visual.shape[0]):
        score = attn_layer[b][:, rows_per_sample[b], :].mean(0).mean(0)
        cand = visual[b].nonzero().flatten()
        order = sorted(cand.tolist(), key=lambda j: (-float(score[j]), j))
        out.append(sorted(order[: keep[b]]))
    return out


def visual_mask(data):
    vis = (data["input_ids"] == tiny_model().config.image_token_id) & data["attention_mask"].bool()
    vis[:, -1] = False
    return vis


@pytest.mark.parametrize("batch", ["single", "padded"])
@pytest.mark.parametrize("k,ratio", [(1, 0.5), (2, 0.25), (4, 0.9)])
def test_fastv_last_query_topk(batch, k, ratio):
    data = inputs(batch)
    vis = visual_mask(data)
    length = data["input_ids"].shape[1]
    with torch.no_grad(), tp.prune(tiny_model("sdpa"), "fastv", k=k, ratio=ratio) as run:
        tiny_model("sdpa")(**data)
    keep = [round(int(n) * (1 - ratio)) for n in vis.sum(1)]
    expected = topk_sets(eager_attentions(data)[k - 1], [[length - 1]] * vis.shape[0], vis, keep)
    assert run.report.kept_visual[k] == expected


@pytest.mark.parametrize("batch", ["single", "padded"])
def test_fastv_text_mean_topk(batch):
    data = inputs(batch)
    vis = visual_mask(data)
    valid = data["attention_mask"].bool()
    rows = []
    for b in range(vis.shape[0]):
        end = int(vis[b].nonzero().max())
        rows.append([j for j in range(end + 1, vis.shape[1]) if valid[b, j]])
    with torch.no_grad(), tp.prune(tiny_model("sdpa"), "fastv", k=3, ratio=0.5, query="text_mean") as run:
        tiny_model("sdpa")(**data)
    keep = [round(int(n) * 0.5) for n in vis.sum(1)]
    assert run.report.kept_visual[3] == topk_sets(eager_attentions(data)[2], rows, vis, keep)


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
