"""The compute path of methods that change a row's scores on visual keys (ScalingVis, AdaptVis, PAI).

INTERVENTIONS_SPEC.md section 3 (`core.score_change`): a changed row needs its scores and values on
the visual keys, its base attention there (from the row's log-sum-exp, which SDPA gives, or eager
attention's own weights) and the base kernel's output. `O(visual)` per row; the base kernel's output
is kept bit for bit everywhere else. The same path serves every backend: these methods change one
row per sample and forward, too few for a kernel of their own to pay. At a decode step where every
sample has an image, the one new row is computed whole instead (`whole_rows`), as VAR does.
"""

from collections.abc import Callable
from types import MappingProxyType
from typing import ClassVar, NamedTuple

import torch

from lmms_var.core.score_change import renormaliser, visual_weight_change
from lmms_var.patch.explicit import grouped, scores, times_values
from lmms_var.patch.intervention import (
    Backend,
    ForwardKind,
    Intervention,
    LayerWork,
    Positions,
    PromptContext,
)
from lmms_var.patch.masks import blocked_keys
from lmms_var.patch.prefill import rows_log_sum_exp

ScoreChange = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class VisualKeys(NamedTuple):
    """Per sample, its visual key positions side by side."""

    index: torch.Tensor  # Long[B, M]: visual positions first, then filler
    present: torch.Tensor  # Bool[B, M]: false on the filler


def visual_keys(positions: Positions) -> VisualKeys:
    """The prompt's visual keys (one synchronisation: the most any sample has)."""
    image_mask = positions.image_mask
    order = torch.argsort((~image_mask).to(torch.int8), dim=1, stable=True)
    count = int(image_mask.sum(dim=1).max())
    index = order[:, :count].contiguous()
    return VisualKeys(index, image_mask.gather(1, index))


class ScoreChangePlan(NamedTuple):
    """One layer of one prompt, for `correct_rows`."""

    keys: VisualKeys
    alpha: torch.Tensor  # Float32[B]: the method's strength per sample
    change: ScoreChange  # g(s, alpha) of `core.score_change`


def _layer_keys(work: LayerWork) -> VisualKeys:
    """The visual keys as this layer's cache holds them: a sliding-window cache keeps only the last
    keys, so key `j` is position `key_offset + j` and earlier visual keys are gone."""
    keys = work.plan.keys
    if not work.key_offset:
        return keys
    index = keys.index - work.key_offset
    return VisualKeys(index.clamp(min=0), keys.present & (index >= 0))


def _base_attention(work: LayerWork, query: torch.Tensor, logits: torch.Tensor, keys: VisualKeys):
    """Float32[B, H, R, M]: the rows' base attention on the visual keys (0 where blocked)."""
    call, rows = work.call, work.rows
    blocked = blocked_keys(call.attention_mask, rows, call.query.shape[2], call.key.shape[2], keys.index)
    blocked = blocked | ~keys.present[:, None, None, :]
    weights = call.normaliser.weights
    if weights is not None:  # eager attention: read its own weights
        samples = torch.arange(rows.shape[0], device=rows.device)[:, None, None]
        attn = weights[samples, :, rows[:, :, None], keys.index[:, None, :]].permute(0, 3, 1, 2).float()
        return attn.masked_fill_(blocked, 0.0)
    log_sum_exp = rows_log_sum_exp(call, query, rows, work.options.block_elements)
    return (logits - log_sum_exp[..., None]).masked_fill_(blocked, float("-inf")).exp_()


def correct_rows(work: LayerWork) -> None:
    """Replace the base output of the allowed rows by `(o + sum_k delta_k V_k) / r`, in place."""
    call, rows, plan = work.call, work.rows, work.plan
    keys = _layer_keys(work)
    batch = rows.shape[0]
    kv_heads, head_dim = call.key.shape[1], call.key.shape[3]
    samples = torch.arange(batch, device=rows.device)[:, None]
    query = call.query[samples, :, rows].transpose(1, 2)  # [B, H, R, d]
    per_head = keys.index[:, None, :, None].expand(-1, kv_heads, -1, head_dim)
    logits = scores(query, call.key.gather(2, per_head), call.scaling)  # s on the visual keys
    attn = _base_attention(work, query, logits, keys)
    delta = visual_weight_change(attn, plan.change(logits, plan.alpha[:, None, None, None]))
    scale = renormaliser(delta)  # [B, H, R]
    values = call.value.gather(2, per_head).float().flatten(0, 1)  # [B * Hkv, M, d]
    heads, count = query.shape[1], rows.shape[1]
    added = torch.bmm(grouped(delta, kv_heads), values).view(batch, heads, count, -1)
    original = work.output[samples, rows]  # [B, R, H, d]
    changed = (original.float() + added.transpose(1, 2)) / scale.transpose(1, 2)[..., None]
    keep = ~work.row_valid[..., None, None]
    work.output[samples, rows] = torch.where(keep, original, changed.to(work.output.dtype))
    if work.counters is not None:
        allowed = work.row_valid[:, None, :]
        image = attn.sum(dim=-1)
        moved = (image + delta.sum(dim=-1)) / scale - image
        work.counters.redistributed_rows.add_((allowed & (delta != 0).any(dim=-1)).sum(dim=(1, 2)))
        work.counters.moved_mass.add_((moved * allowed).sum(dim=(1, 2)))


