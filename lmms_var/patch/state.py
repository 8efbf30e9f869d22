"""Per-model, per-prompt VAR state: which positions are visual, valid, sinks; what VAR did.

One `VARState` belongs to one patched model. The outer-model pre-hook calls `start_forward` on every
forward: a forward with an empty cache is a prefill and resets everything, so nothing leaks from one
prompt to the next; a forward with a filled cache is a decode step and appends its new positions.
Everything layers share (the rows VAR may change, each layer's key plan) is computed here once
per forward, so the attention function does no bookkeeping and forces no device synchronisation.
"""

from dataclasses import dataclass, field

import torch

from lmms_var.config import VARConfig
from lmms_var.core import ImagePlan, KeyPlan, find_sink_tokens, plan_image, plan_layer
from lmms_var.patch.prefill import DEFAULT_BLOCK_ELEMENTS


@dataclass
class LayerActivity:
    """What VAR did in one layer, per sample (tensors of shape [B] on the layer's device)."""

    visual_sinks: torch.Tensor
    text_sinks: torch.Tensor
    redistributed_rows: torch.Tensor
    moved_mass: torch.Tensor


@dataclass(frozen=True)
class PromptSinks:
    """One prompt of the last prefill: its visual tokens, and the visual sinks found among them."""

    visual_tokens: int
    visual_sinks: int  # (layer, visual token) pairs detected as sinks, over the layers VAR acts on


