"""VAR's rows in one Triton kernel: on a GPU, launching small operations costs more than their math.

For one row the correction (see `attention.py`) splits by the kind of key, because a selected row
scales sinks by `p` and visual non-sinks by `1 + gain`:

    A'V - AV = sum_k A[k] * sink_change[k] * V[k]  +  gain * sum_k A[k] * receiver[k] * V[k]

with `gain = budget / receiver mass`. Those two sums and the row's four statistics (`KeyPlan`) are
all sums of exp(score) over the row's keys, so, as in flash-decoding, they split over chunks of
keys, each reduced by its own program (enough programs to fill the GPU even for a single decode
row). The program that finishes a row's last chunk merges the chunks, selects the row or not and
adds the correction to the base kernel's output; or, for whole rows (a decode step, where the base
kernel is not run), also sums AV and writes A'V. One launch per layer replaces the PyTorch path's
~16 operations; nothing of size [H, R, K] is written; the arithmetic is float32 whatever the dtype.

Imported only where Triton is installed. `TRITON_INTERPRET=1` runs the kernel on CPU tensors
(Triton's interpreter), which is how the CPU tests check it against the PyTorch path.
"""

import contextlib
import functools
import inspect
import itertools
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from lmms_var.core import BUDGET, RECEIVERS, STATISTICS, KeyPlan
from lmms_var.patch.explicit import LayerCall
from lmms_var.patch.intervention import Counters as LayerActivity
from lmms_var.patch.prefill import RelevantKeys

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_INTERPRETED = tl.constexpr(INTERPRETED)
# Receiver mass is clamped to this before dividing, as in `core.redistribution`.
# The statistics of a row, as `core.redistribution` indexes them.
_STATISTICS, _BUDGET, _RECEIVERS = tl.constexpr(STATISTICS), tl.constexpr(BUDGET), tl.constexpr(RECEIVERS)
_SMALLEST_NORMAL = tl.constexpr(torch.finfo(torch.float32).tiny)
_FAR_BELOW = tl.constexpr(-1.0e30)  # a finite "minus infinity" for running maxima
# Per chunk: max score, exp-sum, 4 statistics, 2 spare, then the sink and receiver value sums
# (and, for whole rows, the plain value sum).
_HEADER_FLOATS = 8
_HEADER = tl.constexpr(_HEADER_FLOATS)
# Chunks per row are chosen for about this many programs per multiprocessor: more fill the GPU for
# a single decode row, fewer keep the [B * H, R, chunks, ...] workspace small at prefill.
_PROGRAMS_PER_SM = 4
# At most this many chunks per decode row (a power of two): the program finishing a row merges them
# in one [_MAX_CHUNKS, BLOCK_D] tile, so the chunk count is a runtime value, not a specialisation.
_MAX_CHUNKS = 64
_BLOCK_CHUNKS = tl.constexpr(_MAX_CHUNKS)


