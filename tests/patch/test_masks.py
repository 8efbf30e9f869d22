"""The one mask classification the PyTorch paths and the kernels' launchers read."""

import pytest
import torch

from lmms_var.patch.masks import MaskKind, additive_threshold, blocked_keys, classify

ROWS = torch.tensor([[0, 2], [1, 3]])  # query indices of a 4-row forward


def causal_bool() -> torch.Tensor:
    """Bool[2, 1, 4, 6]: 2 cached keys, then causal; sample 1 left-padded by one key."""
    visible = torch.ones(4, 6, dtype=torch.bool).tril(2).expand(2, 1, 4, 6).clone()
    visible[1, ..., 0] = False
    return visible


@pytest.mark.parametrize(
    ("mask", "kind"),
    [
        (None, MaskKind.CAUSAL_ONLY),
        (causal_bool(), MaskKind.BOOL),
        (torch.zeros(2, 1, 4, 6, dtype=torch.bfloat16), MaskKind.ADDITIVE),
        (torch.ones(2, 6, dtype=torch.long), MaskKind.PADDING),
    ],
    ids=lambda value: value.label if isinstance(value, MaskKind) else None,
)
def test_each_format_is_classified(mask, kind):
    assert classify(mask) == kind


def test_every_format_of_one_mask_blocks_the_same_keys():
    """The bool mask, its additive form, and (padding causal) its 2D form give the same blocked keys."""
    visible = causal_bool()
    expected = ~visible[torch.arange(2)[:, None], 0, ROWS][:, None]
    for dtype in (torch.float32, torch.bfloat16):
        additive = torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
        assert torch.equal(blocked_keys(additive, ROWS, 4, 6), expected)
    assert torch.equal(blocked_keys(visible, ROWS, 4, 6), expected)
    assert torch.equal(blocked_keys(visible[:, 0, -1].long(), ROWS, 4, 6), expected)
    causal = blocked_keys(None, ROWS, 4, 6)
    assert torch.equal(causal[0], expected[0]) and not torch.equal(causal[1], expected[1])


def test_an_additive_entry_blocks_below_the_threshold_only():
    threshold = additive_threshold(torch.float32)
    assert threshold == torch.finfo(torch.float32).min / 2
    mask = torch.zeros(1, 1, 1, 4)
    mask[..., 1] = threshold
    mask[..., 2] = torch.nextafter(torch.tensor(threshold), torch.tensor(-float("inf")))
    blocked = blocked_keys(mask, torch.zeros(1, 1, dtype=torch.long), 1, 4)
    assert blocked.flatten().tolist() == [False, False, True, False]


def test_a_decode_step_without_a_mask_blocks_nothing():
    assert blocked_keys(None, torch.zeros(2, 1, dtype=torch.long), 1, 6) is None
