"""Spec step 1: sink tokens from RMS-normalised hidden states."""

import pytest
import torch

from lmms_var.core import find_sink_tokens, rms_normalized


def test_massive_channel_makes_a_sink_and_padding_never_is():
    hidden = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    hidden[0, 1, 7] = 50.0
    hidden[1, 0, 9] = -50.0  # magnitude counts, not sign
    hidden[1, 3, 9] = 50.0
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 0] = False  # left padding
    sinks = find_sink_tokens(hidden, [7, 9], tau=5.0, valid_mask=valid)
    expected = torch.zeros(2, 6, dtype=torch.bool)
    expected[0, 1] = expected[1, 3] = True
    assert torch.equal(sinks, expected)
    assert find_sink_tokens(hidden, [11], tau=5.0).sum() == 0


def test_normalised_value_is_bounded_by_sqrt_hidden_size():
    hidden = torch.zeros(1, 1, 100)
    hidden[0, 0, 3] = 1e4
    assert rms_normalized(hidden)[0, 0, 3] == pytest.approx(10.0, rel=1e-4)
    assert not find_sink_tokens(hidden, [3], tau=20.0).any()  # the paper's tau is out of reach at width 100


def test_bfloat16_is_detected_in_float32():
    hidden = torch.randn(1, 8, 128).to(torch.bfloat16)
    hidden[0, 2, 5] = 300.0
    assert find_sink_tokens(hidden, [5], tau=5.0)[0].nonzero().flatten().tolist() == [2]


@pytest.mark.parametrize("dims", [[], [128], [-1]])
def test_bad_dims_are_rejected(dims):
    with pytest.raises(ValueError, match="sink_dims"):
        find_sink_tokens(torch.zeros(1, 2, 128), dims, tau=1.0)
