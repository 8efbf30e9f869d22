"""Attention maps on a CUDA device give the CPU's numbers, for every family (skipped without a GPU).

There VAR runs its Triton kernels for the layer outputs while the maps read eager attention, so this
also checks that the eager switch for the two runs works with them.
"""

import copy

import numpy as np
import pytest
import torch

from lmms_var import enable_var
from lmms_var.attention_maps import MapSettings, attention_maps
from tests.attention_maps.test_capture import CONFIG, LAYERS, two_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def maps_on(model, processor, inputs):
    with enable_var(model, CONFIG) as handle:
        return attention_maps(handle, processor, inputs, MapSettings(layers=LAYERS, rows="all", heads="all"))


def test_maps_on_cuda_match_the_cpu(family_model):
    model, processor = family_model
    inputs = two_images(processor)
    on_cpu = maps_on(model, processor, inputs)
    on_gpu = maps_on(copy.deepcopy(model).to("cuda"), processor, inputs)
    assert on_gpu.selected_pairs == on_cpu.selected_pairs
    for gpu, cpu in zip(on_gpu.panels, on_cpu.panels, strict=True):
        assert gpu.sinks == cpu.sinks
        np.testing.assert_allclose(gpu.before, cpu.before, atol=1e-5)
        np.testing.assert_allclose(gpu.after, cpu.after, atol=1e-5)
        assert np.abs(gpu.image.astype(int) - cpu.image.astype(int)).max() <= 1


def test_maps_in_bfloat16_are_close_to_float32(family_model):
    """bfloat16 attention has 3 significant digits, and a token near tau may flip: masses stay close."""
    model, processor = family_model
    inputs = two_images(processor)
    on_cpu = maps_on(model, processor, inputs)
    in_bf16 = maps_on(copy.deepcopy(model).to("cuda", torch.bfloat16), processor, inputs)
    for low, full in zip(in_bf16.panels, on_cpu.panels, strict=True):
        for name in ("before", "after"):
            assert low.image_mass(getattr(low, name)) == pytest.approx(
                full.image_mass(getattr(full, name)), abs=0.02
            )
