"""Every image mode reaches the model as the picture a person sees, not as `convert("RGB")` leaves it."""

import json

import numpy as np
import pytest
from lmms_eval.tasks.blink.utils import blink_doc_to_visual as lmms_eval_doc_to_visual
from PIL import Image

from lmms_var.tasks import ENV_DATA_ROOT, hooks
from lmms_var.tasks.images import to_rgb
from lmms_var.testing.images import IMAGE_MODES, picture_in_mode, random_image

# Converting to and from YCbCr and HSV rounds each channel, by a few levels at most.
ROUNDING = {"YCbCr": 3, "HSV": 6}


def _largest_difference(image: Image.Image, expected: Image.Image) -> int:
    return int(np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int)).max())


@pytest.mark.parametrize("mode", IMAGE_MODES)
def test_each_mode_becomes_the_picture_a_viewer_shows(mode):
    stored, shown = picture_in_mode(mode)
    converted = to_rgb(stored)
    assert converted.mode == "RGB" and converted.size == stored.size
    assert _largest_difference(converted, shown) <= ROUNDING.get(mode, 0)


def test_rgb_images_pass_through_untouched():
    image = random_image(3)
    assert to_rgb(image) is image


def _root_with_images(root, images: dict[str, Image.Image]) -> None:
    """A spatial root whose Counting records each hold one of `images`, saved as PNG."""
    folder = root / "spatial_reasoning" / "blink"
    (folder / "images").mkdir(parents=True)
    records = []
    for name, image in images.items():
        image.save(folder / "images" / f"{name}.png")
        question = "<image>\nHow many?\n(A) one\n(B) two"
        records.append(
            {
                "id": name,
                "sub_task": "Counting",
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "A"}],
                "image": f"blink/images/{name}.png",
            }
        )
    (folder / "blink_validation.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def test_sixteen_bit_and_transparent_pngs_reach_the_model_as_seen(tmp_path, monkeypatch):
    modes = ("I;16", "RGBA", "LA", "P+transparency")
    pictures = {mode: picture_in_mode(mode) for mode in modes}
    _root_with_images(tmp_path, {mode.replace("+", "_"): stored for mode, (stored, _) in pictures.items()})
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path))
    docs = hooks.spatial_blink_counting_docs(placeholder=None)
    for doc, (mode, (_, shown)) in zip(docs, pictures.items(), strict=True):
        [visual] = hooks.blink_doc_to_visual(doc)
        assert _largest_difference(visual, shown) == 0, mode
        [message] = hooks.blink_doc_to_messages(doc, {"pre_prompt": "", "post_prompt": ""})
        assert _largest_difference(message["content"][0]["url"], shown) == 0, mode
        # lmms-eval's own conversion shows a different picture: a white 16-bit ramp, black transparency.
        [upstream] = lmms_eval_doc_to_visual(doc)
        assert _largest_difference(upstream, shown) > 200, mode
