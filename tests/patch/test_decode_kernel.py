"""The Triton decode kernel against the PyTorch path: compiled on CUDA, interpreted on a CPU.

Triton decides at import whether it interprets, so without a GPU `test_under_triton_interpreter`
reruns this file in a subprocess with `TRITON_INTERPRET=1`, where the kernel runs on CPU tensors.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmms_var import enable_var
from lmms_var.core import plan_keys
from lmms_var.patch.attention import _fused_correction
from lmms_var.patch.state import LayerActivity
from tests.patch.test_enable_var import CONFIG

kernel = pytest.importorskip("lmms_var.patch.decode_kernel", reason="needs Triton")
RUNNABLE = kernel.INTERPRETED or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() and not kernel.INTERPRETED else "cpu"
needs_kernel = pytest.mark.skipif(not RUNNABLE, reason="run by test_under_triton_interpreter")


def decode_case(dtype: torch.dtype, padded: bool, seed: int = 0):
    """One decode step of 3 samples, GQA 6/2 heads, 90 keys of which the first 80 are the prompt's.

    Sample 0 has text and visual sinks, and its heads on key/value head 0 mostly look at the visual
    sinks (not image-centric); sample 1 has a visual sink and, if `padded`, 7 padding keys holding a
    text sink; sample 2 has text sinks only, so nothing of it may change.
    """
    generator = torch.Generator().manual_seed(seed)
    batch, heads, kv_heads, head_dim, keys, planned = 3, 6, 2, 48, 90, 80
    query = torch.randn(batch, 1, heads, head_dim, generator=generator).transpose(1, 2) * 2
    key = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    key[0, 0, [15, 40]] = 3 * query[0, :3, 0].mean(dim=0)
    image = torch.zeros(batch, planned, dtype=torch.bool)
    image[:, 10:70] = True
    sinks = torch.zeros(batch, planned, dtype=torch.bool)
    sinks[0, [0, 15, 40]] = True
    sinks[1, [3, 8, 20]] = True
    sinks[2, [0, 75]] = True
    plan = plan_keys(image, sinks, p=0.3, rho=0.6, summ=0.1)
    blocked = None
    if padded:
        blocked = (torch.arange(keys) < torch.tensor([0, 7, 0])[:, None])[:, None, None, :]
    output = torch.randn(batch, 1, heads, head_dim, generator=generator)
    cast = [t.to(DEVICE, dtype) for t in (output, query, key, value)]
    if blocked is not None:
        blocked = blocked.to(DEVICE)
    plan = type(plan)(*(t.to(DEVICE) for t in plan))
    row_valid = torch.ones(batch, 1, dtype=torch.bool, device=DEVICE)
    return (*cast, blocked, plan, row_valid, head_dim**-0.5)


def counters() -> LayerActivity:
    zeros = torch.zeros(3, device=DEVICE)
    return LayerActivity(zeros, zeros.clone(), zeros.clone(), zeros.clone())


@pytest.mark.skipif(RUNNABLE, reason="the kernel runs directly here")
def test_under_triton_interpreter():
    """Reruns this file with Triton's interpreter; every kernel test must pass there."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=os.environ | {"TRITON_INTERPRET": "1"},
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed, 1 skipped in" in result.stdout, "only this test may skip there: " + result.stdout[-2000:]


@needs_kernel
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_the_pytorch_path(dtype, padded):
    output, query, key, value, blocked, plan, row_valid, scaling = decode_case(dtype, padded)
    correction, selected, budget = _fused_correction(
        query, key, value, blocked, plan, row_valid, scaling=scaling, in_prefill=False
    )
    expected = output.clone().add_(correction.transpose(1, 2))
    corrected, activity = output.clone(), counters()
    kernel.add_decode_redistribution(
        corrected, query, key, value, blocked, plan, row_valid, scaling=scaling, activity=activity
    )
    assert selected[0].any() and not selected[0].all(), "sample 0 should mix selected and unselected heads"
    assert selected[1].any() and not selected[2].any()
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(corrected, expected, **tolerance)
    unselected = ~selected.transpose(1, 2)  # [B, 1, H], as the output's rows
    assert torch.equal(corrected[unselected], output[unselected]), "unselected rows are bit-identical"
    assert torch.equal(activity.redistributed_rows, selected.sum(dim=(1, 2)).float())
    torch.testing.assert_close(activity.moved_mass, (budget * selected).sum(dim=(1, 2)))


@needs_kernel
def test_rows_step_two_forbids_are_untouched():
    output, query, key, value, blocked, plan, row_valid, scaling = decode_case(torch.float32, False)
    corrected, activity = output.clone(), counters()
    kernel.add_decode_redistribution(
        corrected, query, key, value, blocked, plan, ~row_valid, scaling=scaling, activity=activity
    )
    assert torch.equal(corrected, output)
    assert not activity.redistributed_rows.any()


def test_more_than_one_query_row_is_rejected():
    output, query, key, value, blocked, plan, row_valid, scaling = decode_case(torch.float32, False)
    with pytest.raises(ValueError, match="one query row"):
        kernel.add_decode_redistribution(
            output,
            query.expand(-1, -1, 2, -1),
            key,
            value,
            blocked,
            plan,
            row_valid,
            scaling=scaling,
            activity=None,
        )


@needs_kernel
def test_generation_through_the_kernel_equals_the_pytorch_path(monkeypatch, tiny_model, padded_batch):
    """Model level: decode steps go through the kernel and give the PyTorch path's logits and diagnostics."""
    model = copy.deepcopy(tiny_model[0]).to(DEVICE)
    inputs = {key: value.to(DEVICE) for key, value in padded_batch.items()}
    calls = []
    launch = kernel.add_decode_redistribution
    monkeypatch.setattr(
        kernel,
        "add_decode_redistribution",
        lambda *args, **kwargs: calls.append(1) or launch(*args, **kwargs),
    )
    runs = []
    for decode_kernel in (True, False):
        with enable_var(model, CONFIG, diagnostics=True, decode_kernel=decode_kernel) as handle:
            out = model.generate(
                **inputs,
                max_new_tokens=3,
                min_new_tokens=3,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            runs.append((out, handle.diagnostics()))
    active_layers = len(CONFIG.active_layers(len(model.model.language_model.layers)))
    assert len(calls) == 2 * active_layers  # decode steps 2 and 3 (step 1 is the prefill)
    (kernel_out, kernel_report), (torch_out, torch_report) = runs
    assert torch.equal(kernel_out.sequences, torch_out.sequences)
    for kernel_step, torch_step in zip(kernel_out.logits, torch_out.logits, strict=True):
        torch.testing.assert_close(kernel_step, torch_step, atol=1e-4, rtol=0)
    for kernel_sample, torch_sample in zip(kernel_report, torch_report, strict=True):
        assert kernel_sample["redistributed_rows"] == torch_sample["redistributed_rows"]
        assert kernel_sample["moved_mass"] == pytest.approx(torch_sample["moved_mass"], rel=1e-5)
