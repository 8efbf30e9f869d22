"""An attached intervention's state, by lifetime.

- `Settings`: fixed when the intervention is attached (frozen).
- `ModelCaches`: kept for the model's life (Triton verdicts, token-id tensors per device).
- `PromptState`: one prompt batch, *replaced* at every prefill (a forward with an empty cache) and
  extended by each decode step, so nothing leaks from one prompt to the next.
- `ForwardPlan`: one forward's kind and rows, decided once by `start_forward` (frozen).

The hooks (`enable.py`) write it; the attention function reads it; `layer_work` hands one layer
everything its compute path needs, so the paths do no bookkeeping and force no synchronisation.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from lmms_var.patch.counters import Counters
from lmms_var.patch.explicit import LayerCall
from lmms_var.patch.intervention import (
    ForwardKind,
    Intervention,
    LayerWork,
    Positions,
    PromptContext,
    RowOptions,
)


@dataclass(frozen=True)
class Settings:
    """What `enable_intervention` fixed."""

    intervention: Intervention
    active_layers: frozenset[int]  # layers it changes: its own, with softmax attention
    visual_token_ids: tuple[int, ...]
    base_implementation: str  # the model's own kernel, wrapped
    options: RowOptions
    fused: bool = True  # False: the eager reference (every row materialised)
    use_triton: bool = True
    collect_diagnostics: bool = False

    @property
    def config(self):
        return self.intervention.config


@dataclass
class ModelCaches:
    """Kept for the model's life."""

    # Whether a Triton kernel agrees with the PyTorch path, per (device, kernel specialisation).
    kernels_agree: dict[tuple[torch.device, object], bool] = field(default_factory=dict)
    image_token_ids_on: dict[torch.device, torch.Tensor] = field(default_factory=dict)


@dataclass
class PromptState:
    """One prompt batch: its positions so far and, per layer, the intervention's plan."""

    positions: Positions
    options: Mapping  # per-prompt settings from outside the forward (AdaptVis's alpha per sample)
    every_sample_has_visual: bool
    plans: dict[int, object] = field(default_factory=dict)  # layer -> the intervention's layer plan
    shared: dict = field(default_factory=dict)  # what the plans share (`PromptContext.shared`)
    records: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # layer -> diagnostics
    counters: dict[int, Counters] = field(default_factory=dict)  # layer -> counts (diagnostics on)


