"""Steps 3 and 4 of the spec: pick image-centric heads, move attention from sinks to visual tokens.

All functions take post-softmax attention `[B, H, Q, K]` with masks `image_mask [B, K]`,
`sink_mask [B, K]` (text and visual sinks) and `query_mask [B, Q]` (the rows step 2 allows).
Work is done in float32 whatever the input dtype, so bf16/fp16 models redistribute exactly.

Everything a row's fate depends on is four attention masses (image, visual sinks, all sinks,
receivers = non-sink visual keys). `key_groups` stacks the four key masks once, `row_masses` gets
all four with one matmul; the patch layer reuses these pieces to redistribute only a few rows.
"""

from typing import NamedTuple

import torch

# Per visual key: the ratio vsink / img stays finite when a row gives no mass to the image.
EPS_PER_VISUAL_KEY = 1e-6


class RowMasses(NamedTuple):
    """Attention mass of each row [B, H, Q] on the four key groups."""

    image: torch.Tensor
    visual_sink: torch.Tensor
    sink: torch.Tensor
    receiver: torch.Tensor


def key_groups(image_mask: torch.Tensor, sink_mask: torch.Tensor) -> torch.Tensor:
    """Float32[B, K, 4]: columns image, visual sink, sink, receiver (visual and not a sink)."""
    image, sink = image_mask.bool(), sink_mask.bool()
    return torch.stack([image, image & sink, sink, image & ~sink], dim=-1).float()


def row_masses(attn: torch.Tensor, groups: torch.Tensor) -> RowMasses:
    """Masses of every row on the key groups of `key_groups` (keys beyond `groups` count as none)."""
    masses = attn.float()[..., : groups.shape[1]] @ groups[:, None]
    return RowMasses(*masses.unbind(dim=-1))


def selection(masses: RowMasses, groups: torch.Tensor, query_mask: torch.Tensor, *, rho: float, summ: float):
    """Bool[B, H, Q]: image-centric rows among those `query_mask` allows.

    A row qualifies when it gives the image at least `summ` of its mass and at most a `rho`
    fraction of that goes to visual sinks. Samples without any visual sink, and rows with no
    mass on receivers (nowhere to send the budget), are never selected.
    """
    per_sample = groups.sum(dim=1)  # [B, 4]: counts of image keys, visual sinks, ...
    eps = EPS_PER_VISUAL_KEY * per_sample[:, 0].clamp(min=1)[:, None, None]
    selected = (masses.visual_sink / (masses.image + eps) <= rho) & (masses.image >= summ)
    selected &= masses.receiver > 0
    selected &= query_mask.bool()[:, None, :]
    selected &= (per_sample[:, 1] > 0)[:, None, None]
    return selected


def receiver_gain(masses: RowMasses, p: float) -> torch.Tensor:
    """Float32[B, H, Q]: receivers of a selected row grow by this factor of their own attention."""
    return (1.0 - p) * masses.sink / masses.receiver.clamp(min=torch.finfo(torch.float32).tiny)


def select_heads(
    attn: torch.Tensor,
    image_mask: torch.Tensor,
    sink_mask: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    rho: float,
    summ: float,
) -> torch.Tensor:
    """Bool[B, H, Q]: rows VAR redistributes (image-centric heads on allowed rows)."""
    groups = key_groups(image_mask, sink_mask)
    return selection(row_masses(attn, groups), groups, query_mask, rho=rho, summ=summ)


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
    """`redistribute_attention` that also returns the Bool[B, H, Q] selection."""
    groups = key_groups(image_mask, sink_mask)
    masses = row_masses(attn, groups)
    selected = selection(masses, groups, query_mask, rho=rho, summ=summ)
    gain = receiver_gain(masses, p)[..., None]
    sinks = sink_mask.bool()[:, None, None, :]
    receivers = groups[:, None, None, :, 3].bool()
    a = attn.float()
    moved = torch.where(sinks, a * p, torch.where(receivers, a + a * gain, a))
    return torch.where(selected[..., None], moved, a).to(attn.dtype), selected


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
