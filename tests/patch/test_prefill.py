"""The prefill correction over visual and sink keys, in blocks, against whole rows over every key."""

import pytest
import torch

from lmms_var.patch import prefill
from lmms_var.patch.prefill import _block_keys, _block_rows, correct_in_blocks, relevant_keys
from tests.patch.layer_cases import (
    ONE_IMAGE,
    TWO_IMAGES,
    assert_matches_whole_rows,
    attention_case,
    layer_call,
    normaliser_for,
    pytorch_path,
    touched_rows,
)

BATCH_HEADS = 3 * 6  # of `attention_case`


def relevant_count(case: dict) -> int:
    return int(relevant_keys(case["plan"]).counts.max())


def block_elements_for(case: dict, block: str, widest: int) -> int:
    """A block budget that puts a row or key block boundary just below, at or just above R or M."""
    kind, offset = block.split()
    rows, keys = case["rows"].shape[1], relevant_count(case)
    if kind == "rows":
        return BATCH_HEADS * widest * (rows + int(offset))
    return BATCH_HEADS * (keys + int(offset))


def corrected(case: dict, source: str, block_elements: int):
    output = case["output"].clone()
    selected, budget = correct_in_blocks(
        output,
        layer_call(case, normaliser_for(case, source)),
        case["plan"],
        case["rows"],
        case["row_valid"],
        block_elements=block_elements,
    )
    return output, selected, budget


@pytest.mark.parametrize(
    ("images", "padded"),
    [(ONE_IMAGE, False), (TWO_IMAGES, True)],
    ids=["text after the image, unpadded", "text between images, padded"],
)
@pytest.mark.parametrize("source", ["sdpa", "eager weights", "none"])
@pytest.mark.parametrize("block", ["rows -1", "rows +0", "rows +1", "keys -1", "keys +0", "keys +1"])
def test_relevant_keys_in_blocks_equal_whole_rows(images, padded, source, block):
    case = attention_case(torch.float32, decode=False, padded=padded, images=images)
    rows, keys = case["rows"].shape[1], relevant_count(case)
    # Without a normaliser a block also spans every key, to compute it.
    widest = keys if source != "none" else case["key"].shape[2]
    block_elements = block_elements_for(case, block, widest)
    row_step = _block_rows(BATCH_HEADS, rows, widest, block_elements)
    key_step = _block_keys(BATCH_HEADS, row_step, keys, block_elements)
    kind, offset = block.split()
    if kind == "rows":
        assert (row_step, key_step) == (min(rows, rows + int(offset)), keys)
    else:
        assert row_step == 1 and key_step == min(keys, keys + int(offset))

    expected, expected_selected, expected_budget = pytorch_path(case)
    output, selected, budget = corrected(case, source, block_elements)
    assert torch.equal(selected, expected_selected)
    torch.testing.assert_close(budget, expected_budget, atol=1e-6, rtol=1e-5)
    assert_matches_whole_rows(case, output, expected, selected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["selected pairs gathered", "every row corrected"])
@pytest.mark.parametrize("block", ["rows +0", "rows -1", "keys -1"])
def test_both_ways_of_correcting_a_block_equal_whole_rows(monkeypatch, path, block):
    """A block is corrected pair by pair where few are selected, whole where most are: both are exact."""
    monkeypatch.setattr(prefill, "_DENSE_SHARE", 10**9 if path == "every row corrected" else 0)
    case = attention_case(torch.float32, decode=False, padded=True, images=TWO_IMAGES)
    expected, expected_selected, _ = pytorch_path(case)
    output, selected, _ = corrected(case, "sdpa", block_elements_for(case, block, relevant_count(case)))
    assert torch.equal(selected, expected_selected) and selected.any() and not selected.all()
    assert_matches_whole_rows(case, output, expected, selected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("source", ["sdpa", "eager weights", "none"])
def test_half_precision_inputs(dtype, source):
    case = attention_case(dtype, decode=False, padded=True, images=TWO_IMAGES)
    expected, expected_selected, _ = pytorch_path(case)
    output, selected, _ = corrected(case, source, block_elements=BATCH_HEADS * 8)
    assert torch.equal(selected, expected_selected)
    # Eager's weights are rounded to the model's dtype before VAR reads them.
    torch.testing.assert_close(output, expected, atol=2e-2, rtol=2e-2)
    untouched = ~touched_rows(case, selected)
    assert torch.equal(output[untouched], case["output"][untouched])


def test_rows_between_images_do_not_see_the_later_image():
    """Causality over the relevant keys: a row before the second image gets nothing from it."""
    case = attention_case(torch.float32, decode=False, padded=False, images=TWO_IMAGES)
    case["value"][:, :, 25:30] = 1e6  # the second image's values: any weight on them would show
    output, selected, _ = corrected(case, "sdpa", block_elements=BATCH_HEADS * 4 * relevant_count(case))
    between = case["rows"][0] < 25
    assert selected[..., between].any()
    assert output[:, case["rows"][0][between]].abs().max() < 100
