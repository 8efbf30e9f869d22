"""Steps 3 and 4 of the spec: pick image-centric heads, move attention from sinks to visual tokens.

All functions take post-softmax attention `[B, H, Q, K]` with masks `image_mask [B, K]`,
`sink_mask [B, K]` (text and visual sinks) and `query_mask [B, Q]` (the rows step 2 allows).
Work is done in float32 whatever the input dtype, so bf16/fp16 models redistribute exactly.

A row's fate depends on attention masses that are all linear in the row, so `plan_keys` turns the
key masks and hyper-parameters into one `[B, K, 4]` weight matrix per prompt and layer (the image
part once per prompt, `plan_image`; each layer adds its sinks, `plan_layer`), and `row_statistics`
gets every row's statistics with one matrix product:

    0  budget       (1 - p) * mass on sinks
    1  receivers    mass on visual non-sink keys                      (selected needs > 0)
    2  rho * (image + eps) - visual sinks                             (selected needs >= 0)
    3  image - summ                                                   (selected needs >= 0)

The patch layer reuses these pieces to redistribute a few rows inside a decoder layer cheaply.
"""

from typing import NamedTuple

import torch

# Per visual key: keeps the ratio vsink / img finite when a row gives the image no mass.
EPS_PER_VISUAL_KEY = 1e-6
# The statistics of a row, by index (see the module doc): a row is selected when each one from
# RECEIVERS on is >= 0, and moves its BUDGET to its receivers.
BUDGET, RECEIVERS, SINK_SHARE, IMAGE_SHARE = range(4)
STATISTICS = 4
# Receiver mass must be positive (somewhere to send the budget); offsetting by this makes ">= 0" mean "> 0".
_POSITIVE = torch.finfo(torch.float32).tiny


class KeyPlan(NamedTuple):
    """Per-key quantities of one layer, from its masks and the hyper-parameters (see module doc)."""

    weights: torch.Tensor  # Float32[B, K, 4]: the four statistics' key weights
    offsets: torch.Tensor  # Float32[B, 1, 4]: their constant terms (-inf: the sample has no visual sink)
    sink_change: torch.Tensor  # Float32[B, 1, 1, K]: p - 1 on sinks, the relative change of a sink key
    receivers: torch.Tensor  # Float32[B, 1, 1, K]: 1 on visual non-sink keys


class ImagePlan(NamedTuple):
    """The part of every layer's `KeyPlan` that depends on the image mask alone: built once per prompt.

    A sink changes its key's weights by a fixed amount, so a layer's plan is `base + sink * per_sink`.
    """

    image: torch.Tensor  # Float32[B, K]: 1 on visual keys
    base_weights: torch.Tensor  # Float32[B, K, 4]: the weights if no key were a sink
    per_sink: torch.Tensor  # Float32[B, K, 4]: what being a sink adds to a key's weights
    offsets: torch.Tensor  # Float32[B, 1, 4]: the offsets of a sample that has a visual sink
    sink_change: float  # p - 1


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in float32, without a cast call when it already is (decode steps count calls)."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def plan_image(image_mask: torch.Tensor, *, p: float, rho: float, summ: float) -> ImagePlan:
    """The sink-independent part of every layer's plan, for a prompt's image mask `[B, K]`."""
    image = image_mask.float()
    zeros = torch.zeros_like(image)
    eps = EPS_PER_VISUAL_KEY * image.sum(dim=-1).clamp(min=1)
    return ImagePlan(
        image=image,
        # budget, receivers, rho * image - visual sinks, image (see the module doc)
        base_weights=torch.stack([zeros, image, rho * image, image], dim=-1),
        per_sink=torch.stack([torch.full_like(image, 1.0 - p), -image, -image, zeros], dim=-1),
        offsets=torch.stack(
            [torch.zeros_like(eps), torch.full_like(eps, -_POSITIVE), rho * eps, torch.full_like(eps, -summ)],
            dim=-1,
        )[:, None, :],
        sink_change=p - 1.0,
    )


def plan_layer(image_plan: ImagePlan, sink_mask: torch.Tensor) -> KeyPlan:
    """One layer's `KeyPlan` from its sinks: a handful of operations, since prefill runs it per layer."""
    sink = _float32(sink_mask)
    weights = torch.addcmul(image_plan.base_weights, sink[..., None], image_plan.per_sink)
    # Samples without a visual sink select no row: their ratio statistic's offset is -inf.
    has_visual_sink = (sink * image_plan.image).any(dim=-1)
    offsets = image_plan.offsets.clone()
    offsets[..., SINK_SHARE].masked_fill_(~has_visual_sink[:, None], float("-inf"))
    return KeyPlan(
        weights,
        offsets,
        (image_plan.sink_change * sink)[:, None, None, :],
        weights[..., RECEIVERS].contiguous()[:, None, None, :],
    )


def plan_keys(
    image_mask: torch.Tensor, sink_mask: torch.Tensor, *, p: float, rho: float, summ: float
) -> KeyPlan:
    """The `KeyPlan` of one layer; `plan_image` + `plan_layer` share the image part across layers."""
    return plan_layer(plan_image(image_mask, p=p, rho=rho, summ=summ), sink_mask)


def row_statistics(attn: torch.Tensor, plan: KeyPlan) -> torch.Tensor:
    """Float32[B, H, Q, STATISTICS]: the statistics of every row (keys beyond the plan, e.g. generated ones, weigh 0)."""
    batch, heads, rows, _ = attn.shape
    flat = _float32(attn)[..., : plan.weights.shape[1]].reshape(batch, heads * rows, -1)
    # As weights^T @ attn^T: a product 4 wide runs several times slower than one 4 high on a CPU.
    statistics = torch.baddbmm(plan.offsets.mT, plan.weights.mT, flat.mT)
    return statistics.mT.view(batch, heads, rows, STATISTICS)


def selected_rows(statistics: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
    """Bool[B, H, Q]: image-centric rows among those `query_mask` allows.

    A row qualifies when it gives the image at least `summ` of its mass, at most a `rho` fraction
    of that goes to visual sinks, and it has receivers; samples without visual sinks never do.
    """
    query_mask = query_mask if query_mask.dtype == torch.bool else query_mask.bool()
    return (statistics[..., RECEIVERS:].amin(dim=-1) >= 0) & query_mask[:, None, :]


def attention_change(statistics: torch.Tensor, plan: KeyPlan) -> torch.Tensor:
    """Float32[B, H, Q, K]: relative change A'/A - 1 of every key if its row is selected."""
    gain = statistics[..., BUDGET] / statistics[..., RECEIVERS].clamp(min=_POSITIVE)
    return torch.addcmul(plan.sink_change, gain[..., None], plan.receivers)


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
    plan = plan_keys(image_mask, sink_mask, p=1.0, rho=rho, summ=summ)
    return selected_rows(row_statistics(attn, plan), query_mask)


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
    plan = plan_keys(image_mask, sink_mask, p=p, rho=rho, summ=summ)
    statistics = row_statistics(attn, plan)
    selected = selected_rows(statistics, query_mask)
    a = _float32(attn)
    moved = a + a * attention_change(statistics, plan)
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
