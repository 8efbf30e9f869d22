"""ScalingVis and AdaptVis (INTERVENTIONS_SPEC.md section 1): the last prompt row's visual scores times alpha.

Only the row predicting the first answer token changes, in every layer and head, at prefill; decode
steps are untouched. AdaptVis takes alpha per sample from the plain model's first-token confidence,
measured by a plain pass over the prompt before each prefill and handed to it as a per-prompt option.
"""

from collections.abc import Mapping

import torch

from lmms_var.config import AdaptVisConfig, ScalingVisConfig
from lmms_var.core.score_change import scaled_score_change
from lmms_var.patch import row_local
from lmms_var.patch.adaptvis import adaptvis_alpha, first_token_confidence
from lmms_var.patch.intervention import Positions, PromptContext, tensor_inputs

ALPHA_OPTION = "alpha"  # AdaptVis's per-prompt option: Float32[B], chosen per sample


class ScalingVis(row_local.ScoreChangeIntervention):
    """Visual scores of the last prompt row scaled by `alpha` (`ScalingVisConfig`)."""

    name = "ScalingVis"
    score_change = scaled_score_change
    identity_alpha = 1.0
    config: ScalingVisConfig

    def rows(self, positions: Positions, new: int, prefill: bool) -> torch.Tensor | None:
        return row_local.last_rows(positions, new) if prefill else None


class AdaptVis(ScalingVis):
    """ScalingVis with alpha chosen per sample from the plain model's confidence (`AdaptVisConfig`)."""

    name = "AdaptVis"
    config: AdaptVisConfig

    def is_identity(self) -> bool:
        return self.config.alpha_low == self.config.alpha_high == 1.0

    def alpha(self, prompt: PromptContext) -> torch.Tensor:
        if ALPHA_OPTION not in prompt.options:
            raise RuntimeError(
                "AdaptVis found no alpha for this prompt: the model's forward chooses it (a forward of the "
                "decoder alone does not); or give it with handle.prompt_options(alpha=...)"
            )
        return prompt.options[ALPHA_OPTION].to(prompt.positions.image_mask.device, torch.float32)

    def prompt_options(self, handle, forward_kwargs: Mapping) -> dict:
        """Alpha per prompt from the plain model's first-token confidence: one plain prefill of the
        same inputs (no plain generation), before the prompt's own prefill."""
        confidence = first_token_confidence(
            handle.model, tensor_inputs(forward_kwargs), plain=handle.suspended
        )
        return {ALPHA_OPTION: adaptvis_alpha(confidence, self.config)}
