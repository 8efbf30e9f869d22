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
operations per layer, after a check, once per device and kernel variant, that it agrees with the
PyTorch path.
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
    BUDGET,
    KeyPlan,
    attention_change,
    redistribute_with_selection,
    row_statistics,
    selected_rows,
)
from lmms_var.patch.counters import Counters
from lmms_var.patch.explicit import LayerCall, Normaliser, explicit_attention, times_values
from lmms_var.patch.masks import blocked_keys
from lmms_var.patch.normaliser import LogSumExpCapture
from lmms_var.patch.prefill import correct_prefill_rows, relevant_keys
from lmms_var.patch.state import LayerActivity, VARState

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


def attention_function(module: torch.nn.Module, implementation: str) -> Callable:
    """The attention function `module` runs under `implementation` (a base kernel or a registered name)."""
    if implementation == "eager":
        # Eager attention lives in each modeling file, not in the registry.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


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
    acts = state.acts_on(module.layer_idx, key.shape[2])
    normaliser = Normaliser()
    if acts and state.whole_rows:  # VAR computes every row: a base kernel's output would be overwritten
        batch, heads, query_length, _ = query.shape
        output, weights = query.new_empty(batch, query_length, heads, value.shape[-1]), None
    else:
        base = attention_function(module, state.base_implementation)
        arguments = (module, query, key, value, attention_mask)
        options = {"scaling": scaling, "dropout": dropout, **kwargs}
        if acts and _corrects_prefill(state):
            output, weights, normaliser = _base_with_normaliser(
                state.base_implementation, base, arguments, options
            )
        else:
            output, weights = base(*arguments, **options)
    if acts:
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        call = LayerCall(query, key, value, attention_mask, scaling, normaliser)
        with torch.no_grad():
            _apply_var(state, module.layer_idx, output, call)
    return output, weights


def _corrects_prefill(state: VARState) -> bool:
    """The fused path at prefill: VAR corrects the base kernel's rows, over visual and sink keys."""
    return state.fused and state.in_prefill


def _base_with_normaliser(
    base_implementation: str, base: Callable, arguments: tuple, options: dict
) -> tuple[torch.Tensor, torch.Tensor | None, Normaliser]:
    """The base kernel's output and weights, and its rows' softmax normaliser where it gives one."""
    if base_implementation == "sdpa":
        with LogSumExpCapture() as capture:
            output, weights = base(*arguments, **options)
        return output, weights, Normaliser(log_sum_exp=capture.log_sum_exp)
    output, weights = base(*arguments, **options)
    softmax = base_implementation == "eager" and not options["dropout"]  # dropout would scale its weights
    return output, weights, Normaliser(weights=weights if softmax else None)


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
    """Decode rows [B, H, R, d] (A'V, or A'V - AV as a correction) over all their keys, the selection and budgets [B, H, R].

    A pure tensor function: on CUDA it can be compiled into a few kernels, since a decode step
    there is bound by the number of kernel launches rather than by arithmetic.
    """
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


def _apply_var(state: VARState, layer: int, output: torch.Tensor, call: LayerCall) -> None:
    """Redistribute the planned rows of this layer and write the result into `output` [B, Q, H, d]."""
    plan, activity = state.layer_on(layer, call.query.device)
    kernels = _row_kernels(state, call.query)
    if kernels is not None and _kernels_agree(state, layer, kernels, output, call, plan):
        _run_kernels(kernels, state, output, call, plan, activity)
        return
    selected, budget = _pytorch_var(state, layer, output, call, plan)
    state.record_activity(layer, selected, budget)


def _run_kernels(
    kernels: ModuleType,
    state: VARState,
    output: torch.Tensor,
    call: LayerCall,
    plan: KeyPlan,
    activity: LayerActivity | None,
) -> None:
    """This forward's rows through the Triton kernels: prefill rows over their relevant keys, decode rows whole."""
    rows, row_valid = state.rows_on(call.query.device)
    counters = None if activity is None else Counters(activity.redistributed_rows, activity.moved_mass)
    if _corrects_prefill(state):
        keys = relevant_keys(plan)
        kernels.correct_prefill_rows(output, call, plan, keys, rows, row_valid, counters=counters)
        return
    kernels.redistribute_rows(
        output, call, plan, rows, row_valid, whole_rows=state.whole_rows, counters=counters
    )


