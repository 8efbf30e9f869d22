"""Fixtures of the `lmms-var` command's tests."""

import pytest

from lmms_var.backbones import BACKBONES


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights fails the test: every bad input must be reported before (minutes for a 72B model)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("weights were loaded before the bad input was reported")

    for backbone in BACKBONES:
        monkeypatch.setattr(backbone.loader_class(), "from_pretrained", refuse)
