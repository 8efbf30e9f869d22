"""The attention function every intervention registers with transformers' `AttentionInterface`.

It wraps the model's own kernel (sdpa, eager or flash). In layers where the attached intervention
acts, the forward's kind (decided once per forward, `state.ForwardPlan`) and the backend pick one
entry of the intervention's table of compute paths (`Intervention.paths`), which corrects the rows
the intervention changes in the base kernel's output (or, for whole rows, writes them, the base
kernel skipped). A Triton entry is checked once per device and kernel variant against the PyTorch
entry of the same kind before it is trusted.
"""

import logging
import sys
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lmms_var.patch.explicit import LayerCall
from lmms_var.patch.intervention import Backend, ComputePath, ForwardKind, KernelPath, LayerWork
from lmms_var.patch.normaliser import LogSumExpCapture, Normaliser
from lmms_var.patch.state import InterventionState, Settings
from lmms_var.patch.triton_support import triton_runs_on

logger = logging.getLogger(__name__)
STATE_ATTRIBUTE = "_lmms_var_state"
BASE_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
_PREFIX = "lmms_var_"


def registered_name(base_implementation: str) -> str:
    """The name registered for a base kernel, e.g. `lmms_var_sdpa`."""
    if base_implementation not in BASE_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {list(BASE_IMPLEMENTATIONS)} under an intervention, "
            f"got {base_implementation!r}"
        )
    name = _PREFIX + base_implementation
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, intervention_attention_forward)
        # The mask must be built for the wrapped kernel, or padded batches run unmasked.
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_implementation])
    return name


def attention_function(module: torch.nn.Module, implementation: str) -> Callable:
    """The attention function `module` runs under `implementation` (a base kernel or a registered name)."""
    if implementation == "eager":
        # Eager attention lives in each modeling file, not in the registry.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[implementation]


def intervention_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base kernel for the rows the intervention leaves alone, its compute path for the others."""
    state: InterventionState = getattr(module, STATE_ATTRIBUTE)
    base_implementation = state.settings.base_implementation
    layer = module.layer_idx
    if not state.acts_on(layer, key.shape[2]):
        return attention_function(module, base_implementation)(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    kind = state.forward.kind
    normaliser, weights = Normaliser(), None
    if kind is ForwardKind.WHOLE_ROWS:  # every row is computed: a base kernel's output would be overwritten
        batch, heads, query_length, _ = query.shape
        output = query.new_empty(batch, query_length, heads, value.shape[-1])
    else:
        base = attention_function(module, base_implementation)
        arguments = (module, query, key, value, attention_mask)
        options = {"scaling": scaling, "dropout": dropout, **kwargs}
        if kind is ForwardKind.PREFILL_CORRECTION:
            output, weights, normaliser = _base_with_normaliser(base_implementation, base, arguments, options)
        else:
            output, weights = base(*arguments, **options)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    work = state.layer_work(layer, output, LayerCall(query, key, value, attention_mask, scaling, normaliser))
    _apply(state, work)
    return output, weights


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


@torch.no_grad()
def _apply(state: InterventionState, work: LayerWork) -> None:
    """Correct (or write) this layer's changed rows in `work.output`."""
    _compute_path(state, work)(work)


def _compute_path(state: InterventionState, work: LayerWork) -> ComputePath:
    """This call's entry of the intervention's paths table: Triton where it runs and agrees, else PyTorch."""
    paths, kind = state.settings.intervention.paths, state.forward.kind
    backend = _backend(state.settings, work.call.query)
    entry = paths.get((kind, backend))
    if isinstance(entry, KernelPath):
        return (
            entry.run
            if _kernel_agrees(state, work, entry, paths[kind, Backend.PYTORCH])
            else paths[kind, Backend.PYTORCH]
        )
    return entry if entry is not None else paths[kind, Backend.PYTORCH]


def _backend(settings: Settings, query: torch.Tensor) -> Backend:
    """The backend of this call: the eager reference, Triton where it applies, else PyTorch."""
    if not settings.fused:
        return Backend.EAGER
    if settings.use_triton and triton_runs_on(query):
        return Backend.TRITON
    return Backend.PYTORCH


def _kernel_agrees(
    state: InterventionState, work: LayerWork, kernel: KernelPath, pytorch: ComputePath
) -> bool:
    """Whether a Triton path gives the PyTorch path's result here, checked once per model, device
    and kernel specialisation (the variant Triton compiles: kernel, dtype, head dim, mask, tiling).

    Triton builds vary with the GPU and the installed version, and a variant first met hours into a
    run (another mask, a longer prompt) may fail where others worked; on any failure or disagreement
    it warns once for that variant and keeps the PyTorch path there, which gives the same numbers
    more slowly.
    """
    device = work.call.query.device
    specialization = kernel.specialization(work)
    verdict = (device, specialization)
    verdicts = state.caches.kernels_agree
    if verdict not in verdicts:
        expected = work.output.clone()
        pytorch(work._replace(output=expected, counters=None))
        tolerance = 1e-4 if expected.dtype == torch.float32 else 2e-2
        try:
            agree = True
            for _ in range(2):  # the first launch compiles, the second takes the compiled kernel's fast path
                through_kernel = work.output.clone()
                kernel.run(work._replace(output=through_kernel, counters=None))
                agree &= torch.allclose(
                    through_kernel.float(), expected.float(), atol=tolerance, rtol=tolerance
                )
            problem = "they disagree with the PyTorch path"
        except Exception as error:  # a Triton build or launch failure: fall back, do not fail the run
            agree, problem = False, f"{type(error).__name__}: {error}"
        if not agree:
            logger.warning(
                "%s's Triton kernels are off on %s for %s (%s); using the PyTorch path there",
                state.settings.intervention.name,
                device,
                specialization.describe(),
                problem,
            )
        verdicts[verdict] = agree
    return verdicts[verdict]