def _pytorch_var(
    state: VARState, layer: int, output: torch.Tensor, call: LayerCall, plan: KeyPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused (or, with `fused=False`, eager) path in PyTorch operations; returns selection and budgets."""
    rows, row_valid = state.rows_on(call.query.device)
    if _corrects_prefill(state):
        return correct_prefill_rows(output, call, plan, rows, row_valid, block_elements=state.block_elements)
    query, key, value = call.query, call.key, call.value
    query_length, key_length = query.shape[2], key.shape[2]
    blocked = blocked_keys(call.attention_mask, rows, query_length, key_length)
    if state.fused:  # a decode step: every row of it (one per sample), over all its keys
        compute = _compiled_rows() if state.compile else _fused_rows
        computed, selected, budget = compute(
            query,
            key,
            value,
            blocked,
            plan,
            row_valid,
            scaling=call.scaling,
            in_prefill=False,
            whole_rows=state.whole_rows,
        )
        if state.whole_rows:
            output.copy_(computed.transpose(1, 2))
        else:
            output.add_(computed.transpose(1, 2).to(output.dtype))
        return selected, budget
    config = state.config
    attn = explicit_attention(query, key, blocked, call.scaling, may_be_empty=state.in_prefill)
    visual = state.visual.to(query.device)[:, :key_length]
    sinks = torch.nn.functional.pad(
        state.sinks[layer].to(query.device), (0, key_length - plan.weights.shape[1])
    )
    new_attn, selected = redistribute_with_selection(
        attn, visual, sinks, row_valid, p=config.p, rho=config.rho, summ=config.summ
    )
    output.copy_(times_values(new_attn, value).transpose(1, 2))
    return selected, row_statistics(attn, plan)[..., BUDGET]


def _specialization(kernels: ModuleType, state: VARState, call: LayerCall, plan: KeyPlan):
    """The kernel variant this forward's launch compiles to (as `_run_kernels` launches it)."""
    if _corrects_prefill(state):
        rows = state.rows_on(call.query.device)[0]
        return kernels.prefill_specialization(call, plan.weights.shape[1], rows.shape[1])
    return kernels.rows_specialization(
        call.query.dtype,
        call.query.shape[-1],
        blocked=call.attention_mask is not None,
        whole_rows=state.whole_rows,
    )


def _kernels_agree(
    state: VARState, layer: int, kernels: ModuleType, output: torch.Tensor, call: LayerCall, plan: KeyPlan
) -> bool:
    """Whether the Triton kernels give the PyTorch path's result here, checked once per model, device
    and kernel specialisation (the variant Triton compiles: kernel, dtype, head dim, mask, tiling).

    Triton builds vary with the GPU and the installed version, and a variant first met hours into a
    run (another mask, a longer prompt) may fail where others worked; on any failure or disagreement
    VAR warns once for that variant and keeps the PyTorch path there, which gives the same numbers
    more slowly.
    """
    device = call.query.device
    specialization = _specialization(kernels, state, call, plan)
    verdict = (device, specialization)
    if verdict not in state.kernels_agree:
        expected = output.clone()
        _pytorch_var(state, layer, expected, call, plan)
        tolerance = 1e-4 if output.dtype == torch.float32 else 2e-2
        try:
            agree = True
            for _ in range(2):  # the first launch compiles, the second takes the compiled kernel's fast path
                through_kernels = output.clone()
                _run_kernels(kernels, state, through_kernels, call, plan, None)
                agree &= torch.allclose(
                    through_kernels.float(), expected.float(), atol=tolerance, rtol=tolerance
                )
            problem = "they disagree with the PyTorch path"
        except Exception as error:  # a Triton build or launch failure: fall back, do not fail the run
            agree, problem = False, f"{type(error).__name__}: {error}"
        if not agree:
            logger.warning(
                "VAR's Triton kernels are off on %s for %s (%s); using the PyTorch path there",
                device,
                specialization.describe(),
                problem,
            )
        state.kernels_agree[verdict] = agree
    return state.kernels_agree[verdict]
