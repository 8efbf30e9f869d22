"""Whether the model's image processor takes an image of a given size: the one place that asks it.

Qwen2-VL's image processor (also Qwen2.5-VL's) resizes every image with `smart_resize`, which
refuses some sizes (an aspect ratio over 200, for one) by raising in the middle of generation, after
hours of work. Records are checked against the processor's own function and defaults, not a copy of
its rules, so the check follows transformers when they change.
"""

from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, smart_resize


def processor_refusal(width: int, height: int) -> str | None:
    """Why the Qwen2-VL image processor would refuse a `width` x `height` image, or None if it takes it."""
    processor = Qwen2VLImageProcessor
    try:
        smart_resize(
            height,
            width,
            factor=processor.patch_size * processor.merge_size,
            min_pixels=processor.size["shortest_edge"],
            max_pixels=processor.size["longest_edge"],
        )
    except (ValueError, ZeroDivisionError) as error:
        return f"the Qwen2-VL image processor refuses its size {width}x{height} ({error})"
    return None
