"""Every backbone's model resolves through lmms-eval's own registry, so a broken plugin import fails here.

lmms-eval only logs a warning when an entry point fails to load and then reports the model as
unknown; resolving and importing every class path through its registry turns that into a failure.
"""

from importlib.metadata import entry_points

import pytest
from lmms_eval.api.model import lmms
from lmms_eval.models import MODEL_REGISTRY_V2, get_model

from lmms_var.backbones import BACKBONES, LMMS_EVAL_MODELS
from lmms_var.models import manifests
from lmms_var.models.classes import Qwen2_5_VL_VAR, Qwen2_5_VL_VAR_Chat, model_class


def test_one_entry_point_registers_every_backbone():
    (entry,) = [ep for ep in entry_points(group="lmms_eval.models") if ep.value.startswith("lmms_var")]
    assert entry.load() is manifests
    assert [manifest.model_id for manifest in manifests()] == [spec.model_id for spec in LMMS_EVAL_MODELS]
    assert {spec.model_id for spec in LMMS_EVAL_MODELS} == {b.lmms_eval.model_id for b in BACKBONES}
    assert "qwen2_5_vl_var" in MODEL_REGISTRY_V2.list_canonical_model_ids()


@pytest.mark.parametrize("backbone", BACKBONES, ids=lambda backbone: backbone.model_type)
def test_registry_resolves_chat_by_default_and_simple_on_request(backbone):
    model_id = backbone.lmms_eval.model_id
    chat, simple = get_model(model_id), get_model(model_id, force_simple=True)
    assert simple is model_class(backbone.lmms_eval, chat=False) and backbone in simple.backbones
    assert issubclass(simple, lmms) and simple.is_simple
    if backbone.lmms_eval.chat_class:
        assert chat is model_class(backbone.lmms_eval, chat=True) and not chat.is_simple
    else:  # upstream has a simple class only: lmms-eval uses it for chat tasks too
        assert chat is simple


def test_qwen2_5_vl_var_keeps_its_class_names():
    assert get_model("qwen2_5_vl_var") is Qwen2_5_VL_VAR_Chat
    assert get_model("qwen2_5_vl_var", force_simple=True) is Qwen2_5_VL_VAR
