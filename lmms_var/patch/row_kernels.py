"""VAR's rows in one Triton kernel launch per layer: on a GPU, launching small operations costs more
than their math. One launch replaces the PyTorch path's ~16 operations; nothing of size [H, R, K]
is written. The kernels' code and the arithmetic are in `kernel_code.py`; here are their compiled
variants (`specializations`, each checked on first use and compiled ahead of time by CI) and the
launchers, which fill each kernel's arguments by name (`kernel_launch.launch_arguments`).

Imported only where Triton is installed. `TRITON_INTERPRET=1` runs the kernels on CPU tensors
(Triton's interpreter), which is how the CPU tests check them against the PyTorch path.
"""

import functools
import itertools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton

from lmms_var.core import STATISTICS, KeyPlan
from lmms_var.patch.counters import Counters
from lmms_var.patch.explicit import LayerCall
from lmms_var.patch.kernel_code import (
    HEADER_FLOATS,
    INTERPRETED,
    MAX_CHUNKS,
    correct_prefill_rows_kernel,
    redistribute_rows_kernel,
)
from lmms_var.patch.kernel_launch import Launcher, launch_arguments, parameters
from lmms_var.patch.masks import MaskKind, additive_threshold, blocked_keys, classify
from lmms_var.patch.prefill import RelevantKeys

__all__ = [
    "DTYPES",
    "INTERPRETED",
    "MASK_KINDS",
    "TILE_ROWS",
    "PrefillSpecialization",
    "RowsSpecialization",
    "correct_prefill_rows",
    "prefill_specialization",
    "redistribute_rows",
    "rows_specialization",
    "specializations",
]

# The dtypes a model may run in; the kernels compute in float32 whatever the dtype.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Prefill rows per program by default: 16 or more multiply tiles with `tl.dot`.
TILE_ROWS = 16
# The mask kinds (`masks.MaskKind`) by name, as `describe()` prints them; indexed by kind.
MASK_KINDS = tuple(kind.label for kind in MaskKind)
# Chunks per row are chosen for about this many programs per multiprocessor: more fill the GPU for
# a single decode row, fewer keep the [B * H, R, chunks, ...] workspace small at prefill.
_PROGRAMS_PER_SM = 4
_TRITON_TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.uint8: "u8",
    torch.int32: "i32",
    torch.int64: "i64",
}
_FLOAT_ARGUMENTS = frozenset({"scaling", "blocked_below"})  # passed as Python floats
# Each kernel's runtime arguments, named and ordered as its signature.
_RowsArguments = launch_arguments(redistribute_rows_kernel)
_PrefillArguments = launch_arguments(correct_prefill_rows_kernel)


