"""Per-model, per-prompt VAR state: which positions are visual, valid, sinks; what VAR did.

One `VARState` belongs to one patched model. The outer-model pre-hook calls `start_forward` on every
forward: a forward with an empty cache is a prefill and resets everything, so nothing leaks from one
prompt to the next; a forward with a filled cache is a decode step and appends its new positions.
"""

from dataclasses import dataclass, field

import torch

from lmms_var.config import VARConfig
from lmms_var.core import find_sink_tokens


@dataclass
class LayerActivity:
    """What VAR did in one layer for each sample of the current batch (tensors of shape [B])."""

    visual_sinks: torch.Tensor
    text_sinks: torch.Tensor
    redistributed_rows: torch.Tensor
    moved_mass: torch.Tensor

    def add(self, rows: int, mass: float, sample: int) -> None:
        self.redistributed_rows[sample] += rows
        self.moved_mass[sample] += mass


@dataclass
class VARState:
    """Positions seen since the last prefill, per-layer sinks, and optional per-sample diagnostics."""

    config: VARConfig
    visual_token_ids: tuple[int, ...]
    active_layers: frozenset[int]
    base_implementation: str
    fused: bool = True
    collect_diagnostics: bool = False
    visual: torch.Tensor | None = None  # Bool[B, T]: image/video placeholder positions
    valid: torch.Tensor | None = None  # Bool[B, T]: non-padding positions
    in_prefill: bool = False
    sinks: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> Bool[B, T_prefill]
    activity: dict[int, LayerActivity] = field(default_factory=dict)

    def start_forward(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, past_length: int
    ) -> None:
        """Record the positions this forward adds; a forward with an empty cache starts a new prompt."""
        if input_ids is None:
            raise ValueError(
                "VAR needs `input_ids` to locate visual tokens; this forward passed only `inputs_embeds`"
            )
        batch, new = input_ids.shape
        visual = torch.isin(input_ids, torch.tensor(self.visual_token_ids, device=input_ids.device))
        if attention_mask is not None and attention_mask.dim() == 2:
            valid = attention_mask[:, -new:].bool()
        else:
            valid = torch.ones(batch, new, dtype=torch.bool, device=input_ids.device)
        self.in_prefill = past_length == 0
        if self.in_prefill:
            self.visual, self.valid = visual, valid
            self.sinks.clear()
            self.activity.clear()
        elif self.visual is None or self.visual.shape[1] != past_length:
            raise RuntimeError(
                f"VAR state saw {0 if self.visual is None else self.visual.shape[1]} positions but the cache holds "
                f"{past_length}: a decode step arrived without its prefill"
            )
        else:
            self.visual = torch.cat([self.visual, visual], dim=1)
            self.valid = torch.cat([self.valid, valid], dim=1)

    def record_sinks(self, layer: int, hidden_states: torch.Tensor) -> None:
        """Step 1 at prefill: sinks of `layer` from the residual stream entering it."""
        if not self.in_prefill or layer not in self.active_layers:
            return
        valid = self.valid.to(hidden_states.device)
        sinks = find_sink_tokens(hidden_states, self.config.sink_dims, self.config.tau, valid)
        self.sinks[layer] = sinks
        if self.collect_diagnostics:
            visual = self.visual.to(sinks.device)
            batch = sinks.shape[0]
            self.activity[layer] = LayerActivity(
                visual_sinks=(sinks & visual).sum(-1).cpu(),
                text_sinks=(sinks & ~visual).sum(-1).cpu(),
                redistributed_rows=torch.zeros(batch, dtype=torch.long),
                moved_mass=torch.zeros(batch, dtype=torch.float64),
            )

    def key_masks(
        self, layer: int, key_length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(visual, sink) Bool[B, K] over the keys of this call; generated tokens are never sinks."""
        sinks = self.sinks[layer].to(device)
        visual = self.visual.to(device)
        return _pad_to(visual, key_length), _pad_to(sinks, key_length)

    def query_mask(self, query_length: int, device: torch.device) -> torch.Tensor:
        """Step 2: Bool[B, Q] rows VAR may change: valid, non-visual, after the sample's first visual token."""
        visual = self.visual.to(device)
        seen_visual = visual.cumsum(dim=1) > 0
        eligible = seen_visual & ~visual & self.valid.to(device)
        return eligible[:, -query_length:]

    def acts_on(self, layer: int) -> bool:
        return layer in self.sinks and self.config.p < 1.0

    def diagnostics(self) -> list[dict]:
        """Per sample of the last batch: sinks per layer, rows x heads redistributed, attention mass moved."""
        if self.visual is None:
            return []
        layers = sorted(self.activity)
        return [
            {
                "layers": layers,
                "visual_sinks": [int(self.activity[layer].visual_sinks[b]) for layer in layers],
                "text_sinks": [int(self.activity[layer].text_sinks[b]) for layer in layers],
                "redistributed_rows": sum(
                    int(self.activity[layer].redistributed_rows[b]) for layer in layers
                ),
                "moved_mass": sum(float(self.activity[layer].moved_mass[b]) for layer in layers),
                "visual_tokens": int(self.visual[b].sum()),
            }
            for b in range(self.visual.shape[0])
        ]


def _pad_to(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Extend (or cut) a Bool[B, T] mask to `length` keys with False (static caches have spare slots)."""
    if mask.shape[1] >= length:
        return mask[:, :length]
    return torch.nn.functional.pad(mask, (0, length - mask.shape[1]), value=False)
