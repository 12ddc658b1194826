"""VTW calibration (`find_k`) against independent computations.

The reference curve comes from tests/reference.py (eager attention, every token kept, withdrawn tokens
hidden by explicit masks) and an independent KL (torch.distributions, float64). Tolerance: the masked
reference and the pruned sdpa run agree to eps = 1e-4 in the logits (tests/test_reference.py). Moving
the logits of p and q by at most eps moves log p and log q by at most 2 eps each, and p by a factor
within exp(+-2 eps), so KL(p || q) = sum p (log p - log q) moves by at most about
eps * (4 + 2 * E_p|log p - log q|): the bound used per sample below.
"""

import math

import pytest
import torch
from conftest import FAMILIES, LAYERS, inputs, reference_prunable, sample_of, spec, tiny_model
from reference import RefMethod, reference_generate
from transformers import BatchFeature

import tokenprune as tp
from tokenprune.calibration import Calibration, find_k
from tokenprune.tiny import make_inputs
from tokenprune.tiny_qwen import FAMILIES as QWEN_FAMILIES
from tokenprune.tiny_qwen import make_qwen_inputs

EPS = 1e-4


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def calibrated(family) -> Calibration:
    return find_k(tiny_model(family=family), [inputs("padded", family=family)], eta=0.0)


def _kl_and_bound(pruned: torch.Tensor, full: torch.Tensor) -> tuple[float, float]:
    p = torch.distributions.Categorical(logits=pruned.double())
    q = torch.distributions.Categorical(logits=full.double())
    gap = (p.logits - q.logits).abs()
    return float(torch.distributions.kl_divergence(p, q)), EPS * (4 + 2 * float((p.probs * gap).sum()))


def test_curve_matches_the_masked_reference(family, calibrated):
    eager = tiny_model("eager", family=family)
    data = inputs("padded", family=family)
    prunable = reference_prunable(eager, data)
    with torch.no_grad():
        full = eager(**data).logits[:, -1]
    assert list(calibrated.curve) == list(range(LAYERS + 1))
    assert calibrated.samples == 3 and calibrated.num_layers == LAYERS
    bounds = []
    for k in range(LAYERS + 1):
        pruned = reference_generate(eager, data, RefMethod("vtw", k=k), 1, prunable=prunable).logits[0]
        expected = [_kl_and_bound(p, f) for p, f in zip(pruned, full, strict=True)]
        bounds += [bound for _, bound in expected]
        for b, (got, (kl, bound)) in enumerate(zip(calibrated.per_sample[k], expected, strict=True)):
            assert abs(got - kl) <= bound, f"k={k} sample {b}: {got} vs {kl} (bound {bound})"
        assert calibrated.curve[k] == pytest.approx(sum(calibrated.per_sample[k]) / 3, abs=1e-12)
    # the check has teeth: a curve shifted by one k would fail it (observed errors are ~1e-6)
    steps = [abs(calibrated.curve[k] - calibrated.curve[k + 1]) for k in range(LAYERS)]
    assert min(steps) > 2 * max(bounds)


def test_withdrawing_nothing_scores_exactly_zero(calibrated):
    assert calibrated.curve[LAYERS] == 0.0
    assert calibrated.per_sample[LAYERS] == [0.0, 0.0, 0.0]
    assert all(kl > 0 for k, kl in calibrated.curve.items() if k < LAYERS)


def test_chosen_k_is_the_smallest_within_eta(family, calibrated):
    model, data, curve = tiny_model(family=family), [inputs("padded", family=family)], calibrated.curve
    between = (curve[2] + curve[3]) / 2
    for eta in [0.0, curve[3], between, curve[0], 1e9]:
        result = find_k(model, data, eta)
        assert result.curve == curve  # deterministic on CPU
        assert result.k == min(k for k, kl in curve.items() if kl <= eta), eta
    assert calibrated.k == LAYERS  # eta = 0: only withdrawing nothing is exact here
    assert find_k(model, data, 1e9).k == 0
    assert find_k(model, data, 1e9, ks=[4, 2, 2]).k == 2  # smallest k tried
    assert list(find_k(model, data, 1e9, ks=[4, 2, 2]).curve) == [2, 4]
    assert find_k(model, data, 0.0, ks=[1, 3]).k == LAYERS  # none passes: withdraw nothing


def test_on_step_reports_every_k_in_order(calibrated, family):
    seen = []
    data = [inputs("padded", family=family)]
    find_k(tiny_model(family=family), data, 0.0, on_step=lambda k, kl: seen.append((k, kl)))
    assert seen == list(calibrated.curve.items())


