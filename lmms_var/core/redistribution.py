"""Steps 3 and 4 of the spec: pick image-centric heads, move attention from sinks to visual tokens.

All functions take post-softmax attention `[B, H, Q, K]` with masks `image_mask [B, K]`,
`sink_mask [B, K]` (text and visual sinks) and `query_mask [B, Q]` (the rows step 2 allows).
Work is done in float32 whatever the input dtype, so bf16/fp16 models redistribute exactly.
"""

import torch

# Per visual key: the ratio vsink / img stays finite when a row gives no mass to the image.
EPS_PER_VISUAL_KEY = 1e-6


def _masked_sum(attn: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Sum of attention over the keys in `key_mask` ([B, K]) for every row: [B, H, Q]."""
    return (attn * key_mask[:, None, None, :].to(attn.dtype)).sum(dim=-1)


def select_heads(
    attn: torch.Tensor,
    image_mask: torch.Tensor,
    sink_mask: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    rho: float,
    summ: float,
) -> torch.Tensor:
    """Bool[B, H, Q]: rows VAR redistributes (image-centric heads on allowed rows).

    A row qualifies when it gives the image at least `summ` of its mass and at most a `rho`
    fraction of that goes to visual sinks. Samples without any visual sink, and rows with no
    mass on non-sink visual keys (nowhere to send the budget), are never selected.
    """
    attn = attn.float()
    image_mask = image_mask.bool()
    visual_sinks = image_mask & sink_mask.bool()
    image_mass = _masked_sum(attn, image_mask)
    visual_sink_mass = _masked_sum(attn, visual_sinks)
    receiver_mass = _masked_sum(attn, image_mask & ~sink_mask.bool())
    eps = EPS_PER_VISUAL_KEY * image_mask.sum(dim=-1).clamp(min=1).float()[:, None, None]
    selected = (visual_sink_mass / (image_mass + eps) <= rho) & (image_mass >= summ)
    selected &= receiver_mass > 0
    selected &= query_mask.bool()[:, None, :]
    selected &= visual_sinks.any(dim=-1)[:, None, None]
    return selected


def redistribute_with_selection(
    attn: torch.Tensor,
    image_mask: torch.Tensor,
    sink_mask: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    p: float,
    rho: float,
    summ: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`redistribute_attention` that also returns the Bool[B, H, Q] selection (the fused path needs it)."""
    selected = select_heads(attn, image_mask, sink_mask, query_mask, rho=rho, summ=summ)
    a = attn.float()
    sinks = sink_mask.bool()[:, None, None, :]
    receivers = (image_mask.bool() & ~sink_mask.bool())[:, None, None, :]
    budget = (1.0 - p) * (a * sinks).sum(dim=-1, keepdim=True)
    receiver_mass = (a * receivers).sum(dim=-1, keepdim=True)
    share = torch.where(receiver_mass > 0, budget / receiver_mass.clamp(min=torch.finfo(a.dtype).tiny), 0.0)
    moved = torch.where(sinks, a * p, torch.where(receivers, a + a * share, a))
    out = torch.where(selected[..., None], moved, a)
    return out.to(attn.dtype), selected


def redistribute_attention(
    attn: torch.Tensor,
    image_mask: torch.Tensor,
    sink_mask: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    p: float,
    rho: float,
    summ: float,
) -> torch.Tensor:
    """New attention after head selection and redistribution; rows keep their sum, input untouched."""
    return redistribute_with_selection(attn, image_mask, sink_mask, query_mask, p=p, rho=rho, summ=summ)[0]