@triton.jit(do_not_specialize=["key_length", "query_length", "heads", "group"])
def _redistribute_rows(
    q_ptr,  # [B, H, Q, d], any strides but contiguous d
    k_ptr,  # [B, Hkv, K, d], any strides but contiguous d
    v_ptr,  # [B, Hkv, K, d], any strides but contiguous d
    blocked_ptr,  # [B, R, K] uint8, 1 = key masked out; unused without HAS_BLOCKED (then causal only)
    weights_ptr,  # [B, P, 4] float32 KeyPlan.weights over the P planned (prompt) keys
    offsets_ptr,  # [B, 4] float32 KeyPlan.offsets
    sink_change_ptr,  # [B, P] float32
    receivers_ptr,  # [B, P] float32
    rows_ptr,  # [B, R] int64: each row's query index in this forward
    row_valid_ptr,  # [B, R] uint8: spec step 2 allows the row
    out_ptr,  # [B, Q, H, d] contiguous: the base kernel's output, corrected in place (or written)
    partials_ptr,  # [B * H, R, chunks, PARTIAL_FLOATS] float32 scratch
    tickets_ptr,  # [B * H * R] int32 zeros: chunks of each row done so far; left zero again
    redistributed_rows_ptr,  # [B] float32 diagnostics counter, += selected rows (scratch without diagnostics)
    moved_mass_ptr,  # [B] float32 diagnostics counter, += their budgets (scratch without diagnostics)
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
    scaling,
    heads,
    group,  # query heads per key/value head
    HEAD_DIM: tl.constexpr,
    HAS_BLOCKED: tl.constexpr,
    WHOLE_ROWS: tl.constexpr,  # write A'V rather than add A'V - AV
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PARTIAL_FLOATS: tl.constexpr,  # per chunk: _HEADER, then 2 value sums (3 for whole rows)
):
    """One program per (batch x head, row, chunk of keys); the row's last chunk to finish merges them."""
    batch_head = tl.program_id(0).to(tl.int64)
    r, row_count = tl.program_id(1), tl.num_programs(1)
    chunk, chunk_count = tl.program_id(2), tl.num_programs(2)
    b, h = batch_head // heads, batch_head % heads
    row = batch_head * row_count + r
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < HEAD_DIM
    stat_index = tl.arange(0, _STATISTICS)

    position = tl.load(rows_ptr + b * row_count + r)
    last_key = position + key_length - query_length  # causal, counted from the cache's end
    query = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + position * stride_qq + dims, mask=dim_in, other=0.0
    ).to(tl.float32)
    k_base = k_ptr + b * stride_kb + (h // group) * stride_kh
    v_base = v_ptr + b * stride_vb + (h // group) * stride_vh

    # An online softmax over the chunk's tiles: sums are kept relative to the running maximum.
    running_max = tl.max(tl.full([BLOCK_K], _FAR_BELOW, tl.float32), axis=0)
    total = tl.sum(tl.zeros([BLOCK_K], tl.float32), axis=0)
    statistics = tl.zeros([_STATISTICS], tl.float32)
    sink_values = tl.zeros([BLOCK_D], tl.float32)
    receiver_values = tl.zeros([BLOCK_D], tl.float32)
    row_values = tl.zeros([BLOCK_D], tl.float32)
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
            weights_ptr + plan_index[:, None] * _STATISTICS + stat_index[None, :],
            mask=planned[:, None],
            other=0.0,
        )
        sink_change = tl.load(sink_change_ptr + plan_index, mask=planned, other=0.0)
        receivers = tl.load(receivers_ptr + plan_index, mask=planned, other=0.0)
        value_tile = tl.load(
            v_base + keys[:, None] * stride_vk + dims[None, :],
            mask=(visible if WHOLE_ROWS else planned)[:, None] & dim_in[None, :],
            other=0.0,
        ).to(tl.float32)
        total = total * rescale + tl.sum(weights, axis=0)
        statistics = statistics * rescale + tl.sum(weights[:, None] * key_weights, axis=0)
        sink_values = sink_values * rescale + tl.sum((weights * sink_change)[:, None] * value_tile, axis=0)
        receiver_values = receiver_values * rescale + tl.sum(
            (weights * receivers)[:, None] * value_tile, axis=0
        )
        if WHOLE_ROWS:
            row_values = row_values * rescale + tl.sum(weights[:, None] * value_tile, axis=0)
        running_max = new_max

    partials = partials_ptr + row * chunk_count * PARTIAL_FLOATS
    out = partials + chunk * PARTIAL_FLOATS
    tl.store(out, running_max)
    tl.store(out + 1, total)
    tl.store(out + 2 + stat_index, statistics)
    tl.store(out + _HEADER + dims, sink_values)
    tl.store(out + _HEADER + BLOCK_D + dims, receiver_values)
    if WHOLE_ROWS:
        tl.store(out + _HEADER + 2 * BLOCK_D + dims, row_values)
    # Every thread's stores come before the ticket; the ticket's acquire-release ordering makes
    # them visible to the program that takes the row's last ticket, which finishes the row.
    tl.debug_barrier()
    if tl.atomic_add(tickets_ptr + row, 1) == chunk_count - 1:
        tl.atomic_xchg(tickets_ptr + row, 0)  # every chunk has its ticket: ready for the next launch
        _finish_row(
            partials,
            chunk_count,
            offsets_ptr + b * _STATISTICS,
            row_valid_ptr + b * row_count + r,
            out_ptr + ((b * query_length + position) * heads + h) * HEAD_DIM,
            redistributed_rows_ptr + b,
            moved_mass_ptr + b,
            HEAD_DIM,
            WHOLE_ROWS,
            BLOCK_D,
            PARTIAL_FLOATS,
        )


@triton.jit
def _finish_row(
    partials,  # [chunks, PARTIAL_FLOATS] of this row, written by the other programs
    chunk_count,
    offsets,  # [4] KeyPlan.offsets of the row's sample
    row_valid,  # the row's flag
    out,  # [d] the row's output
    redistributed_rows,
    moved_mass,
    HEAD_DIM: tl.constexpr,
    WHOLE_ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PARTIAL_FLOATS: tl.constexpr,
):
    """Merge the row's chunks, select the row or not, and add its correction to `out` (or write A'V)."""
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < HEAD_DIM
    stat_index = tl.arange(0, _STATISTICS)
    chunk_index = tl.arange(0, _BLOCK_CHUNKS)
    chunk_in = chunk_index < chunk_count
    per_chunk = partials + chunk_index * PARTIAL_FLOATS
    # ".cg" reads from L2, where the other programs' stores are, never from a stale L1 line.
    chunk_max = tl.load(per_chunk, mask=chunk_in, other=_FAR_BELOW, cache_modifier=".cg")
    scale = tl.exp(chunk_max - tl.max(chunk_max, axis=0))  # merges the chunks' softmax bases
    scale = tl.where(chunk_in, scale, 0.0)
    total = tl.sum(scale * tl.load(per_chunk + 1, mask=chunk_in, other=0.0, cache_modifier=".cg"), axis=0)
    total = tl.maximum(total, _SMALLEST_NORMAL)  # 0 only for padding rows, which see no key
    statistics = tl.sum(
        scale[:, None]
        * tl.load(
            per_chunk[:, None] + 2 + stat_index[None, :],
            mask=chunk_in[:, None],
            other=0.0,
            cache_modifier=".cg",
        ),
        axis=0,
    )
    value_mask = chunk_in[:, None] & dim_in[None, :]
    value_sums = per_chunk[:, None] + _HEADER + dims[None, :]
    sink_values = tl.sum(
        scale[:, None] * tl.load(value_sums, mask=value_mask, other=0.0, cache_modifier=".cg"), axis=0
    )
    receiver_values = tl.sum(
        scale[:, None] * tl.load(value_sums + BLOCK_D, mask=value_mask, other=0.0, cache_modifier=".cg"),
        axis=0,
    )

    statistics = statistics / total + tl.load(offsets + stat_index)
    image_centric = tl.min(tl.where(stat_index >= _RECEIVERS, statistics, float("inf")), axis=0) >= 0
    selected = image_centric & (tl.load(row_valid) != 0)
    budget = tl.sum(tl.where(stat_index == _BUDGET, statistics, 0.0), axis=0)
    receiver_mass = tl.sum(tl.where(stat_index == _RECEIVERS, statistics, 0.0), axis=0)
    gain = budget / tl.maximum(receiver_mass, _SMALLEST_NORMAL)
    correction = (sink_values + gain * receiver_values) / total

    if WHOLE_ROWS:
        row_values = tl.sum(
            scale[:, None]
            * tl.load(value_sums + 2 * BLOCK_D, mask=value_mask, other=0.0, cache_modifier=".cg"),
            axis=0,
        )
        output = row_values / total + tl.where(selected, correction, 0.0)
        tl.store(out + dims, output.to(out.dtype.element_ty), mask=dim_in)
    else:
        store = tl.where(selected, dim_in, False)
        output = tl.load(out + dims, mask=store, other=0.0).to(tl.float32)
        tl.store(out + dims, (output + correction).to(out.dtype.element_ty), mask=store)
    tl.atomic_add(redistributed_rows, selected.to(tl.float32))
    tl.atomic_add(moved_mass, tl.where(selected, budget, 0.0))


@triton.jit
def _product(a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """a [M, K] @ b [K, N] accumulated in float32: `tl.dot` for tiles of 16 rows or more, else a broadcast sum.

    `PRECISION` applies to float32 operands: "ieee" keeps float32 models exact, "tf32" runs on tensor
    cores. Triton 3.8's interpreter multiplies bfloat16 tiles wrongly, so it gets float32 ones there
    (the same products: a product of two bfloat16 values is exact in float32).
    """
    if USE_DOT:
        if _INTERPRETED:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b, input_precision=PRECISION)
    return tl.sum(a[:, :, None].to(tl.float32) * b[None, :, :].to(tl.float32), axis=1)


@triton.jit
def _visible(
    keys,  # [BLOCK_K] key positions
    last_key,  # [TILE_R] each row's last causal key
    keys_in,  # [BLOCK_K] keys that exist
    row_in,  # [TILE_R]
    mask_ptr,  # the attention mask of the row's sample (see MASK_KIND)
    positions,  # [TILE_R] the rows' query indices
    stride_mq,
    stride_mk,
    blocked_below,
    MASK_KIND: tl.constexpr,  # 0 causal only, 1 bool [Q, K], 2 additive [Q, K], 3 padding [K] and causal
):
    """Bool[TILE_R, BLOCK_K]: which keys each row sees, read from the mask the base kernel got."""
    visible = (keys[None, :] <= last_key[:, None]) & keys_in[None, :] & row_in[:, None]
    entries = mask_ptr + positions[:, None] * stride_mq + keys[None, :] * stride_mk
    if MASK_KIND == 1:
        visible = visible & (tl.load(entries, mask=visible, other=0) != 0)
    if MASK_KIND == 2:
        visible = visible & (tl.load(entries, mask=visible, other=0.0) > blocked_below)
    if MASK_KIND == 3:
        visible = visible & (tl.load(mask_ptr + keys * stride_mk, mask=keys_in, other=0) != 0)[None, :]
    return visible


@triton.jit(do_not_specialize=["key_length", "query_length", "row_count", "planned_keys", "heads", "group"])
def _correct_prefill_rows(
    q_ptr,  # [B, H, Q, d], any strides but contiguous d
    k_ptr,  # [B, Hkv, K, d], any strides but contiguous d
    v_ptr,  # [B, Hkv, K, d], any strides but contiguous d
    lse_ptr,  # [B, H, Q] float32 log-sum-exp of every row from the base kernel; needs HAS_LSE
    mask_ptr,  # [B, Q, K] or [B, K] mask (see `_visible`); unused with MASK_KIND 0
    key_order_ptr,  # [B, P] int64: each sample's relevant keys (visual or sink) first
    key_counts_ptr,  # [B] int64: how many are relevant
    weights_ptr,  # [B, P, 4] float32 KeyPlan.weights
    offsets_ptr,  # [B, 4] float32 KeyPlan.offsets
    sink_change_ptr,  # [B, P] float32
    receivers_ptr,  # [B, P] float32
    rows_ptr,  # [B, R] int64: each row's query index
    row_valid_ptr,  # [B, R] uint8: spec step 2 allows the row
    out_ptr,  # [B, Q, H, d] contiguous: the base kernel's output, corrected in place
    partials_ptr,  # [B * H, tiles, chunks, TILE_R, PARTIAL_FLOATS] float32 scratch, with CHUNKED
    tickets_ptr,  # [B * H * tiles] int32 zeros, with CHUNKED; left zero again
    redistributed_rows_ptr,  # [B] float32 diagnostics counter (scratch without diagnostics)
    moved_mass_ptr,  # [B] float32 diagnostics counter (scratch without diagnostics)
    stride_qb,
    stride_qh,
    stride_qq,
    stride_kb,
    stride_kh,
    stride_kk,
    stride_vb,
    stride_vh,
    stride_vk,
    stride_lb,
    stride_lh,
    stride_lq,
    stride_mb,
    stride_mq,
    stride_mk,
    key_length,
    query_length,
    planned_keys,
    row_count,
    scaling,
    blocked_below,  # an additive mask blocks where its entry is at most this
    heads,
    group,  # query heads per key/value head
    HEAD_DIM: tl.constexpr,
    MASK_KIND: tl.constexpr,
    HAS_LSE: tl.constexpr,  # else a first pass over every key computes the rows' log-sum-exp
    CHUNKED: tl.constexpr,  # several programs share a tile's relevant keys (grid axis 2)
    TILE_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PARTIAL_FLOATS: tl.constexpr,  # per chunk and row: 4 statistics, then 2 value sums
    VALUE_PRECISION: tl.constexpr,  # of the float32 attention times values: "ieee", or "tf32" for half models
):
    """One program per (batch x head, tile of rows, chunk of the relevant keys).

    With every row's log-sum-exp known, a row's attention on a key is exp(score - lse): its sums
    over visual and sink keys split over chunks with no rescaling, and other keys are never read.
    """
    batch_head = tl.program_id(0).to(tl.int64)
    tile, tile_count = tl.program_id(1), tl.num_programs(1)
    chunk, chunk_count = tl.program_id(2), tl.num_programs(2)
    b, h = batch_head // heads, batch_head % heads
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < HEAD_DIM
    stat_index = tl.arange(0, _STATISTICS)
    row_index = tile * TILE_R + tl.arange(0, TILE_R)
    row_in = row_index < row_count
    positions = tl.load(rows_ptr + b * row_count + row_index, mask=row_in, other=0)
    last_key = positions + key_length - query_length  # causal, counted from the cache's end
    query = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + positions[:, None] * stride_qq + dims[None, :],
        mask=row_in[:, None] & dim_in[None, :],
        other=0.0,
    )
    k_base = k_ptr + b * stride_kb + (h // group) * stride_kh
    v_base = v_ptr + b * stride_vb + (h // group) * stride_vh
    mask_base = mask_ptr + b * stride_mb
    USE_DOT: tl.constexpr = TILE_R >= 16

    if HAS_LSE:
        lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + positions * stride_lq, mask=row_in, other=0.0)
    else:  # an online log-sum-exp over every key the tile's rows see
        running_max = tl.full([TILE_R], _FAR_BELOW, tl.float32)
        total = tl.zeros([TILE_R], tl.float32)
        for start in range(0, tl.max(tl.where(row_in, last_key, 0), axis=0) + 1, BLOCK_K):
            keys = start + tl.arange(0, BLOCK_K)
            keys_in = keys < key_length
            visible = _visible(
                keys,
                last_key,
                keys_in,
                row_in,
                mask_base,
                positions,
                stride_mq,
                stride_mk,
                blocked_below,
                MASK_KIND,
            )
            key_tile = tl.load(
                k_base + keys[:, None] * stride_kk + dims[None, :],
                mask=keys_in[:, None] & dim_in[None, :],
                other=0.0,
            )
            scores = _product(query, tl.trans(key_tile), USE_DOT, "ieee") * scaling
            scores = tl.where(visible, scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, axis=1))
            total = total * tl.exp(running_max - new_max) + tl.sum(tl.exp(scores - new_max[:, None]), axis=1)
            running_max = new_max
        # A row that sees no key has no weight to normalise: any finite value does.
        lse = running_max + tl.log(tl.maximum(total, _SMALLEST_NORMAL))

    statistics = tl.zeros([TILE_R, _STATISTICS], tl.float32)
    sink_values = tl.zeros([TILE_R, BLOCK_D], tl.float32)
    receiver_values = tl.zeros([TILE_R, BLOCK_D], tl.float32)
    count = tl.load(key_counts_ptr + b)
    for key_tile_index in range(chunk, tl.cdiv(count, BLOCK_K), chunk_count):
        slots = key_tile_index * BLOCK_K + tl.arange(0, BLOCK_K)
        listed = slots < count
        keys = tl.load(key_order_ptr + b * planned_keys + slots, mask=listed, other=0)
        visible = _visible(
            keys,
            last_key,
            listed,
            row_in,
            mask_base,
            positions,
            stride_mq,
            stride_mk,
            blocked_below,
            MASK_KIND,
        )
        tile_mask = listed[:, None] & dim_in[None, :]
        key_tile = tl.load(k_base + keys[:, None] * stride_kk + dims[None, :], mask=tile_mask, other=0.0)
        scores = _product(query, tl.trans(key_tile), USE_DOT, "ieee") * scaling
        attn = tl.exp(tl.where(visible, scores - lse[:, None], float("-inf")))
        plan_index = b * planned_keys + keys
        key_weights = tl.load(
            weights_ptr + plan_index[:, None] * _STATISTICS + stat_index[None, :],
            mask=listed[:, None],
            other=0.0,
        )
        statistics += tl.sum(attn[:, :, None] * key_weights[None, :, :], axis=1)
        sink_change = tl.load(sink_change_ptr + plan_index, mask=listed, other=0.0)
        receivers = tl.load(receivers_ptr + plan_index, mask=listed, other=0.0)
        value_tile = tl.load(v_base + keys[:, None] * stride_vk + dims[None, :], mask=tile_mask, other=0.0)
        value_tile = value_tile.to(tl.float32)
        sink_values += _product(attn * sink_change[None, :], value_tile, USE_DOT, VALUE_PRECISION)
        receiver_values += _product(attn * receivers[None, :], value_tile, USE_DOT, VALUE_PRECISION)

    finishes = True  # this program corrects the tile: with chunks, only the last one to finish
    if CHUNKED:  # park this chunk's sums; the tile's last chunk to finish adds them all up
        tile_id = batch_head * tile_count + tile
        partials = partials_ptr + tile_id * chunk_count * TILE_R * PARTIAL_FLOATS
        tile_rows = tl.arange(0, TILE_R)[:, None] * PARTIAL_FLOATS
        rows_at = partials + chunk * TILE_R * PARTIAL_FLOATS + tile_rows
        tl.store(rows_at + stat_index[None, :], statistics)
        tl.store(rows_at + _STATISTICS + dims[None, :], sink_values)
        tl.store(rows_at + _STATISTICS + BLOCK_D + dims[None, :], receiver_values)
        tl.debug_barrier()  # every thread's stores come before the ticket (see `_redistribute_rows`)
        finishes = tl.atomic_add(tickets_ptr + tile_id, 1) == chunk_count - 1
        if finishes:
            tl.atomic_xchg(tickets_ptr + tile_id, 0)
            statistics = tl.zeros([TILE_R, _STATISTICS], tl.float32)
            sink_values = tl.zeros([TILE_R, BLOCK_D], tl.float32)
            receiver_values = tl.zeros([TILE_R, BLOCK_D], tl.float32)
            for other in range(0, chunk_count):
                rows_at = partials + other * TILE_R * PARTIAL_FLOATS + tile_rows
                statistics += tl.load(rows_at + stat_index[None, :], cache_modifier=".cg")
                sink_values += tl.load(rows_at + _STATISTICS + dims[None, :], cache_modifier=".cg")
                receiver_values += tl.load(
                    rows_at + _STATISTICS + BLOCK_D + dims[None, :], cache_modifier=".cg"
                )
    if finishes:
        _finish_tile(
            statistics,
            sink_values,
            receiver_values,
            offsets_ptr + b * _STATISTICS,
            row_valid_ptr + b * row_count,
            row_index,
            row_in,
            out_ptr + b * query_length * heads * HEAD_DIM + h * HEAD_DIM,
            positions,
            redistributed_rows_ptr + b,
            moved_mass_ptr + b,
            heads,
            HEAD_DIM,
            BLOCK_D,
        )


