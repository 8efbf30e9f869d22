"""The lmms-eval classes of every registered `LmmsEvalModel`, built from the registry on first request.

For a backbone whose upstream simple class is `Qwen2_5_VL`, this module serves `Qwen2_5_VL_VAR`
(`VARModel` + upstream's simple class) and, where upstream has a chat class, `Qwen2_5_VL_VAR_Chat`.
lmms-eval resolves a manifest's class path by importing this module and reading the attribute, so no
file per family is needed. Each class is built once and keeps its name and module, so it pickles.
"""

import importlib
from functools import cache

from lmms_var.backbones import BACKBONES, LMMS_EVAL_MODELS, LmmsEvalModel
from lmms_var.models import class_names
from lmms_var.models.var_model import VARModel


def _import(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def model_class(spec: LmmsEvalModel, chat: bool) -> type:
    """The VAR model class of `spec` on top of upstream's chat (or simple) class (built once)."""
    return _build(spec, chat)  # positional, so every spelling of the call shares one cache entry


@cache
def _build(spec: LmmsEvalModel, chat: bool) -> type:
    upstream = _import(spec.chat_class if chat else spec.simple_class)
    name = class_names(spec)[chat]
    kind = "chat (doc_to_messages)" if chat else "simple (doc_to_visual)"
    return type(
        name,
        (VARModel, upstream),
        {
            "lmms_eval": spec,
            "backbones": tuple(backbone for backbone in BACKBONES if backbone.lmms_eval is spec),
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"`{spec.model_id}` for {kind} tasks: lmms-eval's {spec.upstream_id} with VAR.",
        },
    )


def __getattr__(name: str) -> type:
    for spec in LMMS_EVAL_MODELS:
        for chat, class_name in class_names(spec).items():
            if class_name == name:
                return model_class(spec, chat)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
