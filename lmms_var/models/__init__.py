"""lmms-eval models: one per backbone (`qwen2_5_vl_var`, ...), registered through one entry point.

setup.cfg's `lmms_eval.models` entry point names `manifests`, which lmms-eval calls while
`lmms_eval.models` initialises: it imports lmms-eval's registry there, on call, because importing
lmms-eval at module level would be circular whenever this package is imported first. The classes
themselves live in `lmms_var.models.classes`, imported only when lmms-eval resolves a class path.
"""

from lmms_var.backbones import BACKBONES, Backbone

CLASSES_MODULE = "lmms_var.models.classes"


def class_names(backbone: Backbone) -> dict[bool, str]:
    """{chat?: class name} of a backbone's VAR classes: `<upstream>_VAR`, and `<upstream>_VAR_Chat`
    where upstream has a chat class."""
    stem = backbone.lmms_eval.class_stem
    names = {False: f"{stem}_VAR"}
    if backbone.lmms_eval.chat_class:
        names[True] = f"{stem}_VAR_Chat"
    return names


def manifests() -> list:
    """lmms-eval `ModelManifest`s of every backbone's model (the entry point's payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    made = []
    for backbone in BACKBONES:
        paths = {chat: f"{CLASSES_MODULE}.{name}" for chat, name in class_names(backbone).items()}
        made.append(
            ModelManifest(
                model_id=backbone.lmms_eval.model_id,
                simple_class_path=paths[False],
                chat_class_path=paths.get(True),
            )
        )
    return made
