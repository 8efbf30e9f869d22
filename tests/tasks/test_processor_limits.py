"""The image-size check asks each family's own image processor, so it refuses exactly what one of them does."""

from dataclasses import replace

import pytest
from PIL import Image
from transformers import AutoImageProcessor

from lmms_var.backbones import backbone_for_model_type
from lmms_var.tasks import processor_limits
from lmms_var.tasks.processor_limits import processor_refusal
from tests.conftest import FAMILIES

SIZES = [(6000, 20), (20, 6000), (4020, 20), (4000, 20), (1, 1), (28, 28), (600, 400)]


def processor_raises(processor, width: int, height: int) -> bool:
    try:
        processor(images=Image.new("RGB", (width, height)))
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_family_refuses_exactly_what_its_own_processor_refuses(model_type, tiny_checkpoints):
    backbone = backbone_for_model_type(model_type)
    processor = AutoImageProcessor.from_pretrained(tiny_checkpoints(model_type))
    for width, height in SIZES:
        refusal = backbone.image_size_refusal and backbone.image_size_refusal(width, height)
        assert (refusal is not None) == processor_raises(processor, width, height), (width, height)


def test_a_record_is_refused_when_any_family_refuses_it_naming_which():
    refusal = processor_refusal(6000, 20)
    assert refusal == (
        "the Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5 image processors refuse its size 6000x20 "
        "(absolute aspect ratio must be smaller than 200, got 300.0)"
    )
    assert processor_refusal(600, 400) is None
    assert "0x5" in processor_refusal(0, 5)  # a size no image can have is refused, not raised


def test_families_refusing_for_different_reasons_are_each_named(monkeypatch):
    wide = replace(
        backbone_for_model_type("qwen2_vl"), image_size_refusal=lambda w, h: "too wide" if w > 100 else None
    )
    small = replace(
        backbone_for_model_type("llava"), image_size_refusal=lambda w, h: "too small" if h < 10 else None
    )
    monkeypatch.setattr(processor_limits, "BACKBONES", (wide, small))
    assert processor_refusal(50, 50) is None
    assert processor_refusal(200, 50) == "the Qwen2-VL image processor refuses its size 200x50 (too wide)"
    assert processor_refusal(200, 5) == (
        "the Qwen2-VL image processor refuses its size 200x5 (too wide); "
        "the LLaVA-1.5 image processor refuses its size 200x5 (too small)"
    )
