"""lmms-eval models: one per backbone (`qwen2_5_vl_var`, ...), registered through one entry point.

setup.cfg's `lmms_eval.models` entry point names `manifests`, which lmms-eval calls while
`lmms_eval.models` initialises: it imports lmms-eval's registry there, on call, because importing
lmms-eval at module level would be circular whenever this package is imported first. The classes
themselves live in `lmms_var.models.classes`, imported only when lmms-eval resolves a class path.
"""

from lmms_var.backbones import BACKBONES, Backbone, LmmsEvalModel

CLASSES_MODULE = "lmms_var.models.classes"
# lmms-eval's models, each once (llava_hf serves three backbones), in the order of `BACKBONES`.
LMMS_EVAL_MODELS: tuple[LmmsEvalModel, ...] = tuple(dict.fromkeys(b.lmms_eval for b in BACKBONES))


def served_backbones(spec: LmmsEvalModel) -> tuple[Backbone, ...]:
    """The backbones whose checkpoints lmms-eval's model `spec` loads."""
    return tuple(backbone for backbone in BACKBONES if backbone.lmms_eval is spec)


def class_names(spec: LmmsEvalModel) -> dict[bool, str]:
    """{chat?: class name} of the VAR classes of an lmms-eval model: `<upstream>_VAR` where upstream
    has a simple class, `<upstream>_VAR_Chat` where it has a chat class."""
    names = {}
    if spec.simple_class:
        names[False] = f"{spec.class_stem}_VAR"
    if spec.chat_class:
        names[True] = f"{spec.class_stem}_VAR_Chat"
    return names


def manifests() -> list:
    """lmms-eval `ModelManifest`s of every backbone's model (the entry point's payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    made = []
    for spec in LMMS_EVAL_MODELS:
        paths = {chat: f"{CLASSES_MODULE}.{name}" for chat, name in class_names(spec).items()}
        made.append(
            ModelManifest(
                model_id=spec.model_id,
                simple_class_path=paths.get(False),
                chat_class_path=paths.get(True),
            )
        )
    return made
