"""The backbone registry: lookup by model, config or model type; errors; what importing it costs."""

from types import SimpleNamespace

import pytest
import torch

from lmms_var.backbones import (
    BACKBONES,
    UnsupportedModelError,
    backbone_for,
    backbone_for_config,
    backbone_for_model_type,
    load_checkpoint,
)
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.conftest import FAMILIES, modules_after


def test_every_backbone_is_found_by_its_model_type_config_and_model():
    for backbone in BACKBONES:
        config = SimpleNamespace(model_type=backbone.model_type)
        assert backbone_for_model_type(backbone.model_type) is backbone
        assert backbone_for_config(config) is backbone
        assert backbone_for(SimpleNamespace(config=config)) is backbone
    assert len({backbone.model_type for backbone in BACKBONES}) == len(BACKBONES)
    # One lmms-eval model may serve several backbones (llava_hf), but a model id names one model.
    models = {backbone.lmms_eval for backbone in BACKBONES}
    assert len({spec.model_id for spec in models}) == len(models)


def test_every_backbone_has_a_tiny_checkpoint_in_the_test_matrix():
    supported = sorted(backbone.model_type for backbone in BACKBONES)
    assert sorted(TINY_FAMILIES) == supported and sorted(FAMILIES) == supported


def test_an_unsupported_model_names_every_supported_family():
    with pytest.raises(UnsupportedModelError) as error:
        backbone_for(torch.nn.Linear(2, 2))
    message = str(error.value)
    assert message.startswith("VAR supports model types ") and "got None (Linear)" in message
    for backbone in BACKBONES:
        assert f"{backbone.model_type} ({backbone.family})" in message
    with pytest.raises(UnsupportedModelError, match=r"got 'llama' \(LlamaConfig\)"):
        backbone_for_config(type("LlamaConfig", (), {"model_type": "llama"})())


def test_a_checkpoint_loads_in_eval_mode_in_the_dtype_asked(tiny_checkpoint):
    backbone = backbone_for_model_type("qwen2_5_vl")
    model, processor = load_checkpoint(str(tiny_checkpoint), backbone, device="cpu", dtype="bfloat16")
    assert isinstance(model, backbone.loader_class()) and not model.training
    assert model.dtype == torch.bfloat16 and processor.image_processor is not None


def test_a_bad_dtype_is_named_before_the_weights_load(tiny_checkpoint, no_weights):
    with pytest.raises(
        ValueError, match=r"^dtype must be one of auto, bfloat16, float16, float32, got 'fp8'$"
    ):
        load_checkpoint(
            str(tiny_checkpoint), backbone_for_model_type("qwen2_5_vl"), device="cpu", dtype="fp8"
        )


def test_the_entry_point_imports_neither_torch_transformers_nor_lmms_eval():
    """lmms-eval loads our entry point while it starts: the registry and manifests must stay light."""
    loaded = modules_after("import lmms_var.backbones, lmms_var.models")
    assert not {"torch", "transformers", "lmms_eval"} & loaded


def test_config_imports_nothing_else_from_the_package():
    loaded = modules_after("import lmms_var.config")
    assert {module for module in loaded if module.startswith("lmms_var")} == {"lmms_var", "lmms_var.config"}