@triton.jit
def _finish_tile(
    statistics,  # [TILE_R, 4] the rows' statistics before offsets
    sink_values,  # [TILE_R, BLOCK_D] sum of A (p - 1) V over sinks
    receiver_values,  # [TILE_R, BLOCK_D] sum of A V over receivers
    offsets,  # [4] KeyPlan.offsets of the sample
    row_valid,  # [R] the sample's row flags
    row_index,
    row_in,
    out,  # the sample's output at head h: row q starts at out + q * heads * HEAD_DIM
    positions,
    redistributed_rows,
    moved_mass,
    heads,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Select each row of the tile or not and add its correction to the base kernel's output."""
    dims = tl.arange(0, BLOCK_D)
    stat_index = tl.arange(0, _STATISTICS)
    statistics = statistics + tl.load(offsets + stat_index)[None, :]
    image_centric = tl.min(tl.where(stat_index[None, :] >= _RECEIVERS, statistics, float("inf")), axis=1) >= 0
    selected = image_centric & (tl.load(row_valid + row_index, mask=row_in, other=0) != 0) & row_in
    budget = tl.sum(tl.where(stat_index[None, :] == _BUDGET, statistics, 0.0), axis=1)
    receiver_mass = tl.sum(tl.where(stat_index[None, :] == _RECEIVERS, statistics, 0.0), axis=1)
    gain = budget / tl.maximum(receiver_mass, _SMALLEST_NORMAL)
    correction = sink_values + gain[:, None] * receiver_values
    rows_out = out + positions[:, None] * (heads * HEAD_DIM) + dims[None, :]
    store = selected[:, None] & (dims < HEAD_DIM)[None, :]
    output = tl.load(rows_out, mask=store, other=0.0).to(tl.float32)
    tl.store(rows_out, (output + correction).to(out.dtype.element_ty), mask=store)
    tl.atomic_add(redistributed_rows, tl.sum(selected.to(tl.float32), axis=0))
    tl.atomic_add(moved_mass, tl.sum(tl.where(selected, budget, 0.0), axis=0))


def _specialization(argument: object) -> tuple:
    """What a compiled Triton kernel assumes of one runtime argument.

    Triton specialises on a tensor's dtype and 16-byte alignment and on an integer being 1, a
    multiple of 16, or beyond 32 (or 63) bits; this key tells apart at least as much.
    """
    if isinstance(argument, torch.Tensor):
        return argument.dtype, argument.data_ptr() % 16 == 0
    if isinstance(argument, int):
        return (
            type(argument),
            argument == 1,
            argument % 16 == 0,
            -(2**31) <= argument < 2**31,
            argument < 2**63,
        )
    return (type(argument),)


class _Launcher:
    """Launches a Triton kernel through its compiled handle once it has been compiled for the arguments.

    Triton's generic launch re-derives the specialisation from every argument in Python, which on a
    decode step costs several times the kernel's own GPU time; a dictionary lookup on
    `_specialization` keys gets the same compiled kernel. The interpreter always goes the generic way.
    """

    def __init__(self, kernel: triton.JITFunction) -> None:
        self.kernel = kernel
        self.compiled: dict[tuple, object] = {}

    def __call__(self, grid: tuple[int, int, int], device: torch.device, arguments: tuple, constants: tuple):
        if INTERPRETED:
            self.kernel[grid](*arguments, *constants)
            return
        # Triton compiles and launches on the current device: make it the tensors' one.
        switch = device.index != torch.cuda.current_device()
        with torch.cuda.device(device) if switch else contextlib.nullcontext():
            key = (device.index, constants, *map(_specialization, arguments))
            compiled = self.compiled.get(key)
            if compiled is None:
                self.compiled[key] = self.kernel[grid](*arguments, *constants)
            else:
                compiled[grid](*arguments, *constants)


# The dtypes a model may run in; the kernels compute in float32 whatever the dtype.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Prefill rows per program by default: 16 or more multiply tiles with `tl.dot`.
TILE_ROWS = 16
# How the prefill kernel reads the base kernel's mask (`_visible`'s MASK_KIND), by name.
MASK_KINDS = ("causal only", "bool", "additive", "padding")
_CAUSAL_ONLY, _BOOL_MASK, _ADDITIVE_MASK, _PADDING_MASK = range(len(MASK_KINDS))
_TRITON_TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.uint8: "u8",
    torch.int32: "i32",
    torch.int64: "i64",
}
_FLOAT_ARGUMENTS = frozenset({"scaling", "blocked_below"})  # passed as Python floats


