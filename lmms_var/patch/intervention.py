"""What an attention intervention is to the patch layer: one object with a small interface.

An intervention (VAR, ScalingVis, PAI, ...) says
- which decoder layers it may change (`layers`) and which rows of a forward (`rows`);
- what it needs per prompt, computed once per layer at prefill (`layer_plan`), from the prompt's
  visual positions and, for VAR, the residual stream entering the layer;
- how a row is corrected: its table of compute paths (`paths`), keyed by the forward's kind and
  the backend, every entry taking one `LayerWork` and adding its counts to the work's counters.

Everything else (hooks, the attention registry, the prompt's positions, choosing the path, checking
a Triton kernel against the PyTorch path) is the patch layer's, the same for every intervention.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, NamedTuple

import torch

from lmms_var.patch.counters import Counters
from lmms_var.patch.explicit import LayerCall


class ForwardKind(Enum):
    """How the changed rows of one forward are computed; decided once per forward."""

    PREFILL_CORRECTION = "prefill correction"  # the base kernel runs; changed rows get a correction
    DECODE_CORRECTION = "decode correction"  # as above, at a decode step
    WHOLE_ROWS = "whole rows"  # every row is the intervention's: computed whole, the base kernel skipped


class Backend(Enum):
    PYTORCH = "pytorch"
    TRITON = "triton"  # on CUDA (or Triton's interpreter), where the intervention has kernels
    EAGER = "eager"  # every row materialised and replaced: the slow reference (`fused=False`)


class Positions(NamedTuple):
    """The prompt so far, per sample: which positions are visual, which are not padding."""

    image_mask: torch.Tensor  # Bool[B, T]: image and video placeholder positions (the core's name)
    valid: torch.Tensor  # Bool[B, T]


class PromptContext(NamedTuple):
    """What `Intervention.layer_plan` sees of one layer at prefill, on the layer's device."""

    positions: Positions
    hidden_states: torch.Tensor | None  # entering the layer; None unless `reads_hidden_states`
    options: Mapping  # per-prompt settings from outside the forward (AdaptVis's alpha per sample)
    shared: dict  # what the layers' plans of this prompt share, as the intervention keys it


class RowOptions(NamedTuple):
    """Settings a compute path may read (fixed for the model's life)."""

    block_elements: int  # the most float32 values in one explicit block (bounds extra memory)
    compile: bool  # run PyTorch decode arithmetic through `torch.compile`


class LayerWork(NamedTuple):
    """The one argument of every compute path: one layer's call in one forward."""

    output: torch.Tensor  # [B, Q, H, d] the base kernel's output, corrected in place (or written whole)
    call: LayerCall
    rows: torch.Tensor  # Long[B, R]: query indices of this forward the intervention may change
    row_valid: torch.Tensor  # Bool[B, R]: false where a sample has fewer such rows than R
    plan: object  # the intervention's `layer_plan` for this layer, on the layer's device
    key_offset: int  # positions before the layer's first key (a sliding-window cache dropped them)
    counters: Counters | None  # None without diagnostics
    options: RowOptions


ComputePath = Callable[[LayerWork], None]


def tensor_inputs(generate_kwargs: Mapping) -> dict[str, torch.Tensor]:
    """The model inputs among `generate`'s keyword arguments (the processor's tensors), for a forward."""
    return {name: value for name, value in generate_kwargs.items() if isinstance(value, torch.Tensor)}


@dataclass(frozen=True)
class KernelPath:
    """A Triton entry of a paths table: `run` is checked once per `specialization` (the variant
    Triton compiles) against the same kind's PyTorch entry before it is trusted."""

    run: ComputePath
    specialization: Callable[[LayerWork], object]  # hashable, with `describe()`


class Intervention(ABC):
    """One training-free attention intervention, built from its frozen config."""

    name: ClassVar[str]
    # (forward kind, backend) -> compute path; a missing TRITON entry falls back to PYTORCH.
    paths: ClassVar[Mapping[tuple[ForwardKind, Backend], ComputePath | KernelPath]]
    # Whether `layer_plan` reads the residual stream entering the layer (VAR's sinks).
    reads_hidden_states: ClassVar[bool] = False
    # Whether its rows need every key of the prompt: if so it leaves alone a layer whose cache dropped
    # the oldest (a sliding window), else its paths read `LayerWork.key_offset`.
    needs_every_key: ClassVar[bool] = False

    def __init__(self, config) -> None:
        self.config = config

    def layers(self, layer_count: int) -> frozenset[int]:
        """Decoder layers it may change (the patch keeps those with softmax attention): its config's."""
        return frozenset(self.config.active_layers(layer_count))

    @abstractmethod
    def is_identity(self) -> bool:
        """True when its settings change nothing (then no layer is touched: exact plain outputs)."""

    @abstractmethod
    def rows(self, positions: Positions, new: int, prefill: bool) -> torch.Tensor | None:
        """Bool[B, new]: rows of this forward (its last `new` positions) it may change; None: none
        of any sample (known without looking at the tensors, so a decode step needs no sync)."""

    @abstractmethod
    def layer_plan(self, prompt: PromptContext) -> object:
        """What its compute paths need for one layer of this prompt, on the layer's device."""

    def decode_kind(self, every_sample_has_visual: bool) -> ForwardKind:
        """The kind of a decode step (a correction unless overridden)."""
        return ForwardKind.DECODE_CORRECTION

    def prompt_options(self, handle, forward_kwargs: Mapping) -> dict:
        """Per-prompt options chosen before a prompt's prefill from the model's own forward arguments
        (AdaptVis: alpha from a plain pass); only overridden where there are some (then
        `enable_intervention` hooks the model's forward to call it)."""
        return {}

    def generate(self, handle, generate: Callable, *args, **kwargs):
        """`model.generate` with the method's parts outside the attention; only overridden where
        there are some (then `enable_intervention` wraps `model.generate` with it)."""
        return generate(*args, **kwargs)

    def layer_record(self, plan: object, positions: Positions) -> dict[str, torch.Tensor]:
        """Per-sample numbers of a layer's plan for diagnostics (VAR: its sinks); none by default."""
        return {}
