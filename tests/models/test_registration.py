"""Every backbone's model resolves through lmms-eval's own registry, so a broken plugin import fails here.

lmms-eval only logs a warning when an entry point fails to load and then reports the model as
unknown; resolving and importing every class path through its registry turns that into a failure.
"""

from importlib.metadata import entry_points

import pytest
from lmms_eval.api.model import lmms
from lmms_eval.models import MODEL_REGISTRY_V2, get_model

from lmms_var.backbones import BACKBONES
from lmms_var.models import manifests
from lmms_var.models.classes import Qwen2_5_VL_VAR, Qwen2_5_VL_VAR_Chat, model_class


def test_one_entry_point_registers_every_backbone():
    (entry,) = [ep for ep in entry_points(group="lmms_eval.models") if ep.value.startswith("lmms_var")]
    assert entry.load() is manifests
    model_ids = [manifest.model_id for manifest in manifests()]
    assert model_ids == list(dict.fromkeys(b.lmms_eval.model_id for b in BACKBONES))
    assert "qwen2_5_vl_var" in MODEL_REGISTRY_V2.list_canonical_model_ids()


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda backbone: backbone.model_type)
def test_registry_resolves_chat_by_default_and_simple_on_request(backbone):
    spec = backbone.lmms_eval
    chat, simple = get_model(spec.model_id), get_model(spec.model_id, force_simple=True)
    assert backbone in chat.backbones and backbone in simple.backbones
    assert issubclass(simple, lmms) and issubclass(chat, lmms)
    if spec.simple_class:
        assert simple is model_class(spec, chat=False) and simple.is_simple
    else:  # upstream has a chat class only (internvl_hf): lmms-eval uses it for simple requests too
        assert simple is chat
    if spec.chat_class:
        assert chat is model_class(spec, chat=True) and not chat.is_simple
    else:  # upstream has a simple class only: lmms-eval uses it for chat tasks too
        assert chat is simple


def test_qwen2_5_vl_var_keeps_its_class_names():
    assert get_model("qwen2_5_vl_var") is Qwen2_5_VL_VAR_Chat
    assert get_model("qwen2_5_vl_var", force_simple=True) is Qwen2_5_VL_VAR
