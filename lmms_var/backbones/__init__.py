"""The supported model families, one `Backbone` table per file, and their lookup.

Add a family: write `lmms_var/backbones/<family>.py` with one `Backbone` (copy the closest one) and
list it in `BACKBONES`; the README's "Adding a backbone" says what else (a tiny checkpoint, one line
in the test matrix).
"""

from lmms_var.backbones.base import Backbone, LmmsEvalModel, VisualGrid
from lmms_var.backbones.llava import LLAVA
from lmms_var.backbones.qwen2_5_vl import QWEN2_5_VL
from lmms_var.backbones.qwen2_vl import QWEN2_VL
from lmms_var.backbones.qwen3_vl import QWEN3_VL

BACKBONES: tuple[Backbone, ...] = (QWEN2_5_VL, QWEN2_VL, QWEN3_VL, LLAVA)

__all__ = [
    "BACKBONES",
    "Backbone",
    "LmmsEvalModel",
    "UnsupportedModelError",
    "VisualGrid",
    "backbone_for",
    "backbone_for_config",
    "backbone_for_model_type",
]


class UnsupportedModelError(ValueError):
    """A model of a family VAR has no `Backbone` for; the message lists the supported ones."""

    def __init__(self, model_type: object, described_as: str = "") -> None:
        supported = ", ".join(f"{backbone.model_type} ({backbone.family})" for backbone in BACKBONES)
        what = f" ({described_as})" if described_as else ""
        super().__init__(f"VAR supports model types {supported}; got {model_type!r}{what}")
        self.model_type = model_type


def backbone_for_model_type(model_type: object, described_as: str = "") -> Backbone:
    """The backbone of a transformers `model_type`; `described_as` names the model in the error."""
    for backbone in BACKBONES:
        if backbone.model_type == model_type:
            return backbone
    raise UnsupportedModelError(model_type, described_as)


def backbone_for_config(config) -> Backbone:
    """The backbone of a model config (read before any weights are loaded)."""
    return backbone_for_model_type(getattr(config, "model_type", None), type(config).__name__)


def backbone_for(model) -> Backbone:
    """The backbone of a loaded model (a `...ForConditionalGeneration` or its inner multimodal module)."""
    config = getattr(model, "config", None)
    return backbone_for_model_type(getattr(config, "model_type", None), type(model).__name__)
