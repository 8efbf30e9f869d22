"""A decode step's VAR in one Triton kernel: on a GPU, decoding is bound by kernel launches.

A decode step has one query row per sample and head. Its correction (see `attention.py`) splits by
the kind of key, because a selected row changes sinks by `p - 1` and visual non-sinks by `gain`:

    A'V - AV = sum_k A[k] * sink_change[k] * V[k]  +  gain * sum_k A[k] * receiver[k] * V[k]

with `gain = budget / receiver mass`. Those two sums and the row's four statistics (`KeyPlan`) are
all sums over the keys of the softmax row, so one pass with an online softmax (as flash-decoding
does) accumulates them without writing the row out. One launch per layer replaces the PyTorch
path's ~16 operations; the arithmetic is float32 whatever the model's dtype.

Imported only where Triton is installed. `TRITON_INTERPRET=1` runs the kernel on CPU tensors
(Triton's interpreter), which is how the CPU tests check it against the PyTorch path.
"""

import os

import torch
import triton
import triton.language as tl

from lmms_var.core import KeyPlan
from lmms_var.patch.state import LayerActivity

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
# torch.finfo(torch.float32).tiny, as in `core.redistribution`
_SMALLEST_NORMAL = tl.constexpr(1.1754943508222875e-38)


@triton.jit(do_not_specialize=["key_length"])
def _decode_var_kernel(
    out_ptr,  # [B, 1, H, d] the base kernel's output, corrected in place
    q_ptr,  # [B, H, 1, d]
    k_ptr,  # [B, Hkv, K, d]
    v_ptr,  # [B, Hkv, K, d]
    blocked_ptr,  # [B, K] uint8, 1 = key masked out (left padding); unused without HAS_BLOCKED
    weights_ptr,  # [B, P, 4] float32 KeyPlan.weights over the P planned (prompt) keys
    offsets_ptr,  # [B, 4] float32 KeyPlan.offsets
    sink_change_ptr,  # [B, P] float32
    receivers_ptr,  # [B, P] float32
    row_valid_ptr,  # [B] uint8: spec step 2 allows this sample's row
    redistributed_rows_ptr,  # [B] float32 diagnostics counter, += selected rows; needs WRITE_ACTIVITY
    moved_mass_ptr,  # [B] float32 diagnostics counter, += their budgets; needs WRITE_ACTIVITY
    key_length,
    planned_keys,
    group_size,
    head_dim,
    scaling,
    stride_ob,
    stride_oh,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kk,
    stride_vb,
    stride_vh,
    stride_vk,
    stride_blocked_b,
    stride_blocked_k,
    stride_weights_b,
    stride_offsets_b,
    stride_sink_change_b,
    stride_receivers_b,
    stride_row_valid_b,
    HAS_BLOCKED: tl.constexpr,
    WRITE_ACTIVITY: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    kv_head = h // group_size
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < head_dim
    stat_index = tl.arange(0, 4)
    query = tl.load(q_ptr + b * stride_qb + h * stride_qh + dims, mask=dim_in, other=0.0).to(tl.float32)
    query = query * scaling
    k_base = k_ptr + b * stride_kb + kv_head * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head * stride_vh

    running_max = tl.max(tl.full([BLOCK_K], -1.0e30, tl.float32), axis=0)
    total = tl.sum(tl.zeros([BLOCK_K], tl.float32), axis=0)
    statistics = tl.zeros([4], tl.float32)
    sink_values = tl.zeros([BLOCK_D], tl.float32)
    receiver_values = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, key_length, BLOCK_K):
        keys = start + tl.arange(0, BLOCK_K)
        key_in = keys < key_length
        tile_in = key_in[:, None] & dim_in[None, :]
        key_tile = tl.load(k_base + keys[:, None] * stride_kk + dims[None, :], mask=tile_in, other=0.0)
        scores = tl.sum(key_tile.to(tl.float32) * query[None, :], axis=1)
        visible = key_in
        if HAS_BLOCKED:
            blocked = tl.load(
                blocked_ptr + b * stride_blocked_b + keys * stride_blocked_k, mask=key_in, other=1
            )
            visible = visible & (blocked == 0)
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        rescale = tl.exp(running_max - new_max)
        weights = tl.exp(scores - new_max)
        total = total * rescale + tl.sum(weights, axis=0)

        planned = keys < planned_keys
        key_weights = tl.load(
            weights_ptr + b * stride_weights_b + keys[:, None] * 4 + stat_index[None, :],
            mask=planned[:, None],
            other=0.0,
        )
        statistics = statistics * rescale + tl.sum(weights[:, None] * key_weights, axis=0)
        sink_change = tl.load(sink_change_ptr + b * stride_sink_change_b + keys, mask=planned, other=0.0)
        receivers = tl.load(receivers_ptr + b * stride_receivers_b + keys, mask=planned, other=0.0)
        value_tile = tl.load(
            v_base + keys[:, None] * stride_vk + dims[None, :],
            mask=planned[:, None] & dim_in[None, :],
            other=0.0,
        ).to(tl.float32)
        sink_values = sink_values * rescale + tl.sum((weights * sink_change)[:, None] * value_tile, axis=0)
        receiver_values = receiver_values * rescale + tl.sum(
            (weights * receivers)[:, None] * value_tile, axis=0
        )
        running_max = new_max

    statistics = statistics / total + tl.load(offsets_ptr + b * stride_offsets_b + stat_index)
    image_centric = tl.min(tl.where(stat_index >= 1, statistics, float("inf")), axis=0) >= 0
    selected = image_centric & (tl.load(row_valid_ptr + b * stride_row_valid_b) != 0)
    budget = tl.sum(tl.where(stat_index == 0, statistics, 0.0), axis=0)
    receiver_mass = tl.sum(tl.where(stat_index == 1, statistics, 0.0), axis=0)
    gain = budget / tl.maximum(receiver_mass, _SMALLEST_NORMAL)
    correction = (sink_values + gain * receiver_values) / total

    out_ptrs = out_ptr + b * stride_ob + h * stride_oh + dims
    store = tl.where(selected, dim_in, False)
    base = tl.load(out_ptrs, mask=store, other=0.0).to(tl.float32)
    tl.store(out_ptrs, (base + correction).to(out_ptr.dtype.element_ty), mask=store)
    if WRITE_ACTIVITY:
        tl.atomic_add(redistributed_rows_ptr + b, selected.to(tl.float32))
        tl.atomic_add(moved_mass_ptr + b, tl.where(selected, budget, 0.0))


