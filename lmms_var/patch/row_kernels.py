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
# Per chunk: max score, exp-sum, 4 statistics, 2 spare, then the sink and receiver value sums
# (and, for whole rows, the plain value sum).
_HEADER_FLOATS = 8
_HEADER = tl.constexpr(_HEADER_FLOATS)
# Chunks per row are chosen for about this many programs per multiprocessor: more fill the GPU for
# a single decode row, fewer keep the [B * H, R, chunks, ...] workspace small at prefill.
_PROGRAMS_PER_SM = 4


@triton.jit(do_not_specialize=["key_length", "query_length"])
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
    redistributed_rows_ptr,  # [B] float32 diagnostics counter, += selected rows; needs WRITE_ACTIVITY
    moved_mass_ptr,  # [B] float32 diagnostics counter, += their budgets; needs WRITE_ACTIVITY
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
    HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # query heads per key/value head
    HEAD_DIM: tl.constexpr,
    HAS_BLOCKED: tl.constexpr,
    WHOLE_ROWS: tl.constexpr,  # write A'V rather than add A'V - AV
    WRITE_ACTIVITY: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_CHUNKS: tl.constexpr,
    PARTIAL_FLOATS: tl.constexpr,  # per chunk: _HEADER, then 2 value sums (3 for whole rows)
):
    """One program per (batch x head, row, chunk of keys); the row's last chunk to finish merges them."""
    batch_head = tl.program_id(0).to(tl.int64)
    r, row_count = tl.program_id(1), tl.num_programs(1)
    chunk, chunk_count = tl.program_id(2), tl.num_programs(2)
    b, h = batch_head // HEADS, batch_head % HEADS
    row = batch_head * row_count + r
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < HEAD_DIM
    stat_index = tl.arange(0, 4)

    position = tl.load(rows_ptr + b * row_count + r)
    last_key = position + key_length - query_length  # causal, counted from the cache's end
    query = tl.load(
        q_ptr + b * stride_qb + h * stride_qh + position * stride_qq + dims, mask=dim_in, other=0.0
    ).to(tl.float32)
    k_base = k_ptr + b * stride_kb + (h // GROUP) * stride_kh
    v_base = v_ptr + b * stride_vb + (h // GROUP) * stride_vh

    # An online softmax over the chunk's tiles: sums are kept relative to the running maximum.
    running_max = tl.max(tl.full([BLOCK_K], _FAR_BELOW, tl.float32), axis=0)
    total = tl.sum(tl.zeros([BLOCK_K], tl.float32), axis=0)
    statistics = tl.zeros([4], tl.float32)
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
            weights_ptr + plan_index[:, None] * 4 + stat_index[None, :], mask=planned[:, None], other=0.0
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
            offsets_ptr + b * 4,
            row_valid_ptr + b * row_count + r,
            out_ptr + ((b * query_length + position) * HEADS + h) * HEAD_DIM,
            redistributed_rows_ptr + b,
            moved_mass_ptr + b,
            HEAD_DIM,
            WHOLE_ROWS,
            WRITE_ACTIVITY,
            BLOCK_CHUNKS,
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
    WRITE_ACTIVITY: tl.constexpr,
    BLOCK_CHUNKS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PARTIAL_FLOATS: tl.constexpr,
):
    """Merge the row's chunks, select the row or not, and add its correction to `out` (or write A'V)."""
    dims = tl.arange(0, BLOCK_D)
    dim_in = dims < HEAD_DIM
    stat_index = tl.arange(0, 4)
    chunk_index = tl.arange(0, BLOCK_CHUNKS)
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
    image_centric = tl.min(tl.where(stat_index >= 1, statistics, float("inf")), axis=0) >= 0
    selected = image_centric & (tl.load(row_valid) != 0)
    budget = tl.sum(tl.where(stat_index == 0, statistics, 0.0), axis=0)
    receiver_mass = tl.sum(tl.where(stat_index == 1, statistics, 0.0), axis=0)
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
    if WRITE_ACTIVITY:
        tl.atomic_add(redistributed_rows, selected.to(tl.float32))
        tl.atomic_add(moved_mass, tl.where(selected, budget, 0.0))


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


_launch_redistribute_rows = _Launcher(_redistribute_rows)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a typical count for the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 128


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _next_power_of_2(number: int) -> int:
    """As `triton.next_power_of_2`, without its constexpr-function call cost on every launch."""
    return 1 << (number - 1).bit_length()


_tickets_on: dict[torch.device, torch.Tensor] = {}


def _zeroed_tickets(device: torch.device, count: int) -> torch.Tensor:
    """At least `count` int32 zeros on `device`, kept from launch to launch.

    The kernel leaves its tickets at zero, so no launch needs a zero-filling launch of its own.
    Launches that share them must run one after the other, as they do on one CUDA stream.
    """
    tickets = _tickets_on.get(device)
    if tickets is None or tickets.numel() < count:
        tickets = _tickets_on[device] = torch.zeros(count, dtype=torch.int32, device=device)
    return tickets


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
    block_d = _next_power_of_2(head_dim)
    block_k = block_k or max(16, min(128, 16384 // block_d))
    tiles = _ceil_div(key_length, block_k)
    row_programs = batch * heads * row_count
    if chunks is None:
        chunks = _ceil_div(_PROGRAMS_PER_SM * _multiprocessors(query.device), row_programs)
    tiles_per_chunk = _ceil_div(tiles, max(1, min(chunks, tiles)))
    chunk_count = _ceil_div(tiles, tiles_per_chunk)
    partial_floats = _HEADER_FLOATS + (3 if whole_rows else 2) * block_d
    partials = torch.empty(
        row_programs * chunk_count * partial_floats, dtype=torch.float32, device=query.device
    )
    counters = (activity.redistributed_rows, activity.moved_mass) if activity else (partials,) * 2
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
            *counters,
            *query.stride()[:3],
            *key.stride()[:3],
            *value.stride()[:3],
            key_length,
            query_length,
            plan.weights.shape[1],
            tiles_per_chunk * block_k,
            scaling,
        ),
        (
            heads,
            heads // key.shape[1],
            head_dim,
            blocked is not None,
            whole_rows,
            activity is not None,
            block_k,
            block_d,
            _next_power_of_2(chunk_count),
            partial_floats,
        ),
    )
