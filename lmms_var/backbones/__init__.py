"""The supported model families, one `Backbone` table per file, and their lookup.

Add a family: write `lmms_var/backbones/<family>.py` with one `Backbone` (copy the closest one) and
list it in `BACKBONES`; the README's "Adding a backbone" says what else (a tiny checkpoint, one line
in the test matrix).
"""

import os

from lmms_var.backbones.base import Backbone, LmmsEvalModel, VisualGrid
from lmms_var.backbones.gemma3 import GEMMA3
from lmms_var.backbones.internvl import INTERNVL
from lmms_var.backbones.llava import LLAVA
from lmms_var.backbones.llava_next import LLAVA_NEXT
from lmms_var.backbones.llava_onevision import LLAVA_ONEVISION
from lmms_var.backbones.qwen2_5_vl import QWEN2_5_VL
from lmms_var.backbones.qwen2_vl import QWEN2_VL
from lmms_var.backbones.qwen3_5 import QWEN3_5
from lmms_var.backbones.qwen3_vl import QWEN3_VL
from lmms_var.backbones.qwen3_vl_moe import QWEN3_VL_MOE
from lmms_var.backbones.text_only import PlaceholderTokens, text_only_inputs

BACKBONES: tuple[Backbone, ...] = (
    QWEN2_5_VL,
    QWEN2_VL,
    QWEN3_VL,
    LLAVA,
    INTERNVL,
    LLAVA_NEXT,
    LLAVA_ONEVISION,
    QWEN3_VL_MOE,
    GEMMA3,
    QWEN3_5,
)

__all__ = [
    "BACKBONES",
    "DTYPES",
    "Backbone",
    "LmmsEvalModel",
    "PlaceholderTokens",
    "UnsupportedModelError",
    "VisualGrid",
    "backbone_for",
    "backbone_for_config",
    "backbone_for_model_type",
    "checkpoint_config",
    "load_checkpoint",
    "text_only_inputs",
]
# Weight dtypes a checkpoint can be loaded in ("auto": the checkpoint's own).
DTYPES = ("auto", "bfloat16", "float16", "float32")


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


def checkpoint_config(pretrained: str, what: str, **hub_options):
    """The config of a checkpoint (a local folder or a Hub id), read alone, before any weights load.

    A `ValueError` starting with `what` (the argument as the caller names it: `pretrained=`,
    `--model `) says why it cannot be read: no such folder, a folder without a config.json, or the
    Hub's own answer. `hub_options` go to `from_pretrained` (e.g. `revision`).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # see base.py's docstring
    from transformers import AutoConfig

    if os.path.isdir(pretrained) and not os.path.isfile(os.path.join(pretrained, "config.json")):
        raise ValueError(f"{what}{pretrained}: a folder without a config.json, not a checkpoint")
    if not os.path.exists(pretrained):
        try:
            validate_repo_id(pretrained)
        except HFValidationError:
            raise ValueError(
                f"{what}{pretrained}: no such folder (give a checkpoint folder or a Hub model id such as "
                f"{BACKBONES[0].lmms_eval.default_pretrained})"
            ) from None
    try:
        return AutoConfig.from_pretrained(pretrained, **hub_options)
    except (OSError, ValueError) as error:
        raise ValueError(f"{what}{pretrained}: not a checkpoint folder or Hub model id ({error})") from None


def load_checkpoint(pretrained: str, backbone: Backbone, *, device: str, dtype: str):
    """(model, processor) of a checkpoint of `backbone`'s family, in eval mode, on `device` (a torch
    device or "auto", as `checks.device_or_default` gives it) in `dtype` (one of `DTYPES`).

    Check the config first (`checkpoint_config`, `backbone_for_config`), so that a bad path fails
    before any weights load; the backbone names the class that loads it.
    """
    import torch
    from transformers import AutoProcessor

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model = backbone.loader_class().from_pretrained(
        pretrained, dtype=dtype if dtype == "auto" else getattr(torch, dtype), device_map=device
    )
    return model.eval(), AutoProcessor.from_pretrained(pretrained)
