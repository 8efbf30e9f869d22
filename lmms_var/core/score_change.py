"""The row-local form of methods that change a text row's scores on visual keys (ScalingVis, PAI).

INTERVENTIONS_SPEC.md section 3: with `g(s)` the change of a visual key's score, a row's new output
needs only its scores and values on the visual keys, its base attention there and its base output:

    delta_k = A_k * (exp(g(s_k)) - 1),   r = 1 + sum_k delta_k,   o' = (o + sum_k delta_k V_k) / r

Everything is float32: `exp(g)` overflows half precision.
"""

import torch


def scaled_score_change(scores: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """ScalingVis and AdaptVis: `s' = alpha * s`, so `g(s) = (alpha - 1) * s`."""
    return (alpha - 1.0) * scores


def amplified_score_change(scores: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """PAI: `s' = s + alpha * |s|`, so `g(s) = alpha * |s|`."""
    return alpha * scores.abs()


def visual_weight_change(base_attention: torch.Tensor, score_change: torch.Tensor) -> torch.Tensor:
    """Float32 `delta` (same shape): how much each visual key's unnormalised weight grows.

    `base_attention` is the row's softmax weight of the key (0 for keys it does not see), so blocked
    keys get no change whatever their score.
    """
    return base_attention * torch.expm1(score_change)


def renormaliser(delta: torch.Tensor) -> torch.Tensor:
    """Float32 `r = 1 + sum_k delta_k` over the last dimension: what the changed row is divided by."""
    return 1.0 + delta.sum(dim=-1)
