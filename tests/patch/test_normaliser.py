"""The log-sum-exp kept from SDPA's own call: SDPA's output bit for bit, the exact normaliser, or nothing."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmms_var.patch import normaliser
from lmms_var.patch.normaliser import LogSumExpCapture


def sdpa_inputs(dtype: torch.dtype, gqa: bool, masked: bool) -> dict:
    """SDPA's arguments as transformers passes them: GQA unexpanded without a mask, a padding mask otherwise."""
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, head_dim = 2, 6, 2 if gqa else 6, 23, 16
    query = torch.randn(batch, heads, length, head_dim, generator=generator).to(dtype)
    key = torch.randn(batch, kv_heads, length, head_dim, generator=generator).to(dtype)
    value = torch.randn(batch, kv_heads, length, head_dim, generator=generator).to(dtype)
    arguments = {"query": query, "key": key, "value": value, "scale": 0.3, "enable_gqa": gqa}
    if masked:
        mask = torch.ones(batch, 1, length, length, dtype=torch.bool).tril()
        mask[1, :, :, :4] = False  # sample 1 is left-padded by 4: its first rows see nothing
        return arguments | {"attn_mask": mask}
    return arguments | {"is_causal": True}


def explicit_log_sum_exp(arguments: dict) -> torch.Tensor:
    query, key = arguments["query"].float(), arguments["key"].float()
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    scores = query @ key.mT * arguments["scale"]
    visible = arguments.get("attn_mask", torch.ones(scores.shape[-2:], dtype=torch.bool).tril())
    return scores.masked_fill(~visible, float("-inf")).logsumexp(dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("gqa", "masked"), [(True, False), (False, True)], ids=["causal GQA", "padding mask"]
)
def test_capture_keeps_sdpa_output_and_gives_the_log_sum_exp(dtype, gqa, masked):
    arguments = sdpa_inputs(dtype, gqa, masked)
    expected = F.scaled_dot_product_attention(**arguments)
    for _ in range(2):  # the first call of a kind checks the operation, later ones use it alone
        with LogSumExpCapture() as capture:
            output = F.scaled_dot_product_attention(**arguments)
        assert torch.equal(output, expected)
        reference = explicit_log_sum_exp(arguments)
        seen = reference.isfinite()  # rows that see no key have no normaliser
        # bfloat16: the kernel's scores round differently from float32 products of the same inputs.
        tolerance = 1e-5 if dtype == torch.float32 else 2e-4
        torch.testing.assert_close(capture.log_sum_exp[seen], reference[seen], atol=tolerance, rtol=0)


def test_an_operation_that_differs_from_sdpa_is_not_used(monkeypatch):
    monkeypatch.setattr(normaliser, "_bit_identical", {})
    original = normaliser._with_log_sum_exp

    def off_by_a_bit(call, backend):
        operation = original(call, backend)
        return lambda: (operation()[0] * (1 + 2**-20), operation()[1])

    monkeypatch.setattr(normaliser, "_with_log_sum_exp", off_by_a_bit)
    arguments = sdpa_inputs(torch.float32, gqa=True, masked=False)
    for _ in range(2):
        with LogSumExpCapture() as capture:
            output = F.scaled_dot_product_attention(**arguments)
        assert capture.log_sum_exp is None
        assert torch.equal(output, F.scaled_dot_product_attention(**arguments))
    assert list(normaliser._bit_identical.values()) == [False]


def test_a_backend_without_log_sum_exp_gives_none():
    arguments = sdpa_inputs(torch.float32, gqa=False, masked=True)
    with sdpa_kernel([SDPBackend.MATH]):
        expected = F.scaled_dot_product_attention(**arguments)
        with LogSumExpCapture() as capture:
            output = F.scaled_dot_product_attention(**arguments)
    assert capture.log_sum_exp is None
    assert torch.equal(output, expected)


def test_the_check_compares_bits_so_rows_without_keys_may_hold_nans():
    """A row that sees no key may come out NaN; the same NaN is the same output, -0.0 is not 0.0."""
    output = torch.tensor([[1.0, float("nan")], [0.0, 2.0]])
    assert normaliser._same_bits(output, output.clone())
    assert not normaliser._same_bits(output, torch.tensor([[1.0, float("nan")], [-0.0, 2.0]]))
    assert not normaliser._same_bits(output, output.double())
