"""The backbone registry: lookup by model, config or model type; errors; what importing it costs."""

from types import SimpleNamespace

import pytest
import torch

from lmms_var.backbones import (
    BACKBONES,
    LMMS_EVAL_MODELS,
    UnsupportedModelError,
    backbone_for,
    backbone_for_config,
    backbone_for_model_type,
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
    # Backbones sharing a model id share its `LmmsEvalModel` (one lmms-eval model serves them all).
    assert len({spec.model_id for spec in LMMS_EVAL_MODELS}) == len(LMMS_EVAL_MODELS)


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


def test_the_entry_point_imports_neither_torch_transformers_nor_lmms_eval():
    """lmms-eval loads our entry point while it starts: the registry and manifests must stay light."""
    loaded = modules_after("import lmms_var.backbones, lmms_var.models")
    assert not {"torch", "transformers", "lmms_eval"} & loaded


def test_config_imports_nothing_else_from_the_package():
    loaded = modules_after("import lmms_var.config")
    assert {module for module in loaded if module.startswith("lmms_var")} == {"lmms_var", "lmms_var.config"}