def add_decode_redistribution(
    output: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocked: torch.Tensor | None,
    plan: KeyPlan,
    row_valid: torch.Tensor,
    *,
    scaling: float,
    activity: LayerActivity | None,
) -> None:
    """Add A'V - AV to a decode step's `output` [B, 1, H, d] in place, for rows VAR selects.

    `query` [B, H, 1, d], `key`/`value` [B, Hkv, K, d], `blocked` Bool[B, 1, 1, K] or None,
    `row_valid` Bool[B, 1]. `activity` (diagnostics on) gets the selected rows and their budgets
    added on the device, inside the same launch.
    """
    batch, heads, rows, head_dim = query.shape
    if rows != 1:
        raise ValueError(f"the decode kernel takes one query row per sample, got {rows}")
    for name, tensor in (("output", output), ("query", query), ("key", key), ("value", value)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim (stride {tensor.stride(-1)})")
    key_length = key.shape[2]
    block_d = triton.next_power_of_2(head_dim)
    block_k = max(16, min(64, 8192 // block_d))
    counters = (activity.redistributed_rows, activity.moved_mass) if activity else (output, output)
    blocked_keys = blocked[:, 0, 0].view(torch.uint8) if blocked is not None else row_valid
    _decode_var_kernel[(batch, heads)](
        output,
        query,
        key,
        value,
        blocked_keys,
        plan.weights,
        plan.offsets,
        plan.sink_change,
        plan.receivers,
        row_valid.view(torch.uint8),
        *counters,
        key_length,
        plan.weights.shape[1],
        heads // key.shape[1],
        head_dim,
        scaling,
        output.stride(0),
        output.stride(2),
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        value.stride(0),
        value.stride(1),
        value.stride(2),
        blocked_keys.stride(0),
        blocked_keys.stride(-1),
        plan.weights.stride(0),
        plan.offsets.stride(0),
        plan.sink_change.stride(0),
        plan.receivers.stride(0),
        row_valid.stride(0),
        HAS_BLOCKED=blocked is not None,
        WRITE_ACTIVITY=activity is not None,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
    )