def _next_power_of_2(number: int) -> int:
    """As `triton.next_power_of_2`, without its constexpr-function call cost on every launch."""
    return 1 << (number - 1).bit_length()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
        return tuple(constexprs[name] for name in parameters(self.kernel) if name in constexprs)

    def signature(self) -> dict[str, str]:
        """Triton's type of every kernel parameter ("constexpr" for those in `constexprs`), as a launch gives them.

        Integers are typed i32: they fit for any prompt a model takes (Triton would switch to i64 past 2**31).
        """
        pointers, constexprs = self._pointer_dtypes(), self.constexprs()
        signature = {}
        for name in parameters(self.kernel):
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
    """One compiled variant of `redistribute_rows_kernel` (decode rows over all their keys).

    `redistribute_rows` launches exactly the one `rows_specialization` gives for its arguments, and
    `specializations` lists every one it can launch; the first-use check in `attention.py` is per
    specialisation, and CI compiles each ahead of time for real GPUs.
    """

    dtype: torch.dtype  # of query, key, value and output
    head_dim: int
    blocked: bool  # a [B, R, K] mask of blocked keys (else causal only)
    whole_rows: bool  # write A'V rather than add A'V - AV
    block_k: int  # keys per tile

    kernel = redistribute_rows_kernel  # a class attribute, not a field

    def constexprs(self) -> dict[str, object]:
        return {
            "HEAD_DIM": self.head_dim,
            "HAS_BLOCKED": self.blocked,
            "WHOLE_ROWS": self.whole_rows,
            "BLOCK_K": self.block_k,
            "BLOCK_D": self.block_d,
            "PARTIAL_FLOATS": HEADER_FLOATS + (3 if self.whole_rows else 2) * self.block_d,
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
    """One compiled variant of `correct_prefill_rows_kernel` (prefill rows over their relevant keys).

    As `RowsSpecialization`, for `correct_prefill_rows` and `prefill_specialization`.
    """

    dtype: torch.dtype  # of query, key, value and output
    head_dim: int
    mask_kind: MaskKind  # also an index into MASK_KINDS
    mask_dtype: torch.dtype  # of the mask as the kernel reads it (`_kernel_mask_dtype`)
    log_sum_exp: bool  # the base kernel gave every row's log-sum-exp (else a first pass computes it)
    chunked: bool  # several programs share a tile's relevant keys
    tile_rows: int
    block_k: int  # keys per tile

    kernel = correct_prefill_rows_kernel  # a class attribute, not a field

    def constexprs(self) -> dict[str, object]:
        return {
            "HEAD_DIM": self.head_dim,
            "MASK_KIND": int(self.mask_kind),
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


def _kernel_mask_dtype(kind: MaskKind, dtype: torch.dtype) -> torch.dtype:
    """The dtype the prefill kernel reads a mask of `kind` and `dtype` in: uint8 but for additive masks
    (without a mask, uint8 too: the kernel is given, and never reads, `row_valid`)."""
    return dtype if kind == MaskKind.ADDITIVE else torch.uint8


class _KernelMask(NamedTuple):
    """The base kernel's mask as the prefill kernel reads it (see `kernel_code._visible`)."""

    kind: MaskKind
    tensor: torch.Tensor | None  # [B, Q, K] or [B, K]; None for causal only
    strides: tuple[int, int, int]  # over batch, query and key
    blocked_below: float  # `masks.additive_threshold` for additive masks


def _kernel_mask(attention_mask: torch.Tensor | None, batch: int, key_length: int) -> _KernelMask:
    """The mask a prefill launch passes, by its `masks.classify` kind; no copy."""
    kind = classify(attention_mask)
    if kind == MaskKind.CAUSAL_ONLY:
        return _KernelMask(kind, None, (0, 0, 0), 0.0)
    if kind == MaskKind.PADDING:
        padding = attention_mask[:, -key_length:].bool().view(torch.uint8)
        return _KernelMask(kind, padding, (padding.stride(0), 0, padding.stride(1)), 0.0)
    mask = attention_mask[:, 0, :, -key_length:].expand(batch, -1, -1)  # the same for every head
    if kind == MaskKind.BOOL:
        return _KernelMask(kind, mask.view(torch.uint8), mask.stride(), 0.0)
    return _KernelMask(kind, mask, mask.stride(), additive_threshold(mask.dtype))


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
    kind, attention_mask = classify(call.attention_mask), call.attention_mask
    mask_dtype = torch.uint8 if attention_mask is None else _kernel_mask_dtype(kind, attention_mask.dtype)
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
            MaskKind, ((False, False), (True, False), (True, True))
        ):
            variants.append(
                PrefillSpecialization(
                    dtype,
                    head_dim,
                    kind,
                    _kernel_mask_dtype(kind, dtype),
                    has_lse,
                    chunked,
                    TILE_ROWS,
                    _prefill_block_k(head_dim),
                )
            )
    return variants


_launch_redistribute_rows = Launcher(redistribute_rows_kernel)
_launch_correct_prefill_rows = Launcher(correct_prefill_rows_kernel)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (a typical count for the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 128


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


_tickets_on: dict[torch.device, torch.Tensor] = {}
_scratch_counters_on: dict[torch.device, Counters] = {}


def _zeroed_tickets(device: torch.device, count: int) -> torch.Tensor:
    """At least `count` int32 zeros on `device`, kept from launch to launch.

    The kernel leaves its tickets at zero, so no launch needs a zero-filling launch of its own.
    Launches that share them must run one after the other, as they do on one CUDA stream.
    """
    tickets = _tickets_on.get(device)
    if tickets is None or tickets.numel() < count:
        tickets = _tickets_on[device] = torch.zeros(count, dtype=torch.int32, device=device)
    return tickets


def _counters(counters: Counters | None, batch: int, device: torch.device) -> Counters:
    """Where a launch adds its selected rows and budgets: the diagnostics', or scratch never read.

    The kernels always add them (one variant fewer of each kernel to compile and check).
    """
    if counters is not None:
        return counters
    scratch = _scratch_counters_on.get(device)
    if scratch is None or scratch.moved_mass.numel() < batch:
        scratch = _scratch_counters_on[device] = Counters(
            *(torch.empty(batch, dtype=torch.float32, device=device) for _ in Counters._fields)
        )
    return scratch


def _check_inputs(
    output: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: torch.Tensor
) -> None:
    """What the kernels assume: unit stride over head_dim, `output` [B, Q, H, d] as laid out, Long rows."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim, got strides {tensor.stride()}")
    if not output.is_contiguous():
        raise ValueError("output must be a contiguous [batch, query, heads, head_dim] tensor")
    if rows.dtype != torch.int64 or rows.dim() != 2:
        raise ValueError(f"rows must be Long[batch, rows], got {rows.dtype} of shape {tuple(rows.shape)}")


def _shared_arguments(
    output: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: KeyPlan,
    rows: torch.Tensor,
    row_valid: torch.Tensor,
    counters: Counters,
) -> dict[str, object]:
    """Both kernels' arguments of the same name: inputs and their strides over batch, head and
    sequence, the key plan, the rows, and the counters."""
    (qb, qh, qq), (kb, kh, kk), (vb, vh, vk) = query.stride()[:3], key.stride()[:3], value.stride()[:3]
    return {
        "q_ptr": query,
        "k_ptr": key,
        "v_ptr": value,
        "weights_ptr": plan.weights,
        "offsets_ptr": plan.offsets,
        "sink_change_ptr": plan.sink_change,
        "receivers_ptr": plan.receivers,
        "rows_ptr": rows,
        "row_valid_ptr": row_valid,
        "out_ptr": output,
        "redistributed_rows_ptr": counters.redistributed_rows,
        "moved_mass_ptr": counters.moved_mass,
        "stride_qb": qb,
        "stride_qh": qh,
        "stride_qq": qq,
        "stride_kb": kb,
        "stride_kh": kh,
        "stride_kk": kk,
        "stride_vb": vb,
        "stride_vh": vh,
        "stride_vk": vk,
        "key_length": key.shape[2],
        "query_length": query.shape[2],
        "planned_keys": plan.weights.shape[1],
        "heads": query.shape[1],
        "group": query.shape[1] // key.shape[1],
    }


def redistribute_rows(
    output: torch.Tensor,
    call: LayerCall,
    plan: KeyPlan,
    rows: torch.Tensor,
    row_valid: torch.Tensor,
    *,
    counters: Counters | None,
    whole_rows: bool = False,
    block_k: int | None = None,
    chunks: int | None = None,
) -> None:
    """Add A'V - AV to the base kernel's `output` [B, Q, H, d] in place, for the rows VAR selects;
    with `whole_rows`, write A'V (A'V = AV where no head selects the row) into every query row.

    `rows` Long[B, R] are the query indices VAR may change (all Q of them for `whole_rows`) and
    `row_valid` Bool[B, R] says which of them spec step 2 allows. Without a mask the kernel applies
    causality itself; with one, the keys each row may not see are read into a [B, R, K] tensor first
    (`masks.blocked_keys`: R is one row per sample at a decode step).
    `counters` (diagnostics on) get the selected rows and their budgets added on the device.
    `block_k` (keys per tile) and `chunks` (per row, at most 64) are for tests and tuning; by default
    a row is split into just enough chunks to give every streaming multiprocessor a few programs.
    """
    query, key, value = call.query, call.key, call.value
    batch, heads, _, head_dim = query.shape
    row_count, key_length = rows.shape[1], key.shape[2]
    _check_inputs(output, query, key, value, rows)
    blocked = None
    if classify(call.attention_mask) != MaskKind.CAUSAL_ONLY:
        blocked = blocked_keys(call.attention_mask, rows, query.shape[2], key_length)
        blocked = blocked.contiguous().view(torch.uint8)
    rows, row_valid = rows.contiguous(), row_valid.contiguous().view(torch.uint8)  # no copy from VARState
    specialization = rows_specialization(
        query.dtype, head_dim, blocked=blocked is not None, whole_rows=whole_rows, block_k=block_k
    )
    tiles = _ceil_div(key_length, specialization.block_k)
    row_programs = batch * heads * row_count
    if chunks is None:
        chunks = _ceil_div(_PROGRAMS_PER_SM * _multiprocessors(query.device), row_programs)
    tiles_per_chunk = _ceil_div(tiles, max(1, min(chunks, tiles, MAX_CHUNKS)))
    chunk_count = _ceil_div(tiles, tiles_per_chunk)
    constexprs = specialization.constexprs()
    arguments = _RowsArguments(
        **_shared_arguments(
            output, query, key, value, plan, rows, row_valid, _counters(counters, batch, query.device)
        ),
        blocked_ptr=blocked if blocked is not None else row_valid,
        partials_ptr=torch.empty(
            row_programs * chunk_count * constexprs["PARTIAL_FLOATS"],
            dtype=torch.float32,
            device=query.device,
        ),
        tickets_ptr=_zeroed_tickets(query.device, row_programs),
        chunk_keys=tiles_per_chunk * specialization.block_k,
        scaling=call.scaling,
    )
    _launch_redistribute_rows(
        (batch * heads, row_count, chunk_count), query.device, arguments, specialization.constants()
    )


def correct_prefill_rows(
    output: torch.Tensor,
    call: LayerCall,
    plan: KeyPlan,
    keys: RelevantKeys,
    rows: torch.Tensor,
    row_valid: torch.Tensor,
    *,
    counters: Counters | None,
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
    `counters` (diagnostics on) get the selected rows and their budgets added on the device.
    `tile_rows` rows share a program (16 or more multiply tiles with `tl.dot`); `block_k` keys per
    tile and `chunks` of the relevant keys per tile of rows are for tests and tuning: by default
    just enough chunks give every streaming multiprocessor a few programs.
    """
    query = call.query
    batch, heads = query.shape[:2]
    _check_inputs(output, query, call.key, call.value, rows)
    rows, row_valid = rows.contiguous(), row_valid.contiguous().view(torch.uint8)
    log_sum_exp = call.normaliser.log_sum_exp
    specialization, tiles, chunks = _prefill_tiling(
        call, plan.weights.shape[1], rows.shape[1], tile_rows, block_k, chunks
    )
    mask = _kernel_mask(call.attention_mask, batch, call.key.shape[2])
    tile_programs = batch * heads * tiles
    partials = torch.empty(
        tile_programs * chunks * tile_rows * specialization.constexprs()["PARTIAL_FLOATS"]
        if chunks > 1
        else 1,
        dtype=torch.float32,
        device=query.device,
    )
    (lb, lh, lq) = log_sum_exp.stride() if log_sum_exp is not None else (0, 0, 0)
    arguments = _PrefillArguments(
        **_shared_arguments(
            output,
            query,
            call.key,
            call.value,
            plan,
            rows,
            row_valid,
            _counters(counters, batch, query.device),
        ),
        lse_ptr=log_sum_exp if log_sum_exp is not None else partials,
        mask_ptr=mask.tensor if mask.tensor is not None else row_valid,
        key_order_ptr=keys.order.contiguous(),
        key_counts_ptr=keys.counts.contiguous(),
        partials_ptr=partials,
        tickets_ptr=_zeroed_tickets(query.device, tile_programs),
        stride_lb=lb,
        stride_lh=lh,
        stride_lq=lq,
        stride_mb=mask.strides[0],
        stride_mq=mask.strides[1],
        stride_mk=mask.strides[2],
        row_count=rows.shape[1],
        scaling=call.scaling,
        blocked_below=mask.blocked_below,
    )
    _launch_correct_prefill_rows(
        (batch * heads, tiles, chunks), query.device, arguments, specialization.constants()
    )
