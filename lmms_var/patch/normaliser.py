"""Every query row's softmax normaliser (log-sum-exp), as a by-product of the model's own SDPA call.

VAR's prefill correction needs, besides a row's scores on visual and sink keys, the row's
log-sum-exp over all the keys it sees (`prefill.py`). PyTorch's fused attention kernels compute it
anyway and return it from their aten operations, but `F.scaled_dot_product_attention` (and so
transformers' sdpa wrapper) drops it. `LogSumExpCapture` intercepts the wrapper's SDPA call and
makes the very operation SDPA would dispatch to, with the same arguments, keeping the log-sum-exp:

| device | SDPA backend | operation (returns the log-sum-exp) |
|---|---|---|
| CPU | flash | `aten._scaled_dot_product_flash_attention_for_cpu` (masks and GQA too) |
| CUDA | flash (no mask) | `aten._scaled_dot_product_flash_attention` |
| CUDA | efficient | `aten._scaled_dot_product_efficient_attention(compute_log_sumexp=True)` |

Anything else (the math backend, cuDNN, other devices) is left alone: the caller then computes
the normaliser itself. The first call of each kind (device, dtype, backend, mask, causality, GQA)
runs both SDPA and the operation and keeps the operation only if its output is bit-identical, so
rows VAR leaves alone always keep the base kernel's exact output.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode


class Normaliser(NamedTuple):
    """Where the base kernel's softmax normaliser of every query row can be read, if anywhere."""

    log_sum_exp: torch.Tensor | None = None  # Float32[B, H, Q]: from SDPA's fused kernels
    weights: torch.Tensor | None = None  # [B, H, Q, K]: eager attention's own post-softmax weights


_SDPA_PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
# Memory-efficient attention wants the mask's rows aligned to this many elements (aten's preprocess_mask).
_EFFICIENT_MASK_ALIGNMENT = 8
# Kind of SDPA call -> whether the operation with the log-sum-exp gives SDPA's output bit for bit.
_bit_identical: dict[tuple, bool] = {}


def _same_bits(one: torch.Tensor, other: torch.Tensor) -> bool:
    """Bit-identical, NaNs included (rows that see no key may hold them; `torch.equal` never matches a NaN)."""
    if one.shape != other.shape or one.dtype != other.dtype:
        return False
    integers = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[one.element_size()]
    return torch.equal(one.contiguous().view(integers), other.contiguous().view(integers))


def _sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    return _SDPA_DEFAULTS | dict(zip(_SDPA_PARAMETERS, args, strict=False)) | kwargs


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask as SDPA converts it before its fused kernels: 0 where visible, -inf elsewhere."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def _aligned_for_efficient(mask: torch.Tensor, call: dict) -> torch.Tensor:
    """The mask as aten's `preprocess_mask` passes it to memory-efficient attention."""
    if any(stride % _EFFICIENT_MASK_ALIGNMENT for stride in mask.stride()[:-1]):
        keys = mask.shape[-1]
        mask = F.pad(mask, (0, -keys % _EFFICIENT_MASK_ALIGNMENT))[..., :keys]
    query, key = call["query"], call["key"]
    return mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])


def _with_log_sum_exp(call: dict, backend: SDPBackend):
    """A function returning (SDPA's output, Float32[B, H, Q] log-sum-exp), or None where not known.

    The function converts the mask itself when called, as SDPA does: a converted [B, 1, Q, K] mask
    must not be alive while SDPA runs too (the first call of a kind runs both).
    """
    query, key, value = call["query"], call["key"], call["value"]
    dropout, causal, scale, mask = call["dropout_p"], call["is_causal"], call["scale"], call["attn_mask"]
    if query.device.type == "cpu" and backend == SDPBackend.FLASH_ATTENTION:
        return lambda: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, dropout, causal, attn_mask=_additive(mask, query.dtype), scale=scale
        )
    if query.device.type != "cuda":
        return None
    if backend == SDPBackend.FLASH_ATTENTION and mask is None and query.shape[-1] % 8 == 0:
        return lambda: torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout, causal, False, scale=scale
        )[:2]
    if backend == SDPBackend.EFFICIENT_ATTENTION and not call["enable_gqa"]:

        def efficient():
            bias = None if mask is None else _aligned_for_efficient(_additive(mask, query.dtype), call)
            output, log_sum_exp = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, bias, True, dropout, causal, scale=scale
            )[:2]
            return output, log_sum_exp[..., : query.shape[2]]  # padded to a multiple of its block

        return efficient
    return None


class LogSumExpCapture(TorchFunctionMode):
    """Inside `with`, the first SDPA call keeps its rows' log-sum-exp in `log_sum_exp` where it can.

    The output is SDPA's own, bit for bit; `log_sum_exp` stays None where no operation could give it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_sum_exp: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or self.log_sum_exp is not None:
            return func(*args, **kwargs)
        call = _sdpa_arguments(args, kwargs)
        backend = SDPBackend(
            torch._fused_sdp_choice(
                call["query"],
                call["key"],
                call["value"],
                call["attn_mask"],
                call["dropout_p"],
                call["is_causal"],
                scale=call["scale"],
                enable_gqa=call["enable_gqa"],
            )
        )
        with_log_sum_exp = _with_log_sum_exp(call, backend)
        if with_log_sum_exp is None:
            return func(*args, **kwargs)
        mask = call["attn_mask"]
        kind = (
            call["query"].device,
            call["query"].dtype,
            backend,
            None if mask is None else mask.dtype,
            call["is_causal"],
            call["enable_gqa"],
            call["dropout_p"] > 0,
        )
        if kind not in _bit_identical:
            expected = func(*args, **kwargs)
            try:
                output, log_sum_exp = with_log_sum_exp()
                _bit_identical[kind] = _same_bits(output, expected)
            except RuntimeError:  # an operation this torch build does not have or refuses
                _bit_identical[kind] = False
            if _bit_identical[kind]:
                self.log_sum_exp = log_sum_exp
            return expected
        if not _bit_identical[kind]:
            return func(*args, **kwargs)
        output, self.log_sum_exp = with_log_sum_exp()
        return output
