"""The attention function VAR registers with transformers' `AttentionInterface`.

It wraps the model's own kernel (sdpa, eager or flash). In layers where VAR acts, the rows spec
step 2 allows are recomputed explicitly in float32 and redistributed:
- at prefill, every row is first computed by the base kernel and the redistribution is added as a
  correction, which is zero for rows no head selects, so untouched rows keep its exact output:

      A' @ V = A @ V + sum_k (A'[k] - A[k]) V[k]

  Only VAR's rows are materialised (`[B, H, R, K]`), so memory stays linear in sequence length;
- at a decode step whose samples all have an image, the one new row of each sample is VAR's: it is
  computed whole (A' @ V) and the base kernel is not run, which saves its launches.
With `fused=False` every row is materialised and replaced by A' @ V: the slow reference "eager VAR".

On CUDA with Triton, VAR's rows run as one kernel (`row_kernels.py`) instead of ~16 PyTorch
operations per layer, after a once-per-device check that it agrees with the PyTorch path.
"""

import functools
import importlib
import logging
import sys
from collections.abc import Callable
from types import ModuleType

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lmms_var.core import (
    KeyPlan,
    attention_change,
    redistribute_with_selection,
    row_statistics,
    selected_rows,
)
from lmms_var.patch.state import VARState

logger = logging.getLogger(__name__)
STATE_ATTRIBUTE = "_lmms_var_state"
BASE_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
_PREFIX = "lmms_var_"


def registered_name(base_implementation: str) -> str:
    """The name VAR registers for a base kernel, e.g. `lmms_var_sdpa`."""
    if base_implementation not in BASE_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {list(BASE_IMPLEMENTATIONS)} under VAR, got {base_implementation!r}"
        )
    name = _PREFIX + base_implementation
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, var_attention_forward)
        # The mask must be built for the wrapped kernel, or padded batches run unmasked.
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_implementation])
    return name


def _base_kernel(module: torch.nn.Module, base_implementation: str) -> Callable:
    if base_implementation == "eager":
        # Eager attention lives in each modeling file, not in the registry.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base_implementation]


def var_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base kernel for the rows VAR leaves alone, VAR for the allowed rows of layers with sinks."""
    state: VARState = getattr(module, STATE_ATTRIBUTE)
    acts = state.acts_on(module.layer_idx)
    if acts and state.whole_rows:  # VAR computes every row: a base kernel's output would be overwritten
        batch, heads, query_length, _ = query.shape
        output, weights = query.new_empty(batch, query_length, heads, value.shape[-1]), None
    else:
        base = _base_kernel(module, state.base_implementation)
        output, weights = base(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if acts:
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        with torch.no_grad():
            _apply_var(state, module.layer_idx, output, query, key, value, attention_mask, scaling)
    return output, weights


def _blocked_keys(
    attention_mask: torch.Tensor | None, rows: torch.Tensor, query_length: int, key_length: int
) -> torch.Tensor | None:
    """Bool[B, 1, R, K] keys each row may not attend to, from any mask format the base kernels use.

    None when nothing is blocked: a decode step without padding sees every key.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[:, :1, :, -key_length:]
        if rows.shape[1] != query_length:
            mask = mask.gather(2, rows.to(mask.device)[:, None, :, None].expand(-1, 1, -1, key_length))
        mask = mask.to(rows.device)
        return ~mask if mask.dtype == torch.bool else mask < torch.finfo(mask.dtype).min / 2
    if attention_mask is None and query_length == 1:
        return None
    # No mask (sdpa's causal skip) or a 2D padding mask (flash): causal from the cache offset.
    positions = rows + (key_length - query_length)
    blocked = torch.arange(key_length, device=rows.device)[None, None, :] > positions[..., None]
    if attention_mask is not None:
        blocked |= ~attention_mask[:, None, -key_length:].bool().to(rows.device)
    return blocked[:, None]


