"""VAR as an intervention: sinks per layer at prefill, image-centric heads, redistribution.

Its compute paths (`VAR.paths`):

| kind \\ backend | PyTorch | Triton (`row_kernels.py`) |
|---|---|---|
| prefill correction | `prefill.correct_in_blocks`: rows over their visual and sink keys, in blocks | `correct_prefill_rows` |
| decode correction | `_decode_rows`: A'V - AV over every key, added to the base output | `redistribute_rows` |
| whole rows | `_decode_rows`: A'V written, the base kernel skipped | `redistribute_rows(whole_rows=True)` |

plus the eager reference (`fused=False`): every row materialised and replaced by A'V.
At prefill the base kernel's output gets only a correction, which is zero for rows no head selects,
so untouched rows keep its exact output:

    A' @ V = A @ V + sum_k (A'[k] - A[k]) V[k]
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import torch

from lmms_var.config import VARConfig
from lmms_var.core import (
    BUDGET,
    KeyPlan,
    attention_change,
    find_sink_tokens,
    plan_image,
    plan_layer,
    redistribute_with_selection,
    row_statistics,
    selected_rows,
)
from lmms_var.patch.counters import Counters
from lmms_var.patch.explicit import explicit_attention, times_values
from lmms_var.patch.intervention import (
    Backend,
    ForwardKind,
    Intervention,
    KernelPath,
    LayerWork,
    Positions,
    PromptContext,
)
from lmms_var.patch.masks import blocked_keys
from lmms_var.patch.prefill import correct_in_blocks, relevant_keys
from lmms_var.patch.state import PromptState

try:  # Triton is optional: without it VAR runs its PyTorch paths everywhere
    from lmms_var.patch import row_kernels
except ImportError:
    row_kernels = None


@dataclass(frozen=True)
class PromptSinks:
    """One prompt of the last prefill: its visual tokens, and the visual sinks found among them."""

    visual_tokens: int
    visual_sinks: int  # (layer, visual token) pairs detected as sinks, over the layers VAR acts on


class VARLayerPlan(NamedTuple):
    """One layer of one prompt: its sinks and the key quantities VAR's rows are computed from."""

    keys: KeyPlan
    sinks: torch.Tensor  # Bool[B, T_prefill]
    image_mask: torch.Tensor  # Bool[B, T_prefill]
    config: VARConfig


def count(counters: Counters | None, selected: torch.Tensor, budget: torch.Tensor) -> None:
    """Add the selected (head, row) pairs and their budgets [B, H, R] to the per-sample counters."""
    if counters is not None:
        counters.redistributed_rows.add_(selected.sum(dim=(1, 2)))
        counters.moved_mass.add_((budget * selected).sum(dim=(1, 2)))


def _prefill_pytorch(work: LayerWork) -> None:
    selected, budget = correct_in_blocks(
        work.output,
        work.call,
        work.plan.keys,
        work.rows,
        work.row_valid,
        block_elements=work.options.block_elements,
    )
    count(work.counters, selected, budget)


def _prefill_triton(work: LayerWork) -> None:
    keys = relevant_keys(work.plan.keys)
    row_kernels.correct_prefill_rows(
        work.output, work.call, work.plan.keys, keys, work.rows, work.row_valid, counters=work.counters
    )


def _prefill_specialization(work: LayerWork):
    return row_kernels.prefill_specialization(work.call, work.plan.keys.weights.shape[1], work.rows.shape[1])


