"""AdaptVis's confidence and alpha, against the first step of the plain model's own generation."""

import contextlib

import pytest
import torch

from lmms_var.config import AdaptVisConfig
from lmms_var.patch.adaptvis import adaptvis_alpha, first_token_confidence


def test_confidence_is_the_first_generated_tokens_largest_probability(family_model, family_batch):
    model = family_model[0]
    entered = []

    @contextlib.contextmanager
    def plain():
        entered.append(True)
        yield

    confidence = first_token_confidence(model, family_batch, plain=plain)
    first = model.generate(
        **family_batch, do_sample=False, max_new_tokens=1, output_logits=True, return_dict_in_generate=True
    ).logits[0]
    expected = torch.softmax(first.float(), dim=-1).max(dim=-1).values
    assert confidence.dtype == torch.float32 and confidence.shape == (family_batch["input_ids"].shape[0],)
    torch.testing.assert_close(confidence, expected, atol=1e-5, rtol=0)
    assert entered == [True]


def test_right_padding_is_refused(tiny_model, padded_batch):
    right = {**padded_batch, "attention_mask": padded_batch["attention_mask"].flip(-1)}
    with pytest.raises(
        ValueError, match=r"inputs: AdaptVis reads each prompt's last token .* pad on the left"
    ):
        first_token_confidence(tiny_model[0], right)


def test_alpha_is_low_below_the_threshold_only():
    config = AdaptVisConfig(alpha_low=0.8, alpha_high=2.0, threshold=0.4)
    confidence = torch.tensor([0.1, 0.39999, 0.4, 0.9])
    alpha = adaptvis_alpha(confidence, config)
    assert alpha.dtype == torch.float32
    assert alpha.tolist() == [0.800000011920929, 0.800000011920929, 2.0, 2.0]
