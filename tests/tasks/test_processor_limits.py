"""The image-size check asks the model's own image processor, so it refuses exactly what the processor does."""

import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from lmms_var.tasks.processor_limits import processor_refusal

SIZES = [(6000, 20), (20, 6000), (4020, 20), (4000, 20), (1, 1), (28, 28), (600, 400)]


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_refused_exactly_when_the_processor_raises(width, height):
    try:
        Qwen2VLImageProcessor()(images=Image.new("RGB", (width, height)))
        processor_raises = False
    except ValueError:
        processor_raises = True
    refusal = processor_refusal(width, height)
    assert (refusal is not None) == processor_raises
    if refusal is not None:
        assert f"{width}x{height}" in refusal and "aspect ratio" in refusal


def test_a_size_no_image_can_have_is_refused_not_raised():
    assert "0x5" in processor_refusal(0, 5)
