"""The Triton code of VAR's row kernels; `row_kernels.py` specialises and launches it.

For one row the correction (see `attention.py`) splits by the kind of key, because a selected row
scales sinks by `p` and visual non-sinks by `1 + gain`:

    A'V - AV = sum_k A[k] * sink_change[k] * V[k]  +  gain * sum_k A[k] * receiver[k] * V[k]

with `gain = budget / receiver mass`. Those two sums and the row's four statistics (`KeyPlan`) are
all sums of exp(score) over the row's keys, so, as in flash-decoding, they split over chunks of
keys, each reduced by its own program. The program that finishes a row's last chunk merges the
chunks, selects the row or not (`_select_rows`, shared by both kernels) and adds the correction to
the base kernel's output; or, for whole rows (a decode step, where the base kernel is not run), also
sums AV and writes A'V. Each kernel's loops over keys are `@triton.jit` helpers, as in Triton's
fused-attention tutorial; the arithmetic is float32 whatever the dtype.

Imported only where Triton is installed. `TRITON_INTERPRET=1` runs the kernels on CPU tensors
(Triton's interpreter), which is how the CPU tests check them against the PyTorch path.
"""

import torch
import triton
import triton.language as tl

from lmms_var.core import BUDGET, RECEIVERS, STATISTICS
from lmms_var.patch.masks import MaskKind
from lmms_var.patch.triton_support import INTERPRETED

_INTERPRETED = tl.constexpr(INTERPRETED)
# The statistics of a row, as `core.redistribution` indexes them.
_STATISTICS, _BUDGET, _RECEIVERS = tl.constexpr(STATISTICS), tl.constexpr(BUDGET), tl.constexpr(RECEIVERS)
# Receiver mass is clamped to this before dividing, as in `core.redistribution`.
_SMALLEST_NORMAL = tl.constexpr(torch.finfo(torch.float32).tiny)
_FAR_BELOW = tl.constexpr(-1.0e30)  # a finite "minus infinity" for running maxima
# The prefill kernel's MASK_KIND constexpr takes the values of `masks.MaskKind`.
_BOOL_MASK, _ADDITIVE_MASK = tl.constexpr(int(MaskKind.BOOL)), tl.constexpr(int(MaskKind.ADDITIVE))
_PADDING_MASK = tl.constexpr(int(MaskKind.PADDING))
# Per decode chunk: max score, exp-sum, 4 statistics, 2 spare, then the sink and receiver value
# sums (and, for whole rows, the plain value sum).
HEADER_FLOATS = 8
_HEADER = tl.constexpr(HEADER_FLOATS)
# At most this many chunks per decode row (a power of two): the program finishing a row merges them
# in one [MAX_CHUNKS, BLOCK_D] tile, so the chunk count is a runtime value, not a specialisation.
MAX_CHUNKS = 64
_BLOCK_CHUNKS = tl.constexpr(MAX_CHUNKS)


@triton.jit
def _select_rows(
    statistics,  # [N, 4] the rows' statistics, normalised, before the sample's offsets
    offsets,  # [4] KeyPlan.offsets of the rows' sample
    valid,  # Bool[N]: spec step 2 allows the row
    redistributed_rows,  # the sample's diagnostics counters
    moved_mass,
):
    """Spec steps 3-4 for N rows: (selected Bool[N], gain [N]); the selected rows and their budgets
    are added to the counters."""
    stat_index = tl.arange(0, _STATISTICS)
    statistics = statistics + tl.load(offsets + stat_index)[None, :]
    image_centric = tl.min(tl.where(stat_index[None, :] >= _RECEIVERS, statistics, float("inf")), axis=1) >= 0
    selected = image_centric & valid
    budget = tl.sum(tl.where(stat_index[None, :] == _BUDGET, statistics, 0.0), axis=1)
    receiver_mass = tl.sum(tl.where(stat_index[None, :] == _RECEIVERS, statistics, 0.0), axis=1)
    gain = budget / tl.maximum(receiver_mass, _SMALLEST_NORMAL)
    tl.atomic_add(redistributed_rows, tl.sum(selected.to(tl.float32), axis=0))
    tl.atomic_add(moved_mass, tl.sum(tl.where(selected, budget, 0.0), axis=0))
    return selected, gain


