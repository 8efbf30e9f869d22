"""lmms-var: Visual Attention Redistribution (VAR) for Qwen2.5-VL, as an lmms-eval model.

`VARConfig` is light; `enable_var` and `VARHandle` import torch and transformers, so they load on
first use (keeps `lmms-var --help` and the lmms-eval entry point fast).
"""

from lmms_var.config import VARConfig

__all__ = ["VARConfig", "VARHandle", "enable_var"]


def __getattr__(name: str):
    if name in ("VARHandle", "enable_var"):
        from lmms_var import patch

        return getattr(patch, name)
    raise AttributeError(f"module 'lmms_var' has no attribute {name!r}")
