"""Properties of head selection and redistribution (spec steps 3-4), by hypothesis and by hand."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_var.core import plan_image, plan_layer, redistribute_attention, select_heads
from lmms_var.core.redistribution import EPS_PER_VISUAL_KEY, redistribute_with_selection


@st.composite
def attention_cases(draw):
    """Random post-softmax attention with masks; visual sinks present unless `no_visual_sink`."""
    batch, heads = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    queries, keys = draw(st.integers(1, 5)), draw(st.integers(4, 24))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(batch, heads, queries, keys, generator=generator) * draw(st.floats(0.1, 4.0))
    attn = torch.softmax(logits, dim=-1)
    image = torch.rand(batch, keys, generator=generator) < 0.6
    sink = torch.rand(batch, keys, generator=generator) < 0.25
    query = torch.rand(batch, queries, generator=generator) < 0.7
    params = {
        "p": draw(st.floats(0.0, 1.0)),
        "rho": draw(st.floats(0.0, 1.0)),
        "summ": draw(st.floats(0.0, 0.6)),
    }
    return attn, image, sink, query, params


@settings(max_examples=150, deadline=None)
@given(attention_cases())
def test_rows_keep_their_sum_and_input_is_untouched(case):
    attn, image, sink, query, params = case
    before = attn.clone()
    out = redistribute_attention(attn, image, sink, query, **params)
    torch.testing.assert_close(out.sum(-1), attn.sum(-1), atol=1e-5, rtol=0)
    assert torch.equal(attn, before)
    assert (out >= 0).all()


@settings(max_examples=100, deadline=None)
@given(attention_cases())
def test_p_one_is_identity(case):
    attn, image, sink, query, params = case
    out = redistribute_attention(attn, image, sink, query, **{**params, "p": 1.0})
    torch.testing.assert_close(out, attn, atol=1e-6, rtol=0)


@settings(max_examples=150, deadline=None)
@given(attention_cases())
def test_what_moves_and_what_stays(case):
    attn, image, sink, query, params = case
    out, selected = redistribute_with_selection(attn, image, sink, query, **params)
    rows = selected[..., None].expand_as(attn)
    sink_keys = sink[:, None, None, :].expand_as(attn)
    receivers = (image & ~sink)[:, None, None, :].expand_as(attn)
    # Unselected rows, and non-visual non-sink keys of any row, are untouched.
    assert torch.equal(out[~rows], attn[~rows])
    others = ~sink_keys & ~receivers
    assert torch.equal(out[others], attn[others])
    # Sink keys of selected rows scale by exactly p; receivers only gain.
    torch.testing.assert_close(
        out[rows & sink_keys], attn[rows & sink_keys] * params["p"], atol=1e-7, rtol=1e-6
    )
    assert (out[rows & receivers] >= attn[rows & receivers] - 1e-7).all()
    # Only allowed rows can be selected.
    assert not selected[~query[:, None, :].expand_as(selected)].any()


@settings(max_examples=100, deadline=None)
@given(attention_cases())
def test_no_visual_sink_means_no_change(case):
    attn, image, sink, query, params = case
    sink = sink & ~image  # text sinks only
    assert torch.equal(redistribute_attention(attn, image, sink, query, **params), attn)


def test_hand_checked_example():
    """One row, six keys, worked through the spec's formulas by hand.

    keys: 0 text sink, 1 text, 2 visual sink, 3 visual, 4 visual, 5 text
    attention: .30 .10 .10 .20 .20 .10  ->  img = .5, vsink = .1, ratio .2 <= rho .5, img >= summ .2
    budget = (1 - .6) * (.30 + .10) = .16, spread over keys 3, 4 in proportion .2 : .2
    """
    attn = torch.tensor([[[[0.30, 0.10, 0.10, 0.20, 0.20, 0.10]]]])
    image = torch.tensor([[False, False, True, True, True, False]])
    sink = torch.tensor([[True, False, True, False, False, False]])
    query = torch.tensor([[True]])
    out = redistribute_attention(attn, image, sink, query, p=0.6, rho=0.5, summ=0.2)
    expected = torch.tensor([[[[0.18, 0.10, 0.06, 0.28, 0.28, 0.10]]]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # The same row is left alone when its visual-sink share exceeds rho or its image mass is below summ.
    assert torch.equal(redistribute_attention(attn, image, sink, query, p=0.6, rho=0.1, summ=0.2), attn)
    assert torch.equal(redistribute_attention(attn, image, sink, query, p=0.6, rho=0.5, summ=0.6), attn)
    assert not select_heads(attn, image, sink, ~query, rho=0.5, summ=0.2).any()


def test_low_precision_inputs_are_redistributed_in_float32():
    attn = torch.softmax(torch.randn(1, 2, 3, 10, generator=torch.Generator().manual_seed(0)), -1)
    image = torch.tensor([[False, True, True, True, True, True, True, False, False, False]])
    sink = torch.tensor([[True, True, False, False, False, False, False, False, False, False]])
    query = torch.ones(1, 3, dtype=torch.bool)
    reference = redistribute_attention(attn, image, sink, query, p=0.5, rho=0.9, summ=0.1)
    for dtype in (torch.bfloat16, torch.float16):
        out = redistribute_attention(attn.to(dtype), image, sink, query, p=0.5, rho=0.9, summ=0.1)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), reference, atol=1e-2, rtol=0)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_all_sink_mass_moves_to_visual_receivers(p):
    attn = torch.full((1, 1, 1, 4), 0.25)
    image = torch.tensor([[True, True, False, False]])
    sink = torch.tensor([[True, False, True, False]])
    out = redistribute_attention(
        attn, image, sink, torch.ones(1, 1, dtype=torch.bool), p=p, rho=1.0, summ=0.0
    )
    moved = (1 - p) * 0.5
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.25 * p, 0.25 + moved, 0.25 * p, 0.25]))


@settings(max_examples=60, deadline=None)
@given(attention_cases())
def test_layer_plans_from_one_image_plan_follow_the_statistics_definitions(case):
    """A prompt's image plan serves every layer: each layer's plan is what its masks define, alone."""
    _, image, sink, _, params = case
    image_plan = plan_image(image, **params)
    shared = [tensor.clone() for tensor in image_plan[:4]]
    plan_layer(image_plan, ~sink)  # another layer first: nothing of it may stay behind
    plan = plan_layer(image_plan, sink)
    p, rho, summ = params["p"], params["rho"], params["summ"]
    image_f, sink_f, visual_sink = image.float(), sink.float(), (image & sink).float()
    expected_weights = torch.stack(
        [(1 - p) * sink_f, (image & ~sink).float(), rho * image_f - visual_sink, image_f], -1
    )
    torch.testing.assert_close(plan.weights, expected_weights, atol=1e-7, rtol=0)
    eps = EPS_PER_VISUAL_KEY * image_f.sum(-1).clamp(min=1)
    ratio = torch.where((image & sink).any(-1), rho * eps, float("-inf"))
    expected_offsets = torch.stack(
        [
            torch.zeros_like(eps),
            torch.full_like(eps, -torch.finfo(torch.float32).tiny),
            ratio,
            torch.full_like(eps, -summ),
        ],
        -1,
    )[:, None]
    torch.testing.assert_close(plan.offsets, expected_offsets, atol=0, rtol=1e-6)
    torch.testing.assert_close(plan.sink_change[:, 0, 0], (p - 1) * sink_f)
    assert torch.equal(plan.receivers[:, 0, 0], (image & ~sink).float())
    for before, after in zip(shared, image_plan[:4], strict=True):
        assert torch.equal(before, after), "a layer's plan must not change the shared image plan"