@triton.jit(do_not_specialize=["key_length", "query_length", "heads", "group"])
def redistribute_rows_kernel(
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
    # What the launcher's specialisation guarantees (checked when Triton compiles the variant).
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    tl.static_assert(_HEADER + (3 if WHOLE_ROWS else 2) * BLOCK_D == PARTIAL_FLOATS)
    dim_in = dims < HEAD_DIM
    stat_index = tl.arange(0, _STATISTICS)

    position = tl.load(rows_ptr + b * row_count + r)
    query = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + position * stride_qq + dims, mask=dim_in, other=0.0
    ).to(tl.float32)
    plan = (
        weights_ptr + b * planned_keys * _STATISTICS,
        sink_change_ptr + b * planned_keys,
        receivers_ptr + b * planned_keys,
        planned_keys,
    )
    running_max, total, statistics, sink_values, receiver_values, row_values = _row_chunk_sums(
        query,
        (k_ptr + b * stride_kb + (h // group) * stride_kh, stride_kk),
        (v_ptr + b * stride_vb + (h // group) * stride_vh, stride_vk),
        blocked_ptr + (b * row_count + r) * key_length,
        plan,
        chunk * chunk_keys,
        chunk_keys,
        position + key_length - query_length,  # the last key the row sees: causal, from the cache's end
        key_length,
        scaling,
        HEAD_DIM,
        HAS_BLOCKED,
        WHOLE_ROWS,
        BLOCK_K,
        BLOCK_D,
    )

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
            (redistributed_rows_ptr + b, moved_mass_ptr + b),
            HEAD_DIM,
            WHOLE_ROWS,
            BLOCK_D,
            PARTIAL_FLOATS,
        )


@triton.jit
def _row_chunk_sums(
    query,  # [BLOCK_D] float32
    keys_at,  # (pointer, stride): the row's key head
    values_at,  # (pointer, stride): the row's value head
    blocked,  # [K] uint8 the row's blocked keys; read with HAS_BLOCKED
    plan,  # (weights, sink_change, receivers) of the row's sample, and the planned key count
    first_key,
    chunk_keys,
    last_key,
    key_length,
    scaling,
    HEAD_DIM: tl.constexpr,
    HAS_BLOCKED: tl.constexpr,
    WHOLE_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """An online softmax over one chunk of a decode row's keys: its max score, and its exp-sum,
    statistics and value sums relative to that max."""
    k_base, stride_kk = keys_at
    v_base, stride_vk = values_at
    weights_ptr, sink_change_ptr, receivers_ptr, planned_keys = plan
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < HEAD_DIM
    stat_index = tl.arange(0, _STATISTICS)
    running_max = tl.max(tl.full([BLOCK_K], _FAR_BELOW, tl.float32), axis=0)
    total = tl.sum(tl.zeros([BLOCK_K], tl.float32), axis=0)
    statistics = tl.zeros([_STATISTICS], tl.float32)
    sink_values = tl.zeros([BLOCK_D], tl.float32)
    receiver_values = tl.zeros([BLOCK_D], tl.float32)
    row_values = tl.zeros([BLOCK_D], tl.float32)
    for start in range(0, chunk_keys, BLOCK_K):
        keys = first_key + start + tl.arange(0, BLOCK_K)
        visible = keys <= last_key
        if HAS_BLOCKED:
            visible = visible & (tl.load(blocked + keys, mask=keys < key_length, other=1) == 0)
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
        key_weights = tl.load(
            weights_ptr + keys[:, None] * _STATISTICS + stat_index[None, :],
            mask=planned[:, None],
            other=0.0,
        )
        sink_change = tl.load(sink_change_ptr + keys, mask=planned, other=0.0)
        receivers = tl.load(receivers_ptr + keys, mask=planned, other=0.0)
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
    return running_max, total, statistics, sink_values, receiver_values, row_values


@triton.jit
def _finish_row(
    partials,  # [chunks, PARTIAL_FLOATS] of this row, written by the other programs
    chunk_count,
    offsets,  # [4] KeyPlan.offsets of the row's sample
    row_valid,  # the row's flag
    out,  # [d] the row's output
    counters,  # (redistributed rows, moved mass) of the row's sample
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

    # A tile of one row: `selected` and `gain` are [1], broadcast over the head dim.
    redistributed_rows, moved_mass = counters
    selected, gain = _select_rows(
        (statistics / total)[None, :], offsets, tl.load(row_valid) != 0, redistributed_rows, moved_mass
    )
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
    keys_in,  # [BLOCK_K] keys that exist
    rows,  # (last key [TILE_R] each row sees causally, Bool[TILE_R] rows that exist, query index [TILE_R])
    mask,  # (pointer at the sample's mask, query stride, key stride, additive threshold)
    MASK_KIND: tl.constexpr,  # a `masks.MaskKind` value
):
    """Bool[TILE_R, BLOCK_K]: which keys each row sees, read from the mask the base kernel got."""
    last_key, row_in, positions = rows
    mask_ptr, stride_mq, stride_mk, blocked_below = mask
    visible = (keys[None, :] <= last_key[:, None]) & keys_in[None, :] & row_in[:, None]
    entries = mask_ptr + positions[:, None] * stride_mq + keys[None, :] * stride_mk
    if MASK_KIND == _BOOL_MASK:
        visible = visible & (tl.load(entries, mask=visible, other=0) != 0)
    if MASK_KIND == _ADDITIVE_MASK:
        visible = visible & (tl.load(entries, mask=visible, other=0.0) >= blocked_below)
    if MASK_KIND == _PADDING_MASK:
        visible = visible & (tl.load(mask_ptr + keys * stride_mk, mask=keys_in, other=0) != 0)[None, :]
    return visible


@triton.jit(do_not_specialize=["key_length", "query_length", "row_count", "planned_keys", "heads", "group"])
def correct_prefill_rows_kernel(
    q_ptr,  # [B, H, Q, d], any strides but contiguous d
    k_ptr,  # [B, Hkv, K, d], any strides but contiguous d
    v_ptr,  # [B, Hkv, K, d], any strides but contiguous d
    lse_ptr,  # [B, H, Q] float32 log-sum-exp of every row from the base kernel; needs HAS_LSE
    mask_ptr,  # [B, Q, K] or [B, K] mask (see `_visible`); unused with MASK_KIND causal only
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
    blocked_below,  # an additive mask blocks where its entry is below this (`masks.additive_threshold`)
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
    tl.static_assert(BLOCK_D >= HEAD_DIM)
    tl.static_assert(PARTIAL_FLOATS == _STATISTICS + 2 * BLOCK_D)
    dim_in = dims < HEAD_DIM
    row_index = tile * TILE_R + tl.arange(0, TILE_R)
    row_in = row_index < row_count
    positions = tl.load(rows_ptr + b * row_count + row_index, mask=row_in, other=0)
    last_key = positions + key_length - query_length  # causal, counted from the cache's end
    rows = (last_key, row_in, positions)
    query = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + positions[:, None] * stride_qq + dims[None, :],
        mask=row_in[:, None] & dim_in[None, :],
        other=0.0,
    )
    keys_at = (k_ptr + b * stride_kb + (h // group) * stride_kh, stride_kk)
    mask = (mask_ptr + b * stride_mb, stride_mq, stride_mk, blocked_below)

    if HAS_LSE:
        lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + positions * stride_lq, mask=row_in, other=0.0)
    else:
        lse = _log_sum_exp(
            query, keys_at, rows, mask, key_length, scaling, MASK_KIND, TILE_R, BLOCK_K, BLOCK_D, HEAD_DIM
        )

    statistics, sink_values, receiver_values = _relevant_key_sums(
        query,
        lse,
        keys_at,
        (v_ptr + b * stride_vb + (h // group) * stride_vh, stride_vk),
        (key_order_ptr + b * planned_keys, tl.load(key_counts_ptr + b), chunk, chunk_count),
        (
            weights_ptr + b * planned_keys * _STATISTICS,
            sink_change_ptr + b * planned_keys,
            receivers_ptr + b * planned_keys,
        ),
        rows,
        mask,
        scaling,
        MASK_KIND,
        VALUE_PRECISION,
        TILE_R,
        BLOCK_K,
        BLOCK_D,
        HEAD_DIM,
    )

    finishes = True  # this program corrects the tile: with chunks, only the last one to finish
    if CHUNKED:  # park this chunk's sums; the tile's last chunk to finish adds them all up
        tile_id = batch_head * tile_count + tile
        finishes, statistics, sink_values, receiver_values = _merge_tile_chunks(
            statistics,
            sink_values,
            receiver_values,
            partials_ptr + tile_id * chunk_count * TILE_R * PARTIAL_FLOATS,
            tickets_ptr + tile_id,
            chunk,
            chunk_count,
            TILE_R,
            BLOCK_D,
            PARTIAL_FLOATS,
        )
    if finishes:
        selected, gain = _select_rows(
            statistics,
            offsets_ptr + b * _STATISTICS,
            (tl.load(row_valid_ptr + b * row_count + row_index, mask=row_in, other=0) != 0) & row_in,
            redistributed_rows_ptr + b,
            moved_mass_ptr + b,
        )
        correction = sink_values + gain[:, None] * receiver_values
        rows_out = out_ptr + ((b * query_length + positions[:, None]) * heads + h) * HEAD_DIM + dims[None, :]
        store = selected[:, None] & dim_in[None, :]
        output = tl.load(rows_out, mask=store, other=0.0).to(tl.float32)
        tl.store(rows_out, (output + correction).to(out_ptr.dtype.element_ty), mask=store)


@triton.jit
def _log_sum_exp(
    query,  # [TILE_R, BLOCK_D]
    keys_at,  # (pointer, stride): the tile's key head
    rows,  # as `_visible` takes them
    mask,  # as `_visible` takes it
    key_length,
    scaling,
    MASK_KIND: tl.constexpr,
    TILE_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """[TILE_R]: each row's log-sum-exp over every key it sees, an online one over all the tile's keys."""
    k_base, stride_kk = keys_at
    last_key, row_in, _ = rows
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < HEAD_DIM
    running_max = tl.full([TILE_R], _FAR_BELOW, tl.float32)
    total = tl.zeros([TILE_R], tl.float32)
    for start in range(0, tl.max(tl.where(row_in, last_key, 0), axis=0) + 1, BLOCK_K):
        keys = start + tl.arange(0, BLOCK_K)
        keys_in = keys < key_length
        visible = _visible(keys, keys_in, rows, mask, MASK_KIND)
        key_tile = tl.load(
            k_base + keys[:, None] * stride_kk + dims[None, :],
            mask=keys_in[:, None] & dim_in[None, :],
            other=0.0,
        )
        scores = _product(query, tl.trans(key_tile), TILE_R >= 16, "ieee") * scaling
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        total = total * tl.exp(running_max - new_max) + tl.sum(tl.exp(scores - new_max[:, None]), axis=1)
        running_max = new_max
    # A row that sees no key has no weight to normalise: any finite value does.
    return running_max + tl.log(tl.maximum(total, _SMALLEST_NORMAL))


@triton.jit
def _relevant_key_sums(
    query,  # [TILE_R, BLOCK_D]
    lse,  # [TILE_R] the rows' log-sum-exp
    keys_at,  # (pointer, stride): the tile's key head
    values_at,  # (pointer, stride): the tile's value head
    relevant,  # (the sample's key order, its count of relevant keys, this chunk, the chunk count)
    plan,  # (weights, sink_change, receivers) of the sample
    rows,  # as `_visible` takes them
    mask,  # as `_visible` takes it
    scaling,
    MASK_KIND: tl.constexpr,
    VALUE_PRECISION: tl.constexpr,
    TILE_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """The tile's statistics [TILE_R, 4] and sink and receiver value sums [TILE_R, BLOCK_D] over this
    chunk's share of the relevant keys (every chunk_count-th tile of them)."""
    k_base, stride_kk = keys_at
    v_base, stride_vk = values_at
    key_order, count, chunk, chunk_count = relevant
    weights_ptr, sink_change_ptr, receivers_ptr = plan
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < HEAD_DIM
    stat_index = tl.arange(0, _STATISTICS)
    USE_DOT: tl.constexpr = TILE_R >= 16
    statistics = tl.zeros([TILE_R, _STATISTICS], tl.float32)
    sink_values = tl.zeros([TILE_R, BLOCK_D], tl.float32)
    receiver_values = tl.zeros([TILE_R, BLOCK_D], tl.float32)
    for key_tile_index in range(chunk, tl.cdiv(count, BLOCK_K), chunk_count):
        slots = key_tile_index * BLOCK_K + tl.arange(0, BLOCK_K)
        listed = slots < count
        keys = tl.load(key_order + slots, mask=listed, other=0)
        visible = _visible(keys, listed, rows, mask, MASK_KIND)
        tile_mask = listed[:, None] & dim_in[None, :]
        key_tile = tl.load(k_base + keys[:, None] * stride_kk + dims[None, :], mask=tile_mask, other=0.0)
        scores = _product(query, tl.trans(key_tile), USE_DOT, "ieee") * scaling
        attn = tl.exp(tl.where(visible, scores - lse[:, None], float("-inf")))
        key_weights = tl.load(
            weights_ptr + keys[:, None] * _STATISTICS + stat_index[None, :],
            mask=listed[:, None],
            other=0.0,
        )
        statistics += tl.sum(attn[:, :, None] * key_weights[None, :, :], axis=1)
        sink_change = tl.load(sink_change_ptr + keys, mask=listed, other=0.0)
        receivers = tl.load(receivers_ptr + keys, mask=listed, other=0.0)
        value_tile = tl.load(v_base + keys[:, None] * stride_vk + dims[None, :], mask=tile_mask, other=0.0)
        value_tile = value_tile.to(tl.float32)
        sink_values += _product(attn * sink_change[None, :], value_tile, USE_DOT, VALUE_PRECISION)
        receiver_values += _product(attn * receivers[None, :], value_tile, USE_DOT, VALUE_PRECISION)
    return statistics, sink_values, receiver_values


@triton.jit
def _merge_tile_chunks(
    statistics,  # [TILE_R, 4] this chunk's sums
    sink_values,  # [TILE_R, BLOCK_D]
    receiver_values,  # [TILE_R, BLOCK_D]
    partials,  # [chunks, TILE_R, PARTIAL_FLOATS] the tile's scratch
    ticket,  # the tile's int32 ticket counter
    chunk,
    chunk_count,
    TILE_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PARTIAL_FLOATS: tl.constexpr,
):
    """Park this chunk's sums; (whether this program finishes the tile, the sums over every chunk
    if it does). With the log-sum-exp known, chunks' sums add with no rescaling."""
    dims = tl.arange(0, BLOCK_D)
    stat_index = tl.arange(0, _STATISTICS)
    tile_rows = tl.arange(0, TILE_R)[:, None] * PARTIAL_FLOATS
    rows_at = partials + chunk * TILE_R * PARTIAL_FLOATS + tile_rows
    tl.store(rows_at + stat_index[None, :], statistics)
    tl.store(rows_at + _STATISTICS + dims[None, :], sink_values)
    tl.store(rows_at + _STATISTICS + BLOCK_D + dims[None, :], receiver_values)
    tl.debug_barrier()  # every thread's stores come before the ticket (see `redistribute_rows_kernel`)
    finishes = tl.atomic_add(ticket, 1) == chunk_count - 1
    if finishes:
        tl.atomic_xchg(ticket, 0)
        statistics = tl.zeros([TILE_R, _STATISTICS], tl.float32)
        sink_values = tl.zeros([TILE_R, BLOCK_D], tl.float32)
        receiver_values = tl.zeros([TILE_R, BLOCK_D], tl.float32)
        for other in range(0, chunk_count):
            rows_at = partials + other * TILE_R * PARTIAL_FLOATS + tile_rows
            statistics += tl.load(rows_at + stat_index[None, :], cache_modifier=".cg")
            sink_values += tl.load(rows_at + _STATISTICS + dims[None, :], cache_modifier=".cg")
            receiver_values += tl.load(rows_at + _STATISTICS + BLOCK_D + dims[None, :], cache_modifier=".cg")
    return finishes, statistics, sink_values, receiver_values