@dataclass
class VARState:
    """Positions seen since the last prefill, per-layer sinks and key plans, optional diagnostics."""

    config: VARConfig
    visual_token_ids: tuple[int, ...]
    active_layers: frozenset[int]
    base_implementation: str
    fused: bool = True
    compile: bool = False
    use_triton: bool = True
    # Checked once per device and kernel specialisation (`row_kernels.RowsSpecialization`, ...).
    kernels_agree: dict[tuple[torch.device, object], bool] = field(default_factory=dict)
    # The most float32 values in one [B, H, rows, keys] block of the prefill rows' explicit work:
    # bounds VAR's extra memory whatever the prompt (tests set it small to cross block boundaries).
    block_elements: int = DEFAULT_BLOCK_ELEMENTS
    collect_diagnostics: bool = False
    visual: torch.Tensor | None = None  # Bool[B, T]: image/video placeholder positions
    valid: torch.Tensor | None = None  # Bool[B, T]: non-padding positions
    in_prefill: bool = False
    rows: torch.Tensor | None = None  # Long[B, R]: query rows (of this forward) VAR may change
    row_valid: torch.Tensor | None = None  # Bool[B, R]: false where a sample has fewer rows than R
    # Every query row of this forward is one VAR may change (a decode step whose samples all have
    # an image, or the eager reference): VAR computes them whole and the base kernel is not needed.
    whole_rows: bool = False
    every_sample_has_visual: bool = False  # in this prompt; decided at prefill
    sinks: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> Bool[B, T_prefill]
    plans: dict[int, KeyPlan] = field(default_factory=dict)  # layer -> its keys' VAR quantities
    activity: dict[int, LayerActivity] = field(default_factory=dict)
    # Per-device copies, so layers spread over devices (device_map="auto") each move data once.
    _rows_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _image_plans: dict[torch.device, ImagePlan] = field(default_factory=dict)  # this prompt's
    _visual_ids_on: dict[torch.device, torch.Tensor] = field(default_factory=dict)

    def start_forward(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, past_length: int
    ) -> None:
        """Record the positions this forward adds; a forward with an empty cache starts a new prompt."""
        if input_ids is None:
            raise ValueError(
                "VAR needs `input_ids` to locate visual tokens; this forward passed only `inputs_embeds`"
            )
        batch, new = input_ids.shape
        if input_ids.device not in self._visual_ids_on:
            self._visual_ids_on[input_ids.device] = torch.tensor(
                self.visual_token_ids, device=input_ids.device
            )
        visual = torch.isin(input_ids, self._visual_ids_on[input_ids.device])
        if attention_mask is not None and attention_mask.dim() == 2:
            valid = attention_mask[:, -new:].bool()
        else:
            valid = torch.ones(batch, new, dtype=torch.bool, device=input_ids.device)
        self.in_prefill = past_length == 0
        if self.in_prefill:
            self.visual, self.valid = visual, valid
            self.sinks.clear()
            self.plans.clear()
            self._image_plans.clear()
            self.activity.clear()
        elif self.visual is None or self.visual.shape[1] != past_length:
            seen = 0 if self.visual is None else self.visual.shape[1]
            raise RuntimeError(
                f"VAR state saw {seen} positions but the cache holds {past_length}: "
                "a decode step arrived without its prefill"
            )
        else:
            self.visual = torch.cat([self.visual, visual], dim=1)
            self.valid = torch.cat([self.valid, valid], dim=1)
        self._plan_rows(new)

    def _plan_rows(self, new: int) -> None:
        """Spec step 2: valid, non-visual rows after the sample's first visual token."""
        self._rows_on.clear()
        eligible = ((self.visual.cumsum(dim=1) > 0) & ~self.visual & self.valid)[:, -new:]
        if not self.fused or not self.in_prefill:
            # Every row of a decode step (or of the eager reference) goes through the explicit path.
            # Rows are kept contiguous, once per forward: the Triton kernels index them flat.
            self.rows = torch.arange(new, device=eligible.device).repeat(eligible.shape[0], 1)
            self.row_valid = eligible.contiguous()
            # A sample without an image has no row VAR may change: its rows keep the base kernel.
            self.whole_rows = not self.fused or self.every_sample_has_visual
            return
        # One synchronisation per prompt: the most rows a sample has, and whether every sample
        # has an image (then each decode step's rows are all VAR's).
        count, with_visual = torch.stack([eligible.sum(dim=1).max(), self.visual.any(dim=1).sum()]).tolist()
        self.every_sample_has_visual = with_visual == eligible.shape[0]
        self.whole_rows = False
        order = torch.argsort((~eligible).to(torch.int8), dim=1, stable=True)[:, :count]
        self.rows, self.row_valid = order.contiguous(), eligible.gather(1, order)

    def record_sinks(self, layer: int, hidden_states: torch.Tensor) -> None:
        """Step 1 at prefill: sinks of `layer` from the residual stream entering it."""
        if not self.in_prefill or layer not in self.active_layers:
            return
        config, device = self.config, hidden_states.device
        visual = self.visual.to(device)
        sinks = find_sink_tokens(hidden_states, config.sink_dims, config.tau, self.valid.to(device))
        self.sinks[layer] = sinks
        if device not in self._image_plans:  # what all layers' plans share, once per prompt
            self._image_plans[device] = plan_image(visual, p=config.p, rho=config.rho, summ=config.summ)
        self.plans[layer] = plan_layer(self._image_plans[device], sinks)
        if self.collect_diagnostics:
            zeros = torch.zeros(sinks.shape[0], device=device)
            self.activity[layer] = LayerActivity(
                visual_sinks=(sinks & visual).sum(-1),
                text_sinks=(sinks & ~visual).sum(-1),
                redistributed_rows=zeros.clone(),
                moved_mass=zeros.clone(),
            )

    def rows_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, row_valid) of this forward on `device`."""
        if device not in self._rows_on:
            self._rows_on[device] = (self.rows.to(device), self.row_valid.to(device))
        return self._rows_on[device]

    def layer_on(self, layer: int, device: torch.device) -> tuple[KeyPlan, LayerActivity | None]:
        """This layer's key plan and diagnostics counters, on the device its attention runs on.

        The sink hook sees a layer's input where the previous layer left it: with `device_map="auto"`,
        accelerate moves it to the layer's own device only after that hook. So move once, here.
        """
        plan = self.plans[layer]
        if plan.weights.device != device:
            plan = self.plans[layer] = KeyPlan(*(tensor.to(device) for tensor in plan))
            if layer in self.activity:
                counters = vars(self.activity[layer]).values()
                self.activity[layer] = LayerActivity(*(tensor.to(device) for tensor in counters))
        return plan, self.activity.get(layer)

    def acts_on(self, layer: int, key_length: int) -> bool:
        """Whether VAR changes this layer's rows in this forward. Not where the layer's cache holds
        fewer keys than positions seen (a sliding-window cache dropped the oldest): the keys'
        positions, which VAR's plans are indexed by, are then unknown here."""
        return (
            layer in self.plans
            and self.config.p < 1.0
            and self.rows.shape[1] > 0
            and key_length >= self.visual.shape[1]
        )

    def record_activity(self, layer: int, selected: torch.Tensor, budget: torch.Tensor) -> None:
        """Accumulate per-sample counts on the device (no synchronisation in the forward pass).

        `budget` [B, H, R] is the mass each row would move; only selected rows move it.
        """
        if self.collect_diagnostics:
            activity = self.activity[layer]
            activity.redistributed_rows += selected.sum(dim=(1, 2))
            activity.moved_mass += (budget * selected).sum(dim=(1, 2))

    def diagnostics(self) -> list[dict]:
        """Per sample of the last batch: sinks per layer, (head, row) pairs redistributed, mass moved."""
        if self.visual is None:
            return []
        layers = sorted(self.activity)
        per_layer = {
            layer: {k: v.tolist() for k, v in vars(self.activity[layer]).items()} for layer in layers
        }
        visual_tokens = self.visual.sum(dim=1).tolist()
        return [
            {
                "layers": layers,
                "visual_sinks": [int(per_layer[layer]["visual_sinks"][b]) for layer in layers],
                "text_sinks": [int(per_layer[layer]["text_sinks"][b]) for layer in layers],
                "redistributed_rows": int(sum(per_layer[layer]["redistributed_rows"][b] for layer in layers)),
                "moved_mass": float(sum(per_layer[layer]["moved_mass"][b] for layer in layers)),
                "visual_tokens": int(visual_tokens[b]),
            }
            for b in range(len(visual_tokens))
        ]

    def prefill_sinks(self) -> list[PromptSinks]:
        """Per prompt of the last prefill, from the sink masks kept for it; one synchronisation per
        layer, so call it after `generate` (once, say), never inside the forward."""
        if self.visual is None:
            return []
        visual_tokens = self.visual.sum(dim=1).cpu()
        visual_sinks = torch.zeros_like(visual_tokens)
        for sinks in self.sinks.values():
            visual = self.visual[:, : sinks.shape[1]].to(sinks.device)
            visual_sinks += (sinks & visual).sum(dim=1).cpu()
        return [
            PromptSinks(visual_tokens=tokens, visual_sinks=found)
            for tokens, found in zip(visual_tokens.tolist(), visual_sinks.tolist(), strict=True)
        ]