def _grouped(tensor: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[B, H, R, X] -> [B * Hkv, G * R, X]: query heads grouped by the key/value head they share (GQA)."""
    batch, heads, rows, last = tensor.shape
    return tensor.reshape(batch * kv_heads, heads // kv_heads * rows, last)


def _explicit_attention(query, key, blocked, scaling: float, may_be_empty: bool) -> torch.Tensor:
    """Float32 softmax(q k^T) [B, H, R, K] for query [B, H, R, d] and key [B, Hkv, K, d].

    `may_be_empty`: some rows may block every key (padding rows at prefill); they become zeros.
    """
    batch, heads, rows, _ = query.shape
    keys = key.float().flatten(0, 1)
    scores = torch.baddbmm(
        keys.new_zeros(()), _grouped(query.float(), key.shape[1]), keys.mT, beta=0, alpha=scaling
    )
    scores = scores.view(batch, heads, rows, -1)
    if blocked is not None:
        scores.masked_fill_(blocked, float("-inf"))
    attn = torch.softmax(scores, dim=-1)
    return attn.nan_to_num_(0.0) if may_be_empty else attn


def _times_values(attn: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """[B, H, R, K] @ [B, Hkv, K, d] -> [B, H, R, d] in float32, without repeating key/value heads."""
    batch, heads, rows, keys = attn.shape
    values = value[:, :, :keys].float().flatten(0, 1)
    return torch.bmm(_grouped(attn, value.shape[1]), values).view(batch, heads, rows, -1)


def _fused_rows(
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
    """The planned rows [B, H, R, d] (A'V, or A'V - AV as a correction), the selection and budgets [B, H, R].

    A pure tensor function: on CUDA it can be compiled into a few kernels, since a decode step
    there is bound by the number of kernel launches rather than by arithmetic.
    """
    attn = _explicit_attention(query, key, blocked, scaling, may_be_empty=in_prefill)
    statistics = row_statistics(attn, plan)
    selected = selected_rows(statistics, row_valid)
    planned = plan.weights.shape[1]
    change = attention_change(statistics, plan) * selected[..., None]
    if whole_rows:  # A'
        attn[..., :planned] += attn[..., :planned] * change
        weights = attn
    else:  # A' - A
        weights = attn[..., :planned] * change
    return _times_values(weights, value), selected, statistics[..., 0]


@functools.cache
def _compiled_rows() -> Callable:
    """`_fused_rows` compiled once per process (symbolic shapes: K grows at every decode step)."""
    return torch.compile(_fused_rows, dynamic=True)


@functools.cache
def _row_kernels_module() -> ModuleType | None:
    """`lmms_var.patch.row_kernels`, or None where Triton is not installed."""
    try:
        return importlib.import_module("lmms_var.patch.row_kernels")
    except ImportError:
        return None


def _row_kernels(state: VARState, query: torch.Tensor) -> ModuleType | None:
    """The Triton row kernels where they apply: the fused path on CUDA (or in Triton's interpreter)."""
    if not state.fused or not state.use_triton:
        return None
    kernels = _row_kernels_module()
    return kernels if kernels is not None and (query.is_cuda or kernels.INTERPRETED) else None


def _apply_var(
    state: VARState, layer: int, output, query, key, value, attention_mask, scaling: float
) -> None:
    """Redistribute the planned rows of this layer and write the result into `output` [B, Q, H, d]."""
    plan, activity = state.layer_on(layer, query.device)
    kernels = _row_kernels(state, query)
    if kernels is not None and _kernels_agree(
        state, layer, kernels, output, query, key, value, attention_mask, scaling, plan
    ):
        _run_kernels(kernels, state, output, query, key, value, attention_mask, scaling, plan, activity)
        return
    selected, budget = _pytorch_var(state, layer, output, query, key, value, attention_mask, scaling, plan)
    state.record_activity(layer, selected, budget)


def _run_kernels(
    kernels: ModuleType, state: VARState, output, query, key, value, attention_mask, scaling, plan, activity
) -> None:
    """`redistribute_rows` on this forward's rows, with the mask turned into blocked keys if any."""
    rows, row_valid = state.rows_on(query.device)
    # Without a mask the kernels apply causality themselves: no [B, R, K] mask is built.
    blocked = None
    if attention_mask is not None:
        blocked = _blocked_keys(attention_mask, rows, query.shape[2], key.shape[2])
    kernels.redistribute_rows(
        output,
        query,
        key,
        value,
        blocked,
        plan,
        rows,
        row_valid,
        scaling=scaling,
        whole_rows=state.whole_rows,
        activity=activity,
    )


def _pytorch_var(
    state: VARState, layer: int, output, query, key, value, attention_mask, scaling: float, plan: KeyPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused (or, with `fused=False`, eager) path in PyTorch operations; returns selection and budgets."""
    config = state.config
    heads, query_length, head_dim = query.shape[1:]
    key_length = key.shape[2]
    rows, row_valid = state.rows_on(query.device)
    all_rows = rows.shape[1] == query_length
    if not all_rows:
        query = query.gather(2, rows[:, None, :, None].expand(-1, heads, -1, head_dim))
    blocked = _blocked_keys(attention_mask, rows, query_length, key_length)
    if state.fused:
        compute = _compiled_rows() if state.compile else _fused_rows
        computed, selected, budget = compute(
            query,
            key,
            value,
            blocked,
            plan,
            row_valid,
            scaling=scaling,
            in_prefill=state.in_prefill,
            whole_rows=state.whole_rows,
        )
        if state.whole_rows:
            output.copy_(computed.transpose(1, 2))
        elif all_rows:
            output.add_(computed.transpose(1, 2))
        else:
            index = rows[:, :, None, None].expand(-1, -1, heads, head_dim)
            output.scatter_add_(1, index, computed.transpose(1, 2).to(output.dtype))
        return selected, budget
    attn = _explicit_attention(query, key, blocked, scaling, may_be_empty=state.in_prefill)
    visual = state.visual.to(query.device)[:, :key_length]
    sinks = torch.nn.functional.pad(
        state.sinks[layer].to(query.device), (0, key_length - plan.weights.shape[1])
    )
    new_attn, selected = redistribute_with_selection(
        attn, visual, sinks, row_valid, p=config.p, rho=config.rho, summ=config.summ
    )
    output.copy_(_times_values(new_attn, value).transpose(1, 2))
    return selected, row_statistics(attn, plan)[..., 0]


def _kernels_agree(
    state: VARState,
    layer: int,
    kernels: ModuleType,
    output,
    query,
    key,
    value,
    attention_mask,
    scaling: float,
    plan,
) -> bool:
    """Whether the Triton kernels give the PyTorch path's result here, checked once per model, device
    and kind of launch (whole rows, or a correction of the base kernel's output).

    Triton builds vary with the GPU and the installed version; on any failure or disagreement VAR
    warns and keeps the PyTorch path, which gives the same numbers more slowly.
    """
    device = query.device
    verdict = (device, state.whole_rows)
    if verdict not in state.kernels_agree:
        expected = output.clone()
        _pytorch_var(state, layer, expected, query, key, value, attention_mask, scaling, plan)
        tolerance = 1e-4 if output.dtype == torch.float32 else 2e-2
        try:
            agree = True
            for _ in range(2):  # the first launch compiles, the second takes the compiled kernel's fast path
                through_kernels = output.clone()
                _run_kernels(
                    kernels, state, through_kernels, query, key, value, attention_mask, scaling, plan, None
                )
                agree &= torch.allclose(
                    through_kernels.float(), expected.float(), atol=tolerance, rtol=tolerance
                )
            problem = "they disagree with the PyTorch path"
        except Exception as error:  # a Triton build or launch failure: fall back, do not fail the run
            agree, problem = False, f"{type(error).__name__}: {error}"
        if not agree:
            logger.warning("VAR's Triton kernels are off on %s (%s); using the PyTorch path", device, problem)
        state.kernels_agree[verdict] = agree
    return state.kernels_agree[verdict]
