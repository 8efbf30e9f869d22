"""lmms-var: Visual Attention Redistribution (VAR) for Qwen2.5-VL, as an lmms-eval model."""

from lmms_var.config import VARConfig
from lmms_var.patch import VARHandle, enable_var

__all__ = ["VARConfig", "VARHandle", "enable_var"]