def test_batch_equals_samples_one_by_one(family):
    if family in QWEN_FAMILIES:  # an image and a video of different lengths
        two = [[("text", 4), ("image", (8, 8)), ("text", 8)], [("text", 2), ("video", (4, 4, 8)), ("text", 5)]]
        batch = make_qwen_inputs(spec(family=family), two, seed=3)
    else:
        sizes = [[(8, 8)], [(16, 16)]] if family == "llava_next" else None
        batch = make_inputs(spec(family=family), [4, 2], [8, 5], seed=3, image_sizes=sizes)
    singles = [sample_of(batch, b, [1, 1]) for b in range(2)]
    assert not batch["attention_mask"].bool().all()  # really left-padded
    model = tiny_model(family=family)
    batched, alone = find_k(model, [batch]), find_k(model, singles)
    assert batched.samples == alone.samples == 2
    for k in batched.curve:
        got, expected = torch.tensor(batched.per_sample[k]), torch.tensor(alone.per_sample[k])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
        assert batched.curve[k] == pytest.approx(alone.curve[k], abs=1e-6, rel=1e-4)
    # a generator of inputs, one a processor's BatchFeature; samples weigh equally, not batches
    mixed = find_k(model, (x for x in [batch, BatchFeature(singles[0])]))
    assert mixed.samples == 3
    for k, kl in mixed.curve.items():
        assert kl == pytest.approx((2 * alone.curve[k] + alone.per_sample[k][0]) / 3, abs=1e-6, rel=1e-4)


def test_to_dict_is_json_ready(calibrated):
    import json

    data = json.loads(json.dumps(calibrated.to_dict()))
    assert data["k"] == calibrated.k and data["samples"] == 3 and data["num_layers"] == LAYERS
    assert [row["k"] for row in data["curve"]] == list(range(LAYERS + 1))
    assert [row["kl"] for row in data["curve"]] == list(calibrated.curve.values())
    assert data["per_sample"][0] == {"k": 0, "kl": calibrated.per_sample[0]}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eta=-0.1), "eta must be a finite number >= 0"),
        (dict(eta=math.nan), "eta must be a finite number >= 0"),
        (dict(eta=math.inf), "eta must be a finite number >= 0"),
        (dict(eta="0.1"), "eta must be a finite number >= 0"),
        (dict(ks=[]), r"ks is empty; ks must be integer layers in \[0, 6\]"),
        (dict(ks=[2, 7]), r"ks has \[7\]; ks must be integer layers in \[0, 6\]"),
        (dict(ks=[-1]), r"ks has \[-1\]"),
        (dict(ks=[1.5]), r"ks has \[1.5\]"),
        (dict(calibration_inputs=[]), "calibration_inputs is empty"),
        (dict(calibration_inputs=[("not", "a dict")]), "calibration input 0 is a tuple"),
        (dict(adapter_options={"bogus": 1}), "invalid options for adapter 'llava'"),
    ],
)
def test_invalid_parameters(kwargs, match):
    args = {"calibration_inputs": [inputs("single")], **kwargs}
    with pytest.raises(tp.InvalidParameterError, match=match):
        find_k(tiny_model(), **args)


def test_text_only_inputs_are_refused():
    model, image = tiny_model(), inputs("single")
    text_only = make_inputs(spec(), 4, 8, images=[0])
    with pytest.raises(tp.InvalidParameterError, match=r"calibration input 1: all samples without visual tokens"):
        find_k(model, [image, text_only])
    mixed = make_inputs(spec(), [4, 3], [8, 2], images=[1, 0])
    with pytest.raises(tp.InvalidParameterError, match=r"calibration input 0: sample\(s\) \[1\] without visual"):
        find_k(model, [mixed])


def test_unsupported_model_propagates():
    with pytest.raises(tp.UnsupportedModelError):
        find_k(torch.nn.Linear(2, 2), [inputs("single")])


def test_model_is_left_bit_identical(family):
    model = tiny_model(family=family)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    hooks = {name: (list(m._forward_pre_hooks), list(m._forward_hooks)) for name, m in model.named_modules()}
    training = model.training
    find_k(model, [inputs("padded", family=family)], ks=[0, 3])
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert hooks == {name: (list(m._forward_pre_hooks), list(m._forward_hooks)) for name, m in model.named_modules()}
    assert model.training == training


def test_docstring_example_runs():
    import doctest

    import tokenprune.calibration

    result = doctest.testmod(tokenprune.calibration)
    assert result.failed == 0 and result.attempted > 0
