"""VAR's rows in two Triton kernels: on a GPU, launching small operations costs more than their math.

For one row the correction (see `attention.py`) splits by the kind of key, because a selected row
scales sinks by `p` and visual non-sinks by `1 + gain`:

    A'V - AV = sum_k A[k] * sink_change[k] * V[k]  +  gain * sum_k A[k] * receiver[k] * V[k]

with `gain = budget / receiver mass`. Those two sums and the row's four statistics (`KeyPlan`) are
all sums of exp(score) over the row's keys, so, as in flash-decoding, they split over chunks of
keys: `_chunk_sums` reduces each chunk in its own program (enough programs to fill the GPU even for
a single decode row), and `_finish_rows` merges a row's chunks, selects the row or not and adds the
correction to the base kernel's output. Two launches per layer replace the PyTorch path's ~16
operations; nothing of size [H, R, K] is written; the arithmetic is float32 whatever the model's dtype.

Imported only where Triton is installed. `TRITON_INTERPRET=1` runs the kernels on CPU tensors
(Triton's interpreter), which is how the CPU tests check them against the PyTorch path.
"""

import functools
import os

import torch
import triton
import triton.language as tl

from lmms_var.core import KeyPlan
from lmms_var.patch.state import LayerActivity

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Receiver mass is clamped to this before dividing, as in `core.redistribution`.
_SMALLEST_NORMAL = tl.constexpr(torch.finfo(torch.float32).tiny)
_FAR_BELOW = tl.constexpr(-1.0e30)  # a finite "minus infinity" for running maxima
# Per chunk: max score, exp-sum, 4 statistics, 2 spare, then the sink and receiver value sums.
_HEADER_FLOATS = 8
_HEADER = tl.constexpr(_HEADER_FLOATS)
# Chunks per row are chosen for about this many programs per multiprocessor: more fill the GPU for
# a single decode row, fewer keep the [B * H, R, chunks, ...] workspace small at prefill.
_PROGRAMS_PER_SM = 4


@triton.jit
def _program_row(heads):
    """(b * H + h, row r, rows R, b, h) of this program: grid axis 0 is batch x head, axis 1 the row."""
    batch_head = tl.program_id(0).to(tl.int64)
    return batch_head, tl.program_id(1), tl.num_programs(1), batch_head // heads, batch_head % heads


@triton.jit(do_not_specialize=["key_length", "query_length"])
def _chunk_sums(
    q_ptr,  # [B, H, Q, d], any strides but contiguous d
    k_ptr,  # [B, Hkv, K, d], any strides but contiguous d
    v_ptr,  # [B, Hkv, K, d], any strides but contiguous d
    blocked_ptr,  # [B, R, K] uint8, 1 = key masked out; unused without HAS_BLOCKED (then causal only)
    weights_ptr,  # [B, P, 4] float32 KeyPlan.weights over the P planned (prompt) keys
    sink_change_ptr,  # [B, P] float32
    receivers_ptr,  # [B, P] float32
    rows_ptr,  # [B, R] int64: each row's query index in this forward
    chunks_ptr,  # [B * H, R, chunks, _HEADER + 2 * BLOCK_D] float32 out
    stride_qb,
    stride_qh,
    stride_qq,
    stride_kb,
    stride_kh,
    stride_kk,
    stride_vb,
    stride_vh,
    stride_vk,
    key_length,
    query_length,
    planned_keys,
    chunk_keys,  # keys per chunk, a multiple of BLOCK_K
    heads,
    group_size,
    head_dim,
    scaling,
    HAS_BLOCKED: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    batch_head, r, row_count, b, h = _program_row(heads)
    chunk = tl.program_id(2)
    kv_head = h // group_size
    position = tl.load(rows_ptr + b * row_count + r)
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < head_dim
    stat_index = tl.arange(0, 4)

    last_key = position + key_length - query_length  # causal, counted from the cache's end
    query = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + position * stride_qq + dims, mask=dim_in, other=0.0
    ).to(tl.float32)
    k_base = k_ptr + b * stride_kb + kv_head * stride_kh
    v_base = v_ptr + b * stride_vb + kv_head * stride_vh

    # An online softmax over the chunk's tiles: sums are kept relative to the running maximum.
    running_max = tl.max(tl.full([BLOCK_K], _FAR_BELOW, tl.float32), axis=0)
    total = tl.sum(tl.zeros([BLOCK_K], tl.float32), axis=0)
    statistics = tl.zeros([4], tl.float32)
    sink_values = tl.zeros([BLOCK_D], tl.float32)
    receiver_values = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, chunk_keys, BLOCK_K):
        keys = chunk * chunk_keys + start + tl.arange(0, BLOCK_K)
        visible = keys <= last_key
        if HAS_BLOCKED:
            blocked = tl.load(
                blocked_ptr + (b * row_count + r) * key_length + keys, mask=keys < key_length, other=1
            )
            visible = visible & (blocked == 0)
        key_tile = tl.load(
            k_base + keys[:, None] * stride_kk + dims[None, :],
            mask=visible[:, None] & dim_in[None, :],
            other=0.0,
        )
        scores = tl.sum(key_tile.to(tl.float32) * query[None, :], axis=1) * scaling
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        rescale = tl.exp(running_max - new_max)
        weights = tl.exp(scores - new_max)  # 0 for keys this row does not see

        planned = visible & (keys < planned_keys)
        plan_index = b * planned_keys + keys
        key_weights = tl.load(
            weights_ptr + plan_index[:, None] * 4 + stat_index[None, :], mask=planned[:, None], other=0.0
        )
        sink_change = tl.load(sink_change_ptr + plan_index, mask=planned, other=0.0)
        receivers = tl.load(receivers_ptr + plan_index, mask=planned, other=0.0)
        value_tile = tl.load(
            v_base + keys[:, None] * stride_vk + dims[None, :],
            mask=planned[:, None] & dim_in[None, :],
            other=0.0,
        ).to(tl.float32)
        total = total * rescale + tl.sum(weights, axis=0)
        statistics = statistics * rescale + tl.sum(weights[:, None] * key_weights, axis=0)
        sink_values = sink_values * rescale + tl.sum((weights * sink_change)[:, None] * value_tile, axis=0)
        receiver_values = receiver_values * rescale + tl.sum(
            (weights * receivers)[:, None] * value_tile, axis=0
        )
        running_max = new_max

    out = chunks_ptr + ((batch_head * row_count + r) * tl.num_programs(2) + chunk) * (_HEADER + 2 * BLOCK_D)
    tl.store(out, running_max)
    tl.store(out + 1, total)
    tl.store(out + 2 + stat_index, statistics)
    tl.store(out + _HEADER + dims, sink_values)
    tl.store(out + _HEADER + BLOCK_D + dims, receiver_values)