def _next_power_of_2(number: int) -> int:
    """As `triton.next_power_of_2`, without its constexpr-function call cost on every launch."""
    return 1 << (number - 1).bit_length()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _parameters(kernel) -> list[str]:
    """A Triton kernel's parameter names (compiled or interpreted)."""
    return list(inspect.signature(kernel.fn).parameters)


class _Specialization:
    """What both kernels' specialisations share: Triton's view of them (constexprs, argument types)."""

    kernel: triton.JITFunction  # set by each subclass
    head_dim: int

    @property
    def block_d(self) -> int:
        """The head dim rounded up to a power of two, as `tl.arange` needs."""
        return _next_power_of_2(self.head_dim)

    def constexprs(self) -> dict[str, object]:
        raise NotImplementedError

    def _pointer_dtypes(self) -> dict[str, torch.dtype]:
        raise NotImplementedError

    def constants(self) -> tuple:
        """The constexprs in the kernel's parameter order, as a launch passes them."""
        constexprs = self.constexprs()
        return tuple(constexprs[name] for name in _parameters(self.kernel) if name in constexprs)

    def signature(self) -> dict[str, str]:
        """Triton's type of every kernel parameter ("constexpr" for those in `constexprs`), as a launch gives them.

        Integers are typed i32: they fit for any prompt a model takes (Triton would switch to i64 past 2**31).
        """
        pointers, constexprs = self._pointer_dtypes(), self.constexprs()
        signature = {}
        for name in _parameters(self.kernel):
            if name in constexprs:
                signature[name] = "constexpr"
            elif name in pointers:
                signature[name] = "*" + _TRITON_TYPES[pointers[name]]
            else:
                signature[name] = "fp32" if name in _FLOAT_ARGUMENTS else "i32"
        return signature


