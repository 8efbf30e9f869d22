"""lmms-var: Visual Attention Redistribution (VAR) for vision-language models, as lmms-eval models.

The configs (`VARConfig`, `ScalingVisConfig`, `AdaptVisConfig`, `PAIConfig`) are light;
`enable_intervention`, `enable_var`, their handle and `config_from_model` import torch and
transformers, so they load on first use (keeps `lmms-var --help` and the lmms-eval entry point fast).
"""

from lmms_var.config import AdaptVisConfig, PAIConfig, ScalingVisConfig, VARConfig

__all__ = [
    "AdaptVisConfig",
    "InterventionHandle",
    "PAIConfig",
    "ScalingVisConfig",
    "VARConfig",
    "VARHandle",
    "config_from_model",
    "enable_intervention",
    "enable_var",
]
# Public names served on first use, and the module each comes from.
_LAZY = {
    "InterventionHandle": "lmms_var.patch",
    "VARHandle": "lmms_var.patch",
    "enable_intervention": "lmms_var.patch",
    "enable_var": "lmms_var.patch",
    "config_from_model": "lmms_var.sink_dims.auto",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmms_var' has no attribute {name!r}")