def rows_arithmetic(
    query,
    key,
    value,
    blocked,
    plan: KeyPlan,
    row_valid,
    *,
    scaling: float,
    in_prefill: bool,
    whole_rows: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode rows [B, H, R, d] (A'V, or A'V - AV as a correction) over all their keys, the selection
    and budgets [B, H, R]. A pure tensor function: on CUDA it can be compiled into a few kernels, since
    a decode step there is bound by the number of kernel launches rather than by arithmetic."""
    attn = explicit_attention(query, key, blocked, scaling, may_be_empty=in_prefill)
    statistics = row_statistics(attn, plan)
    selected = selected_rows(statistics, row_valid)
    planned = plan.weights.shape[1]
    change = attention_change(statistics, plan) * selected[..., None]
    if whole_rows:  # A'
        attn[..., :planned] += attn[..., :planned] * change
        weights = attn
    else:  # A' - A
        weights = attn[..., :planned] * change
    return times_values(weights, value), selected, statistics[..., BUDGET]


@functools.cache
def _compiled_rows_arithmetic() -> Callable:
    """`rows_arithmetic` compiled once per process (symbolic shapes: K grows at every decode step)."""
    return torch.compile(rows_arithmetic, dynamic=True)


def _decode_pytorch(work: LayerWork, *, whole_rows: bool) -> None:
    """A decode step's rows (one per sample) over all their keys."""
    call = work.call
    blocked = blocked_keys(call.attention_mask, work.rows, call.query.shape[2], call.key.shape[2])
    arithmetic = _compiled_rows_arithmetic() if work.options.compile else rows_arithmetic
    computed, selected, budget = arithmetic(
        call.query,
        call.key,
        call.value,
        blocked,
        work.plan.keys,
        work.row_valid,
        scaling=call.scaling,
        in_prefill=False,
        whole_rows=whole_rows,
    )
    if whole_rows:
        work.output.copy_(computed.transpose(1, 2))
    else:
        work.output.add_(computed.transpose(1, 2).to(work.output.dtype))
    count(work.counters, selected, budget)


def _decode_triton(work: LayerWork, *, whole_rows: bool) -> None:
    row_kernels.redistribute_rows(
        work.output,
        work.call,
        work.plan.keys,
        work.rows,
        work.row_valid,
        counters=work.counters,
        whole_rows=whole_rows,
    )


def _decode_specialization(work: LayerWork, *, whole_rows: bool):
    call = work.call
    return row_kernels.rows_specialization(
        call.query.dtype, call.query.shape[-1], blocked=call.attention_mask is not None, whole_rows=whole_rows
    )


def _eager_reference(work: LayerWork) -> None:
    """Every row materialised over every key and replaced by A'V (`fused=False`)."""
    call, plan = work.call, work.plan
    query_length, key_length = call.query.shape[2], call.key.shape[2]
    blocked = blocked_keys(call.attention_mask, work.rows, query_length, key_length)
    attn = explicit_attention(call.query, call.key, blocked, call.scaling, may_be_empty=True)
    extra = (0, key_length - plan.image_mask.shape[1])  # keys generated since the prefill: text, no sink
    image_mask = torch.nn.functional.pad(plan.image_mask, extra)
    sinks = torch.nn.functional.pad(plan.sinks, extra)
    config = plan.config
    new_attn, selected = redistribute_with_selection(
        attn, image_mask, sinks, work.row_valid, p=config.p, rho=config.rho, summ=config.summ
    )
    work.output.copy_(times_values(new_attn, call.value).transpose(1, 2))
    count(work.counters, selected, row_statistics(attn, plan.keys)[..., BUDGET])


def _triton_paths() -> dict:
    if row_kernels is None:
        return {}
    return {
        (ForwardKind.PREFILL_CORRECTION, Backend.TRITON): KernelPath(
            _prefill_triton, _prefill_specialization
        ),
        **{
            (kind, Backend.TRITON): KernelPath(
                functools.partial(_decode_triton, whole_rows=whole),
                functools.partial(_decode_specialization, whole_rows=whole),
            )
            for kind, whole in ((ForwardKind.DECODE_CORRECTION, False), (ForwardKind.WHOLE_ROWS, True))
        },
    }


class VAR(Intervention):
    """Visual Attention Redistribution (VAR_SPEC.md) from a `VARConfig`."""

    name = "VAR"
    reads_hidden_states = True
    needs_every_key = True  # its plans are indexed by key position
    paths = MappingProxyType(
        {
            (ForwardKind.PREFILL_CORRECTION, Backend.PYTORCH): _prefill_pytorch,
            (ForwardKind.DECODE_CORRECTION, Backend.PYTORCH): functools.partial(
                _decode_pytorch, whole_rows=False
            ),
            (ForwardKind.WHOLE_ROWS, Backend.PYTORCH): functools.partial(_decode_pytorch, whole_rows=True),
            (ForwardKind.WHOLE_ROWS, Backend.EAGER): _eager_reference,
            **_triton_paths(),
        }
    )

    config: VARConfig

    def is_identity(self) -> bool:
        return self.config.p == 1.0

    def rows(self, positions: Positions, new: int, prefill: bool) -> torch.Tensor:
        """Spec step 2: valid, non-visual rows after the sample's first visual token."""
        image_mask, valid = positions
        return ((image_mask.cumsum(dim=1) > 0) & ~image_mask & valid)[:, -new:]

    def decode_kind(self, every_sample_has_visual: bool) -> ForwardKind:
        # Where every sample has an image, each decode row is VAR's: computed whole, no base kernel.
        return ForwardKind.WHOLE_ROWS if every_sample_has_visual else ForwardKind.DECODE_CORRECTION

    def layer_plan(self, prompt: PromptContext) -> VARLayerPlan:
        """Spec step 1 at prefill: the layer's sinks from the residual stream entering it, and its plan."""
        config, image_mask = self.config, prompt.positions.image_mask
        sinks = find_sink_tokens(prompt.hidden_states, config.sink_dims, config.tau, prompt.positions.valid)
        if image_mask.device not in prompt.shared:  # what all layers' plans share, once per prompt and device
            prompt.shared[image_mask.device] = plan_image(
                image_mask, p=config.p, rho=config.rho, summ=config.summ
            )
        return VARLayerPlan(plan_layer(prompt.shared[image_mask.device], sinks), sinks, image_mask, config)

    def layer_record(self, plan: VARLayerPlan, positions: Positions) -> dict[str, torch.Tensor]:
        return {
            "visual_sinks": (plan.sinks & plan.image_mask).sum(-1),
            "text_sinks": (plan.sinks & ~plan.image_mask).sum(-1),
        }

    @staticmethod
    def visual_sinks(plan: VARLayerPlan) -> torch.Tensor:
        """Bool[B, T_prefill]: the visual tokens found as sinks in the layer."""
        return plan.sinks & plan.image_mask


def prompt_sinks(prompt: PromptState | None) -> list[PromptSinks]:
    """Per prompt of the last prefill, from the sink masks of VAR's layer plans; one synchronisation
    per layer, so call it after `generate` (once, say), never inside the forward."""
    if prompt is None:
        return []
    visual_tokens = prompt.positions.image_mask.sum(dim=1).cpu()
    visual_sinks = torch.zeros_like(visual_tokens)
    for plan in prompt.plans.values():
        visual_sinks += VAR.visual_sinks(plan).sum(dim=1).cpu()
    return [
        PromptSinks(visual_tokens=tokens, visual_sinks=found)
        for tokens, found in zip(visual_tokens.tolist(), visual_sinks.tolist(), strict=True)
    ]