@dataclass(frozen=True)
class ForwardPlan:
    """One forward: its kind, and the rows the intervention may change (empty: it changes none)."""

    kind: ForwardKind
    prefill: bool
    rows: torch.Tensor  # Long[B, R]: query indices of this forward
    row_valid: torch.Tensor  # Bool[B, R]
    # The same two on each device that runs an attention layer (several with device_map="auto").
    on_device: Mapping[torch.device, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class InterventionState:
    """The state of one attached intervention (one per patched model)."""

    settings: Settings
    caches: ModelCaches = field(default_factory=ModelCaches)
    prompt: PromptState | None = None
    forward: ForwardPlan | None = None
    # Handed to the next prefill's `PromptState.options`, then cleared (`InterventionHandle.prompt_options`).
    next_prompt_options: Mapping = field(default_factory=dict)
    # Set by `InterventionHandle.suspended()`: the hooks and the attention function pass through.
    suspended: bool = False

    def start_forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        past_length: int,
        devices: frozenset[torch.device],
    ) -> None:
        """Record the positions this forward adds (a new prompt if the cache is empty) and plan its rows."""
        if input_ids is None:
            raise ValueError(
                f"{self.settings.intervention.name} needs `input_ids` to locate visual tokens; "
                "this forward passed only `inputs_embeds`"
            )
        batch, new = input_ids.shape
        device = input_ids.device
        if device not in self.caches.image_token_ids_on:
            self.caches.image_token_ids_on[device] = torch.tensor(
                self.settings.visual_token_ids, device=device
            )
        image_mask = torch.isin(input_ids, self.caches.image_token_ids_on[device])
        if attention_mask is not None and attention_mask.dim() == 2:
            valid = attention_mask[:, -new:].bool()
        else:
            valid = torch.ones(batch, new, dtype=torch.bool, device=device)
        prefill = past_length == 0
        if prefill:
            # Whether every sample has an image is known after `_plan_forward`'s synchronisation.
            self.prompt = PromptState(Positions(image_mask, valid), self.next_prompt_options, False)
            self.next_prompt_options = {}
        else:
            seen = 0 if self.prompt is None else self.prompt.positions.image_mask.shape[1]
            if seen != past_length:
                raise RuntimeError(
                    f"{self.settings.intervention.name} state saw {seen} positions but the cache holds "
                    f"{past_length}: a decode step arrived without its prefill"
                )
            old = self.prompt.positions
            self.prompt.positions = Positions(
                torch.cat([old.image_mask, image_mask], dim=1), torch.cat([old.valid, valid], dim=1)
            )
        self.forward = self._plan_forward(new, prefill, devices | {device})

    def _plan_forward(self, new: int, prefill: bool, devices: frozenset[torch.device]) -> ForwardPlan:
        settings, positions = self.settings, self.prompt.positions
        eligible = settings.intervention.rows(positions, new, prefill)
        device = positions.image_mask.device
        if eligible is None:  # no row: the intervention leaves this forward alone
            kind = ForwardKind.PREFILL_CORRECTION if prefill else ForwardKind.DECODE_CORRECTION
            rows, row_valid = _no_rows(positions.image_mask.shape[0], device)
        elif not settings.fused or not prefill:
            # Every row of a decode step (or of the eager reference) is given, kept contiguous: the
            # Triton kernels index them flat.
            kind = (
                ForwardKind.WHOLE_ROWS
                if not settings.fused
                else settings.intervention.decode_kind(self.prompt.every_sample_has_visual)
            )
            rows = torch.arange(new, device=device).repeat(eligible.shape[0], 1)
            row_valid = eligible.contiguous()
        else:
            # The rows a sample may change first; as many columns as the sample with most. The one
            # synchronisation of a prompt also tells whether every sample has an image.
            kind = ForwardKind.PREFILL_CORRECTION
            with_visual = positions.image_mask.any(dim=1).sum()
            count, with_visual = torch.stack([eligible.sum(dim=1).max(), with_visual]).tolist()
            self.prompt.every_sample_has_visual = with_visual == eligible.shape[0]
            order = torch.argsort((~eligible).to(torch.int8), dim=1, stable=True)[:, :count]
            rows, row_valid = order.contiguous(), eligible.gather(1, order)
        on_device = {other: (rows.to(other), row_valid.to(other)) for other in devices}
        return ForwardPlan(kind, prefill, rows, row_valid, MappingProxyType(on_device))

    def record_layer_input(self, layer: int, hidden_states: torch.Tensor, device: torch.device) -> None:
        """At prefill, the intervention's plan of `layer`, built on `device` (the layer's own: with
        device_map="auto" the input arrives where the previous layer left it)."""
        prompt = self.prompt
        if not self.forward.prefill:
            return
        positions = Positions(*(tensor.to(device) for tensor in prompt.positions))
        intervention = self.settings.intervention
        hidden = hidden_states.to(device) if intervention.reads_hidden_states else None
        context = PromptContext(positions, hidden, prompt.options, prompt.shared)
        prompt.plans[layer] = plan = intervention.layer_plan(context)
        if self.settings.collect_diagnostics:
            prompt.records[layer] = intervention.layer_record(plan, positions)
            zeros = torch.zeros(positions.image_mask.shape[0], device=device)
            prompt.counters[layer] = Counters(zeros, zeros.clone())

    def acts_on(self, layer: int, key_length: int) -> bool:
        """Whether the intervention changes rows of `layer` in this forward. Not, for one that needs every
        key (VAR), where the layer's cache holds fewer keys than positions seen (a sliding-window cache
        dropped the oldest)."""
        prompt = self.prompt
        return (
            not self.suspended
            and layer in prompt.plans
            and self.forward.rows.shape[1] > 0
            and (
                not self.settings.intervention.needs_every_key
                or key_length >= prompt.positions.image_mask.shape[1]
            )
        )

    def layer_work(self, layer: int, output: torch.Tensor, call: LayerCall) -> LayerWork:
        """Everything one layer's compute path needs, on the layer's device."""
        rows, row_valid = self.forward.on_device[call.query.device]
        return LayerWork(
            output,
            call,
            rows,
            row_valid,
            self.prompt.plans[layer],
            self.prompt.positions.image_mask.shape[1] - call.key.shape[2],
            self.prompt.counters.get(layer),
            self.settings.options,
        )

    def layer_plan(self, layer: int) -> object | None:
        """The intervention's plan of `layer` for this prompt (VAR's: its sinks); None where it leaves
        the layer alone in this forward."""
        if self.prompt is None or not self.acts_on(
            layer, key_length=self.prompt.positions.image_mask.shape[1]
        ):
            return None
        return self.prompt.plans[layer]

    def eligible_rows(self) -> torch.Tensor:
        """Bool[B, T]: the rows the intervention may change in this forward (for attention maps)."""
        forward = self.forward
        eligible = torch.zeros_like(self.prompt.positions.image_mask)
        return eligible.scatter_(1, forward.rows.to(eligible.device), forward.row_valid.to(eligible.device))

    def diagnostics(self) -> list[dict]:
        """Per sample of the last prompt batch: per layer what the intervention's plan records (VAR:
        sinks), and over layers the (head, row) pairs changed and the attention mass moved."""
        if self.prompt is None:
            return []
        prompt = self.prompt
        layers = sorted(prompt.counters)
        records = {layer: {k: v.tolist() for k, v in prompt.records[layer].items()} for layer in layers}
        counts = {layer: [c.tolist() for c in prompt.counters[layer]] for layer in layers}
        visual_tokens = prompt.positions.image_mask.sum(dim=1).tolist()
        names = list(records[layers[0]]) if layers else []
        return [
            {"layers": layers}
            | {name: [int(records[layer][name][b]) for layer in layers] for name in names}
            | {
                "redistributed_rows": int(sum(counts[layer][0][b] for layer in layers)),
                "moved_mass": float(sum(counts[layer][1][b] for layer in layers)),
                "visual_tokens": int(visual_tokens[b]),
            }
            for b in range(len(visual_tokens))
        ]


def _no_rows(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(batch, 0, dtype=torch.long, device=device),
        torch.zeros(batch, 0, dtype=torch.bool, device=device),
    )
