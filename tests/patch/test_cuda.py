"""The same exactness checks on a CUDA device, in float32 and bfloat16 (skipped without a GPU)."""

import copy

import pytest
import torch

from lmms_var import enable_var
from tests.patch.test_enable_var import CONFIG, logits, reference, valid_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("dtype", "atol", "options"),
    [
        (torch.float32, 1e-4, {}),  # the Triton kernels
        (torch.bfloat16, 5e-2, {}),
        (torch.float32, 1e-4, {"use_triton": False}),  # the PyTorch path
        (torch.float32, 1e-4, {"use_triton": False, "compile": True}),
    ],
)
def test_fused_equals_reference_on_cuda(family, family_model, family_batch, dtype, atol, options):
    model = copy.deepcopy(family_model[0]).to("cuda", dtype)
    inputs = {k: (v.to(dtype) if v.is_floating_point() else v).to("cuda") for k, v in family_batch.items()}
    base = logits(model, inputs)
    with reference(model, CONFIG, family, family_model[1], inputs):
        expected = logits(model, inputs).float()
    with enable_var(model, CONFIG, diagnostics=True, **options) as handle:
        patched = logits(model, inputs).float()
        assert all(sample["redistributed_rows"] > 0 for sample in handle.diagnostics())
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        kernels_used = list(handle.state.caches.kernels_agree.values())
    # Prefill corrects the base kernel's rows, decode writes whole rows: two kinds, each checked.
    assert kernels_used == ([] if options else [True, True]), (
        "the kernels ran (no fallback) exactly when asked"
    )
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    assert (patched - base.float()).abs().max() > 0
    for a, b in zip(valid_logits(inputs, patched), valid_logits(inputs, expected), strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


def test_layers_spread_over_devices_equal_one_device(tiny_model, padded_batch):
    """Decoder layers on two devices (as `device_map="auto"` spreads them) give the one-device result.

    With one GPU the second device is the CPU; accelerate's hooks move each layer's inputs, as
    they do between GPUs. Prefill, decode (kernel on CUDA, PyTorch on CPU) and diagnostics must agree.
    """
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    inputs = {key: value.to("cuda") for key, value in padded_batch.items()}
    options = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    options |= {"output_logits": True, "return_dict_in_generate": True}
    runs = []
    for spread in (False, True):
        model = copy.deepcopy(tiny_model[0]).to("cuda")
        if spread:
            text_model = model.model.language_model
            layers = text_model.layers
            for layer in layers[len(layers) // 2 :]:
                layer.to("cpu")
                add_hook_to_module(layer, AlignDevicesHook("cpu", skip_keys=["past_key_values", "cache"]))
            add_hook_to_module(text_model.norm, AlignDevicesHook("cuda"))
        with enable_var(model, CONFIG, diagnostics=True) as handle:
            runs.append((model.generate(**inputs, **options), handle.diagnostics()))
    (one, one_report), (spread, spread_report) = runs
    assert {layer.self_attn.q_proj.weight.device.type for layer in layers} == {"cuda", "cpu"}
    assert torch.equal(one.sequences, spread.sequences)
    for a, b in zip(one.logits, spread.logits, strict=True):
        torch.testing.assert_close(a, b.to(a.device), atol=1e-4, rtol=0)
    for a, b in zip(one_report, spread_report, strict=True):
        assert a["redistributed_rows"] == b["redistributed_rows"] > 0
        assert a["visual_sinks"] == b["visual_sinks"]
        assert a["moved_mass"] == pytest.approx(b["moved_mass"], rel=1e-4)


def test_var_never_synchronises_the_gpu(monkeypatch, tiny_model, padded_batch):
    """Sink finding and the attention correction only queue GPU work, at prefill and at decode.

    A synchronisation per layer would stall the host until the GPU drains its queue, 30+ times a forward.
    """
    from lmms_var.patch import attention
    from lmms_var.patch.state import InterventionState

    def without_synchronisation(function):
        def checked(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return function(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return checked

    model = copy.deepcopy(tiny_model[0]).to("cuda")
    inputs = {key: value.to("cuda") for key, value in padded_batch.items()}
    options = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False}
    for diagnostics in (False, True):
        with enable_var(model, CONFIG, diagnostics=diagnostics) as handle:
            # The kernels' first-use check compares results on the host, once per model: do it first.
            model.generate(**inputs, **options)
            assert set(handle.state.caches.kernels_agree.values()) == {True}
            with monkeypatch.context() as patched:
                patched.setattr(attention, "_apply", without_synchronisation(attention._apply))
                patched.setattr(
                    InterventionState,
                    "record_layer_input",
                    without_synchronisation(InterventionState.record_layer_input),
                )
                model.generate(**inputs, **options)