def whole_rows(work: LayerWork) -> None:
    """Write every row of a decode step whole, `softmax(s') V` over all its keys (the base kernel is
    skipped: one row per sample costs less explicitly than a base kernel call and a correction)."""
    call, plan = work.call, work.plan
    query_length, key_length = call.query.shape[2], call.key.shape[2]
    logits = scores(call.query, call.key, call.scaling)  # [B, H, Q, K]
    # The visual keys as a mask, the filler sent to one extra column (clamped filler may share an index
    # with a present key, and a scatter of both would keep either).
    keys = _layer_keys(work)
    image_mask = torch.zeros(logits.shape[0], key_length + 1, dtype=torch.bool, device=logits.device)
    image_mask.scatter_(1, keys.index.masked_fill(~keys.present, key_length), True)
    image_mask = image_mask[:, :key_length]
    changed = image_mask[:, None, None, :] & work.row_valid[:, None, :, None]
    new_logits = torch.where(changed, logits + plan.change(logits, plan.alpha[:, None, None, None]), logits)
    blocked = blocked_keys(call.attention_mask, work.rows, query_length, key_length)
    if blocked is not None:
        new_logits.masked_fill_(blocked, float("-inf"))
    attn = torch.softmax(new_logits, dim=-1)
    work.output.copy_(times_values(attn, call.value).transpose(1, 2))
    if work.counters is not None:
        before = torch.softmax(
            logits if blocked is None else logits.masked_fill(blocked, float("-inf")), dim=-1
        )
        on_image = image_mask[:, None, None, :]
        moved = ((attn - before) * on_image).sum(dim=-1)  # [B, H, Q]
        allowed = work.row_valid[:, None, :]
        work.counters.redistributed_rows.add_((allowed & (moved != 0)).sum(dim=(1, 2)))
        work.counters.moved_mass.add_((moved * allowed).sum(dim=(1, 2)))


# Every kind and backend these methods meet, on the PyTorch path (one row per sample and forward is
# too little work for a kernel of their own to pay).
PATHS = MappingProxyType(
    {
        (kind, backend): path
        for kind, path in (
            (ForwardKind.PREFILL_CORRECTION, correct_rows),
            (ForwardKind.DECODE_CORRECTION, correct_rows),
            (ForwardKind.WHOLE_ROWS, whole_rows),
        )
        for backend in (Backend.PYTORCH, Backend.TRITON)
    }
)


class ScoreChangeIntervention(Intervention):
    """The shared part of ScalingVis, AdaptVis and PAI: the row-local paths and a plan of the prompt's
    visual keys with the method's `alpha` per sample and its change of a score, `score_change`."""

    paths = PATHS
    score_change: ClassVar[ScoreChange]
    identity_alpha: ClassVar[float]  # the alpha that changes no score

    def is_identity(self) -> bool:
        return self.config.alpha == self.identity_alpha

    def alpha(self, prompt: PromptContext) -> torch.Tensor:
        """Float32[B]: the method's strength per sample (the config's `alpha` for each)."""
        batch = prompt.positions.image_mask.shape[0]
        return torch.full((batch,), float(self.config.alpha), device=prompt.positions.image_mask.device)

    def layer_plan(self, prompt: PromptContext) -> ScoreChangePlan:
        device = prompt.positions.image_mask.device
        if device not in prompt.shared:  # the same for every layer of the prompt
            prompt.shared[device] = visual_keys(prompt.positions)
        return ScoreChangePlan(prompt.shared[device], self.alpha(prompt), type(self).score_change)


def last_rows(positions: Positions, new: int) -> torch.Tensor:
    """Bool[B, new]: the last row of this forward, where it is not padding."""
    last = torch.zeros(positions.valid.shape[0], new, dtype=torch.bool, device=positions.valid.device)
    last[:, -1] = positions.valid[:, -1]
    return last