@triton.jit
def _finish_rows(
    chunks_ptr,  # [B * H, R, chunks, _HEADER + 2 * BLOCK_D] float32, from `_chunk_sums`
    offsets_ptr,  # [B, 4] float32 KeyPlan.offsets
    rows_ptr,  # [B, R] int64
    row_valid_ptr,  # [B, R] uint8: spec step 2 allows the row
    out_ptr,  # [B, Q, H, d] contiguous: the base kernel's output, corrected in place
    redistributed_rows_ptr,  # [B] float32 diagnostics counter, += selected rows; needs WRITE_ACTIVITY
    moved_mass_ptr,  # [B] float32 diagnostics counter, += their budgets; needs WRITE_ACTIVITY
    chunks,
    query_length,
    heads,
    head_dim,
    WRITE_ACTIVITY: tl.constexpr,
    BLOCK_CHUNKS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    batch_head, r, row_count, b, h = _program_row(heads)
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < head_dim
    stat_index = tl.arange(0, 4)
    chunk_index = tl.arange(0, BLOCK_CHUNKS)
    chunk_in = chunk_index < chunks

    base = chunks_ptr + (batch_head * row_count + r) * chunks * (_HEADER + 2 * BLOCK_D)
    per_chunk = base + chunk_index * (_HEADER + 2 * BLOCK_D)
    chunk_max = tl.load(per_chunk, mask=chunk_in, other=_FAR_BELOW)
    scale = tl.exp(chunk_max - tl.max(chunk_max, axis=0))  # merges the chunks' softmax bases
    scale = tl.where(chunk_in, scale, 0.0)
    total = tl.sum(scale * tl.load(per_chunk + 1, mask=chunk_in, other=0.0), axis=0)
    total = tl.maximum(total, _SMALLEST_NORMAL)  # 0 only for padding rows, which see no key
    statistics = tl.sum(
        scale[:, None]
        * tl.load(per_chunk[:, None] + 2 + stat_index[None, :], mask=chunk_in[:, None], other=0.0),
        axis=0,
    )
    value_mask = chunk_in[:, None] & dim_in[None, :]
    sink_values = tl.sum(
        scale[:, None] * tl.load(per_chunk[:, None] + _HEADER + dims[None, :], mask=value_mask, other=0.0),
        axis=0,
    )
    receiver_values = tl.sum(
        scale[:, None]
        * tl.load(per_chunk[:, None] + _HEADER + BLOCK_D + dims[None, :], mask=value_mask, other=0.0),
        axis=0,
    )

    statistics = statistics / total + tl.load(offsets_ptr + b * 4 + stat_index)
    image_centric = tl.min(tl.where(stat_index >= 1, statistics, float("inf")), axis=0) >= 0
    selected = image_centric & (tl.load(row_valid_ptr + b * row_count + r) != 0)
    budget = tl.sum(tl.where(stat_index == 0, statistics, 0.0), axis=0)
    receiver_mass = tl.sum(tl.where(stat_index == 1, statistics, 0.0), axis=0)
    gain = budget / tl.maximum(receiver_mass, _SMALLEST_NORMAL)
    correction = (sink_values + gain * receiver_values) / total

    position = tl.load(rows_ptr + b * row_count + r)
    out_ptrs = out_ptr + ((b * query_length + position) * heads + h) * head_dim + dims
    store = tl.where(selected, dim_in, False)
    output = tl.load(out_ptrs, mask=store, other=0.0).to(tl.float32)
    tl.store(out_ptrs, (output + correction).to(out_ptr.dtype.element_ty), mask=store)
    if WRITE_ACTIVITY:
        tl.atomic_add(redistributed_rows_ptr + b, selected.to(tl.float32))
        tl.atomic_add(moved_mass_ptr + b, tl.where(selected, budget, 0.0))


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a typical count for the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 128


def add_row_redistribution(
    output: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocked: torch.Tensor | None,
    plan: KeyPlan,
    rows: torch.Tensor,
    row_valid: torch.Tensor,
    *,
    scaling: float,
    activity: LayerActivity | None,
    block_k: int | None = None,
    chunks: int | None = None,
) -> None:
    """Add A'V - AV to the base kernel's `output` [B, Q, H, d] in place, for the rows VAR selects.

    `query` [B, H, Q, d], `key`/`value` [B, Hkv, K, d]; `rows` Long[B, R] are the query indices VAR
    may change and `row_valid` Bool[B, R] says which of them spec step 2 allows. `blocked`
    Bool[B, 1, R, K] marks keys a row may not see (from the attention mask); None means causal only.
    `activity` (diagnostics on) gets the selected rows and their budgets added on the device.
    `block_k` (keys per tile) and `chunks` (per row) are for tests and tuning; by default a row is
    split into just enough chunks to give every streaming multiprocessor a few programs.
    """
    batch, heads, query_length, head_dim = query.shape
    row_count, key_length = rows.shape[1], key.shape[2]
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim, got strides {tensor.stride()}")
    if not output.is_contiguous():
        raise ValueError("output must be a contiguous [batch, query, heads, head_dim] tensor")
    rows, row_valid = rows.contiguous(), row_valid.contiguous().view(torch.uint8)  # no copy from VARState
    if blocked is not None:
        blocked = blocked.contiguous().view(torch.uint8)
    block_d = triton.next_power_of_2(head_dim)
    block_k = block_k or max(16, min(128, 16384 // block_d))
    tiles = triton.cdiv(key_length, block_k)
    if chunks is None:
        chunks = triton.cdiv(_PROGRAMS_PER_SM * _multiprocessors(query.device), batch * heads * row_count)
    tiles_per_chunk = triton.cdiv(tiles, max(1, min(chunks, tiles)))
    chunk_count = triton.cdiv(tiles, tiles_per_chunk)
    chunk_sums = torch.empty(
        batch * heads * row_count * chunk_count * (_HEADER_FLOATS + 2 * block_d),
        dtype=torch.float32,
        device=query.device,
    )
    _chunk_sums[(batch * heads, row_count, chunk_count)](
        query,
        key,
        value,
        blocked if blocked is not None else row_valid,
        plan.weights,
        plan.sink_change,
        plan.receivers,
        rows,
        chunk_sums,
        *query.stride()[:3],
        *key.stride()[:3],
        *value.stride()[:3],
        key_length,
        query_length,
        plan.weights.shape[1],
        tiles_per_chunk * block_k,
        heads,
        heads // key.shape[1],
        head_dim,
        scaling,
        HAS_BLOCKED=blocked is not None,
        BLOCK_K=block_k,
        BLOCK_D=block_d,
    )
    counters = (activity.redistributed_rows, activity.moved_mass) if activity else (chunk_sums,) * 2
    _finish_rows[(batch * heads, row_count)](
        chunk_sums,
        plan.offsets,
        rows,
        row_valid,
        output,
        *counters,
        chunk_count,
        query_length,
        heads,
        head_dim,
        WRITE_ACTIVITY=activity is not None,
        BLOCK_CHUNKS=triton.next_power_of_2(chunk_count),
        BLOCK_D=block_d,
    )
