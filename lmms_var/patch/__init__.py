"""Attach an intervention (VAR, ScalingVis, AdaptVis, PAI) to a Hugging Face model: attention
registry, forward hooks, per-model state."""

from lmms_var.patch.enable import InterventionHandle, VARHandle, enable_intervention, enable_var
from lmms_var.patch.state import InterventionState
from lmms_var.patch.var import PromptSinks

__all__ = [
    "InterventionHandle",
    "InterventionState",
    "PromptSinks",
    "VARHandle",
    "enable_intervention",
    "enable_var",
]