def _plan_pointers() -> dict[str, torch.dtype]:
    """The key plan's and bookkeeping tensors' dtypes, the same in both kernels."""
    return {
        "weights_ptr": torch.float32,
        "offsets_ptr": torch.float32,
        "sink_change_ptr": torch.float32,
        "receivers_ptr": torch.float32,
        "rows_ptr": torch.int64,
        "row_valid_ptr": torch.uint8,
        "partials_ptr": torch.float32,
        "tickets_ptr": torch.int32,
        "redistributed_rows_ptr": torch.float32,
        "moved_mass_ptr": torch.float32,
    }


@dataclass(frozen=True)
class RowsSpecialization(_Specialization):
    """One compiled variant of `_redistribute_rows` (decode rows over all their keys).

    `redistribute_rows` launches exactly the one `rows_specialization` gives for its arguments, and
    `specializations` lists every one it can launch; the first-use check in `attention.py` is per
    specialisation, and CI compiles each ahead of time for real GPUs.
    """

    dtype: torch.dtype  # of query, key, value and output
    head_dim: int
    blocked: bool  # a [B, R, K] mask of blocked keys (else causal only)
    whole_rows: bool  # write A'V rather than add A'V - AV
    block_k: int  # keys per tile

    kernel = _redistribute_rows  # a class attribute, not a field

    def constexprs(self) -> dict[str, object]:
        return {
            "HEAD_DIM": self.head_dim,
            "HAS_BLOCKED": self.blocked,
            "WHOLE_ROWS": self.whole_rows,
            "BLOCK_K": self.block_k,
            "BLOCK_D": self.block_d,
            "PARTIAL_FLOATS": _HEADER_FLOATS + (3 if self.whole_rows else 2) * self.block_d,
        }

    def _pointer_dtypes(self) -> dict[str, torch.dtype]:
        inputs = dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "out_ptr"), self.dtype)
        return inputs | _plan_pointers() | {"blocked_ptr": torch.uint8}

    def describe(self) -> str:
        kind = "whole rows" if self.whole_rows else "decode correction"
        mask = "blocked keys" if self.blocked else "causal only"
        return f"redistribute_rows {kind}, {_dtype_name(self.dtype)}, d={self.head_dim}, {mask}, BLOCK_K={self.block_k}"


