"""Shared fixtures: tiny checkpoints with planted sinks and synthetic spatial data, built once per session."""

from pathlib import Path

import pytest

from lmms_var.testing import TINY_TAU, TinySpec, build_tiny_model, save_tiny_checkpoint
from lmms_var.testing.spatial_data import write_spatial_root

__all__ = ["TINY_SPEC", "TINY_TAU"]
TINY_SPEC = TinySpec()


@pytest.fixture(scope="session")
def tiny_model():
    """(model, processor) in float32, planted sinks in TINY_SPEC.sink_dims. Do not mutate."""
    return build_tiny_model(TINY_SPEC)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A saved tiny Qwen2.5-VL checkpoint folder (model + processor + tokenizer)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), TINY_SPEC)


@pytest.fixture(scope="session")
def spatial_root(tmp_path_factory) -> Path:
    """A synthetic spatial-reasoning data root (BLINK spatial sub-tasks and SAT-2)."""
    return write_spatial_root(tmp_path_factory.mktemp("spatial_root"))
