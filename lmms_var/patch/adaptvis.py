"""AdaptVis's choice of alpha (INTERVENTIONS_SPEC.md section 1): from the plain model's confidence in
its first answer token, per prompt.

The authors' code runs a whole plain generation first and rounds the confidence to two decimals; only
the first step's distribution is needed, and the rounding is a quirk (a confidence of 0.396 with
threshold 0.4 counts as 0.40, confident): neither is followed here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import torch

from lmms_var.config import AdaptVisConfig


def confidence_of(logits: torch.Tensor) -> torch.Tensor:
    """Float32[batch]: the largest probability of each next-token distribution (`logits` [batch, vocab])."""
    return torch.softmax(logits.float(), dim=-1).max(dim=-1).values


@torch.no_grad()
def first_token_confidence(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    plain: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Float32[batch]: the plain model's confidence in the first answer token of each prompt, from one
    prefill forward of `inputs` (left-padded processor outputs) inside `plain()` (the intervention's
    `suspended()`), unrounded."""
    attention_mask = inputs.get("attention_mask")
    if attention_mask is not None and not attention_mask[:, -1].all():
        raise ValueError(
            "inputs: AdaptVis reads each prompt's last token in the last column; pad on the left"
        )
    with plain():
        logits = model(**inputs, use_cache=False, logits_to_keep=1).logits
    return confidence_of(logits[:, -1])


def adaptvis_alpha(confidence: torch.Tensor, config: AdaptVisConfig) -> torch.Tensor:
    """Float32[batch]: `config.alpha_low` where the confidence is below `config.threshold`, else `alpha_high`."""
    low = torch.tensor(config.alpha_low, dtype=torch.float32, device=confidence.device)
    high = torch.tensor(config.alpha_high, dtype=torch.float32, device=confidence.device)
    return torch.where(confidence < config.threshold, low, high)
