"""The core against numbers computed by the VAR authors' own implementation (shared/golden)."""

from pathlib import Path

import pytest
import torch

from lmms_var.core import find_sink_tokens, redistribute_attention

CASES = torch.load(Path(__file__).parent.parent / "data" / "var_reference_cases.pt")


@pytest.mark.parametrize("case", CASES["var"], ids=lambda c: f"p{c['p']}-rho{c['rho']}-q{c['attn'].shape[2]}")
def test_redistribution_matches_reference(case):
    before = case["attn"].clone()
    out = redistribute_attention(
        case["attn"],
        case["image_mask"],
        case["sink_mask"],
        case["query_mask"],
        p=case["p"],
        rho=case["rho"],
        summ=case["summ"],
    )
    torch.testing.assert_close(out, case["expected"], atol=1e-5, rtol=0)
    assert (not torch.equal(out, before)) == case["changed"]
    assert torch.equal(case["attn"], before), "redistribute_attention must not mutate its input"


@pytest.mark.parametrize("case", CASES["sinks"], ids=lambda c: f"tau{c['tau']}-dims{c['dims']}")
def test_sink_detection_matches_reference(case):
    assert torch.equal(find_sink_tokens(case["hidden"], case["dims"], case["tau"]), case["expected_mask"])


def test_reference_cases_cover_both_outcomes():
    changed = [case["changed"] for case in CASES["var"]]
    assert any(changed) and not all(changed)
