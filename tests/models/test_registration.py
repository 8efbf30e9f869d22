"""`qwen2_5_vl_var` resolves through lmms-eval's own registry, so a broken plugin import fails here.

lmms-eval only logs a warning when an entry point fails to load and then reports the model as
unknown; resolving and importing both class paths through its registry turns that into a failure.
"""

from importlib.metadata import entry_points

from lmms_eval.api.model import lmms
from lmms_eval.models import MODEL_REGISTRY_V2, get_model

from lmms_var.models import MANIFEST, MODEL_ID
from lmms_var.models.qwen2_5_vl_var import Qwen2_5_VL_VAR, Qwen2_5_VL_VAR_Chat


def test_entry_point_payload_is_the_manifest():
    (entry,) = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == MODEL_ID]
    assert entry.load() is MANIFEST


def test_registry_resolves_chat_by_default_and_simple_on_request():
    assert MODEL_REGISTRY_V2.get_manifest(MODEL_ID) == MANIFEST
    chat, simple = get_model(MODEL_ID), get_model(MODEL_ID, force_simple=True)
    assert chat is Qwen2_5_VL_VAR_Chat and simple is Qwen2_5_VL_VAR
    assert issubclass(chat, lmms) and (chat.is_simple, simple.is_simple) == (False, True)