def rows_specialization(
    dtype: torch.dtype, head_dim: int, *, blocked: bool, whole_rows: bool, block_k: int | None = None
) -> RowsSpecialization:
    """The variant `redistribute_rows` launches; `block_k` (keys per tile) defaults to what fits 16K values."""
    block_k = block_k or max(16, min(128, 16384 // _next_power_of_2(head_dim)))
    return RowsSpecialization(dtype, head_dim, blocked, whole_rows, block_k)


@dataclass(frozen=True)
class PrefillSpecialization(_Specialization):
    """One compiled variant of `_correct_prefill_rows` (prefill rows over their relevant keys).

    As `RowsSpecialization`, for `correct_prefill_rows` and `prefill_specialization`.
    """

    dtype: torch.dtype  # of query, key, value and output
    head_dim: int
    mask_kind: int  # index into MASK_KINDS
    mask_dtype: torch.dtype  # of the mask as the kernel reads it (uint8 but for additive masks)
    log_sum_exp: bool  # the base kernel gave every row's log-sum-exp (else a first pass computes it)
    chunked: bool  # several programs share a tile's relevant keys
    tile_rows: int
    block_k: int  # keys per tile

    kernel = _correct_prefill_rows  # a class attribute, not a field

    def constexprs(self) -> dict[str, object]:
        return {
            "HEAD_DIM": self.head_dim,
            "MASK_KIND": self.mask_kind,
            "HAS_LSE": self.log_sum_exp,
            "CHUNKED": self.chunked,
            "TILE_R": self.tile_rows,
            "BLOCK_K": self.block_k,
            "BLOCK_D": self.block_d,
            "PARTIAL_FLOATS": STATISTICS + 2 * self.block_d,
            "VALUE_PRECISION": "ieee" if self.dtype == torch.float32 else "tf32",
        }

    def _pointer_dtypes(self) -> dict[str, torch.dtype]:
        inputs = dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "out_ptr"), self.dtype)
        keys = {"key_order_ptr": torch.int64, "key_counts_ptr": torch.int64}
        return inputs | _plan_pointers() | keys | {"lse_ptr": torch.float32, "mask_ptr": self.mask_dtype}

    def describe(self) -> str:
        normaliser = "log-sum-exp given" if self.log_sum_exp else "log-sum-exp computed"
        chunked = ", chunked" if self.chunked else ""
        return (
            f"correct_prefill_rows, {_dtype_name(self.dtype)}, d={self.head_dim}, {MASK_KINDS[self.mask_kind]} "
            f"mask, {normaliser}{chunked}, TILE_R={self.tile_rows}, BLOCK_K={self.block_k}"
        )


