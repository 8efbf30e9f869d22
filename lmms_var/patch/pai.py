"""PAI's attention amplification (INTERVENTIONS_SPEC.md section 2): `s + alpha * |s|` on visual keys.

In layers `start_layer .. end_layer - 1`, every head, the last row of every forward (the last prompt
row at prefill, the new token's row at each decode step). The logit refine, a second text-only
stream, is not in the attention function: it is a logits processor added in `generate`.
"""

import torch
from transformers import LogitsProcessorList

from lmms_var.config import PAIConfig
from lmms_var.core.score_change import amplified_score_change
from lmms_var.patch import row_local
from lmms_var.patch.intervention import ForwardKind, Positions, tensor_inputs
from lmms_var.patch.pai_refine import pai_refine


class PAI(row_local.ScoreChangeIntervention):
    """Attention amplification on the image (`PAIConfig`)."""

    name = "PAI"
    score_change = amplified_score_change
    identity_alpha = 0.0
    config: PAIConfig

    def rows(self, positions: Positions, new: int, prefill: bool) -> torch.Tensor:
        return row_local.last_rows(positions, new)

    def decode_kind(self, every_sample_has_visual: bool) -> ForwardKind:
        # A decode step's one row per sample is PAI's: where each sample has an image, computed whole.
        return ForwardKind.WHOLE_ROWS if every_sample_has_visual else ForwardKind.DECODE_CORRECTION

    def generate(self, handle, generate, *args, **kwargs):
        """Generation with the image-centric logit refine added (none where gamma is 1)."""
        refine = pai_refine(
            handle.model, tensor_inputs(kwargs), handle.tokenizer, self.config, handle.suspended
        )
        if refine is not None:
            kwargs["logits_processor"] = LogitsProcessorList(
                [*(kwargs.get("logits_processor") or ()), refine]
            )
        return generate(*args, **kwargs)
