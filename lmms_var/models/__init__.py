"""lmms-eval model `qwen2_5_vl_var`, registered through the `lmms_eval.models` entry point.

`MANIFEST` is built on first access (PEP 562 module `__getattr__`): lmms-eval loads entry points
while `lmms_eval.models` initialises, so importing lmms-eval here at module level would be circular
whenever our model module is imported first. The class paths are imported only when requested.
"""

from functools import cache

MODEL_ID = "qwen2_5_vl_var"
SIMPLE_CLASS_PATH = "lmms_var.models.qwen2_5_vl_var.Qwen2_5_VL_VAR"
CHAT_CLASS_PATH = "lmms_var.models.qwen2_5_vl_var.Qwen2_5_VL_VAR_Chat"


@cache
def _manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id=MODEL_ID, simple_class_path=SIMPLE_CLASS_PATH, chat_class_path=CHAT_CLASS_PATH
    )


def __getattr__(name: str):
    if name == "MANIFEST":
        return _manifest()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