def _prefill_block_k(head_dim: int) -> int:
    return max(16, min(64, 8192 // _next_power_of_2(head_dim)))


def _mask_kind(attention_mask: torch.Tensor | None) -> tuple[int, torch.dtype]:
    """(kind, dtype as the kernel reads it) of the base kernel's mask."""
    if attention_mask is None:
        return _CAUSAL_ONLY, torch.uint8  # the kernel is given (and never reads) `row_valid`
    if attention_mask.dim() == 4 and attention_mask.dtype != torch.bool:
        return _ADDITIVE_MASK, attention_mask.dtype
    return (_BOOL_MASK if attention_mask.dim() == 4 else _PADDING_MASK), torch.uint8


class _PrefillTiling(NamedTuple):
    specialization: PrefillSpecialization
    tiles: int  # tiles of rows per sample and head
    chunks: int  # programs sharing a tile's relevant keys


def _prefill_tiling(
    call: LayerCall,
    planned_keys: int,
    row_count: int,
    tile_rows: int,
    block_k: int | None,
    chunks: int | None,
) -> _PrefillTiling:
    batch, heads, _, head_dim = call.query.shape
    block_k = block_k or _prefill_block_k(head_dim)
    tiles = _ceil_div(row_count, tile_rows)
    has_lse = call.normaliser.log_sum_exp is not None
    if not has_lse:
        chunks = 1  # each chunk would repeat the pass over every key
    elif chunks is None:
        chunks = _ceil_div(_PROGRAMS_PER_SM * _multiprocessors(call.query.device), batch * heads * tiles)
    chunks = max(1, min(chunks, _ceil_div(planned_keys, block_k)))
    kind, mask_dtype = _mask_kind(call.attention_mask)
    specialization = PrefillSpecialization(
        call.query.dtype, head_dim, kind, mask_dtype, has_lse, chunks > 1, tile_rows, block_k
    )
    return _PrefillTiling(specialization, tiles, chunks)


def prefill_specialization(
    call: LayerCall,
    planned_keys: int,
    row_count: int,
    *,
    tile_rows: int = TILE_ROWS,
    block_k: int | None = None,
    chunks: int | None = None,
) -> PrefillSpecialization:
    """The variant `correct_prefill_rows` launches for `row_count` rows and `planned_keys` planned keys."""
    return _prefill_tiling(call, planned_keys, row_count, tile_rows, block_k, chunks).specialization


def specializations(
    head_dims: tuple[int, ...], dtypes: tuple[torch.dtype, ...] = DTYPES
) -> list[_Specialization]:
    """Every variant the launchers can launch, with their default tiles, for models of these head dims.

    What varies at run time beyond these (heads, batch, lengths, strides) are kernel arguments.
    """
    variants: list[_Specialization] = []
    for dtype, head_dim in itertools.product(dtypes, head_dims):
        for blocked, whole_rows in itertools.product((False, True), repeat=2):
            variants.append(rows_specialization(dtype, head_dim, blocked=blocked, whole_rows=whole_rows))
        for kind, (has_lse, chunked) in itertools.product(
            range(len(MASK_KINDS)), ((False, False), (True, False), (True, True))
        ):
            mask_dtype = dtype if kind == _ADDITIVE_MASK else torch.uint8
            variants.append(
                PrefillSpecialization(
                    dtype, head_dim, kind, mask_dtype, has_lse, chunked, TILE_ROWS, _prefill_block_k(head_dim)
                )
            )
    return variants


_launch_redistribute_rows = _Launcher(_redistribute_rows)
_launch_correct_prefill_rows = _Launcher(_correct_prefill_rows)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a typical count for the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 128


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


_tickets_on: dict[torch.device, torch.Tensor] = {}
_scratch_counters_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _zeroed_tickets(device: torch.device, count: int) -> torch.Tensor:
    """At least `count` int32 zeros on `device`, kept from launch to launch.

    The kernel leaves its tickets at zero, so no launch needs a zero-filling launch of its own.
    Launches that share them must run one after the other, as they do on one CUDA stream.
    """
    tickets = _tickets_on.get(device)
    if tickets is None or tickets.numel() < count:
        tickets = _tickets_on[device] = torch.zeros(count, dtype=torch.int32, device=device)
    return tickets


def _counters(
    activity: LayerActivity | None, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a launch adds its selected rows and budgets: the diagnostics', or scratch never read.

    The kernels always add them (one variant fewer of each kernel to compile and check).
    """
    if activity is not None:
        return activity.redistributed_rows, activity.moved_mass
    scratch = _scratch_counters_on.get(device)
    if scratch is None or scratch[0].numel() < batch:
        scratch = _scratch_counters_on[device] = tuple(
            torch.empty(batch, dtype=torch.float32, device=device) for _ in range(2)
        )
    return scratch


def _check_layouts(output: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    """The kernels index head_dim with unit stride and write `output` [B, Q, H, d] as laid out."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim, got strides {tensor.stride()}")
    if not output.is_contiguous():
        raise ValueError("output must be a contiguous [batch, query, heads, head_dim] tensor")


def redistribute_rows(
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
    whole_rows: bool = False,
    block_k: int | None = None,
    chunks: int | None = None,
) -> None:
    """Add A'V - AV to the base kernel's `output` [B, Q, H, d] in place, for the rows VAR selects;
    with `whole_rows`, write A'V (A'V = AV where no head selects the row) into every query row.

    `query` [B, H, Q, d], `key`/`value` [B, Hkv, K, d]; `rows` Long[B, R] are the query indices VAR
    may change (all Q of them for `whole_rows`) and `row_valid` Bool[B, R] says which of them spec
    step 2 allows. `blocked` Bool[B, 1, R, K] marks keys a row may not see (from the attention
    mask); None means causal only.
    `activity` (diagnostics on) gets the selected rows and their budgets added on the device.
    `block_k` (keys per tile) and `chunks` (per row, at most 64) are for tests and tuning; by default
    a row is split into just enough chunks to give every streaming multiprocessor a few programs.
    """
    batch, heads, query_length, head_dim = query.shape
    row_count, key_length = rows.shape[1], key.shape[2]
    _check_layouts(output, query, key, value)
    rows, row_valid = rows.contiguous(), row_valid.contiguous().view(torch.uint8)  # no copy from VARState
    if blocked is not None:
        blocked = blocked.contiguous().view(torch.uint8)
    specialization = rows_specialization(
        query.dtype, head_dim, blocked=blocked is not None, whole_rows=whole_rows, block_k=block_k
    )
    tiles = _ceil_div(key_length, specialization.block_k)
    row_programs = batch * heads * row_count
    if chunks is None:
        chunks = _ceil_div(_PROGRAMS_PER_SM * _multiprocessors(query.device), row_programs)
    tiles_per_chunk = _ceil_div(tiles, max(1, min(chunks, tiles, _MAX_CHUNKS)))
    chunk_count = _ceil_div(tiles, tiles_per_chunk)
    constexprs = specialization.constexprs()
    partials = torch.empty(
        row_programs * chunk_count * constexprs["PARTIAL_FLOATS"], dtype=torch.float32, device=query.device
    )
    _launch_redistribute_rows(
        (batch * heads, row_count, chunk_count),
        query.device,
        (
            query,
            key,
            value,
            blocked if blocked is not None else row_valid,
            plan.weights,
            plan.offsets,
            plan.sink_change,
            plan.receivers,
            rows,
            row_valid,
            output,
            partials,
            _zeroed_tickets(query.device, row_programs),
            *_counters(activity, batch, query.device),
            *query.stride()[:3],
            *key.stride()[:3],
            *value.stride()[:3],
            key_length,
            query_length,
            plan.weights.shape[1],
            tiles_per_chunk * specialization.block_k,
            scaling,
            heads,
            heads // key.shape[1],
        ),
        specialization.constants(),
    )


def _mask_for_kernel(attention_mask: torch.Tensor | None, batch: int, key_length: int):
    """(tensor, strides over batch, query and key, additive threshold) of the base kernel's mask."""
    if attention_mask is None:
        return None, (0, 0, 0), 0.0
    if attention_mask.dim() == 4:  # [B, 1, Q, K]: the same for every head
        mask = attention_mask[:, 0, :, -key_length:].expand(batch, -1, -1)
        if mask.dtype == torch.bool:
            return mask.view(torch.uint8), mask.stride(), 0.0
        return mask, mask.stride(), torch.finfo(mask.dtype).min / 2
    padding = attention_mask[:, -key_length:].bool().view(torch.uint8)  # [B, K] 2D padding mask
    return padding, (padding.stride(0), 0, padding.stride(1)), 0.0


def correct_prefill_rows(
    output: torch.Tensor,
    call: LayerCall,
    plan: KeyPlan,
    keys: RelevantKeys,
    rows: torch.Tensor,
    row_valid: torch.Tensor,
    *,
    activity: LayerActivity | None,
    tile_rows: int = TILE_ROWS,
    block_k: int | None = None,
    chunks: int | None = None,
) -> None:
    """Add A'V - AV to the base kernel's `output` [B, Q, H, d] in place at the prefill `rows` VAR selects.

    Each row walks only its sample's relevant keys (`keys`: visual and sink keys first in `order`),
    its attention there being exp(score - log-sum-exp) with the log-sum-exp the base kernel gave
    (`call.normaliser.log_sum_exp`) or, without it, one first pass over every key. `rows` Long[B, R]
    are query indices and `row_valid` Bool[B, R] says which of them spec step 2 allows; masks are
    read where the base kernel got them (`call.attention_mask`), never expanded to [R, K].
    `tile_rows` rows share a program (16 or more multiply tiles with `tl.dot`); `block_k` keys per
    tile and `chunks` of the relevant keys per tile of rows are for tests and tuning: by default
    just enough chunks give every streaming multiprocessor a few programs.
    """
    query, key, value = call.query, call.key, call.value
    batch, heads, query_length = query.shape[:3]
    row_count, key_length, planned_keys = rows.shape[1], key.shape[2], plan.weights.shape[1]
    _check_layouts(output, query, key, value)
    rows, row_valid = rows.contiguous(), row_valid.contiguous().view(torch.uint8)
    order, counts = keys.order.contiguous(), keys.counts.contiguous()
    log_sum_exp = call.normaliser.log_sum_exp
    specialization, tiles, chunks = _prefill_tiling(call, planned_keys, row_count, tile_rows, block_k, chunks)
    mask, mask_strides, blocked_below = _mask_for_kernel(call.attention_mask, batch, key_length)
    tile_programs = batch * heads * tiles
    partials = torch.empty(
        tile_programs * chunks * tile_rows * specialization.constexprs()["PARTIAL_FLOATS"]
        if chunks > 1
        else 1,
        dtype=torch.float32,
        device=query.device,
    )
    _launch_correct_prefill_rows(
        (batch * heads, tiles, chunks),
        query.device,
        (
            query,
            key,
            value,
            log_sum_exp if log_sum_exp is not None else partials,
            mask if mask is not None else row_valid,
            order,
            counts,
            plan.weights,
            plan.offsets,
            plan.sink_change,
            plan.receivers,
            rows,
            row_valid,
            output,
            partials,
            _zeroed_tickets(query.device, tile_programs),
            *_counters(activity, batch, query.device),
            *query.stride()[:3],
            *key.stride()[:3],
            *value.stride()[:3],
            *(log_sum_exp.stride() if log_sum_exp is not None else (0, 0, 0)),
            *mask_strides,
            key_length,
            query_length,
            planned_keys,
            row_count,
            call.scaling,
            blocked_below,
            heads,
            heads // key.shape[1],
        ),
        specialization.constants(),
    )
