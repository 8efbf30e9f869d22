"""lmms-eval models: one per `LmmsEvalModel` (`qwen2_5_vl_var`, ...; backbones may share one), registered through one entry point.

setup.cfg's `lmms_eval.models` entry point names `manifests`, which lmms-eval calls while
`lmms_eval.models` initialises: it imports lmms-eval's registry there, on call, because importing
lmms-eval at module level would be circular whenever this package is imported first. The classes
themselves live in `lmms_var.models.classes`, imported only when lmms-eval resolves a class path.
"""

from lmms_var.backbones import LMMS_EVAL_MODELS, LmmsEvalModel

CLASSES_MODULE = "lmms_var.models.classes"


def class_names(spec: LmmsEvalModel) -> dict[bool, str]:
    """{chat?: class name} of a model's VAR classes: `<upstream>_VAR`, and `<upstream>_VAR_Chat`
    where upstream has a chat class."""
    stem = spec.class_stem
    names = {False: f"{stem}_VAR"}
    if spec.chat_class:
        names[True] = f"{stem}_VAR_Chat"
    return names


def manifests() -> list:
    """lmms-eval `ModelManifest`s of our models, one per `LmmsEvalModel` (the entry point's payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    made = []
    for spec in LMMS_EVAL_MODELS:
        paths = {chat: f"{CLASSES_MODULE}.{name}" for chat, name in class_names(spec).items()}
        made.append(
            ModelManifest(
                model_id=spec.model_id,
                simple_class_path=paths[False],
                chat_class_path=paths.get(True),
            )
        )
    return made
