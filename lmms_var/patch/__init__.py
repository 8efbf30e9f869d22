"""Attach the VAR core to a Hugging Face model: attention registry, forward hooks, per-model state."""

from lmms_var.patch.enable import VARHandle, enable_var
from lmms_var.patch.state import PromptSinks, VARState

__all__ = ["PromptSinks", "VARHandle", "VARState", "enable_var"]
