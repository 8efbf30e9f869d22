"""The Triton row kernels against the PyTorch path: compiled on CUDA, interpreted on a CPU.

Triton decides at import whether it interprets, so without a GPU `test_under_triton_interpreter`
reruns this file in a subprocess with `TRITON_INTERPRET=1`, where the kernels run on CPU tensors.
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
from lmms_var.patch.attention import _blocked_keys, _explicit_attention, _fused_rows, _times_values
from lmms_var.patch.state import LayerActivity
from tests.patch.test_enable_var import CONFIG

kernels = pytest.importorskip("lmms_var.patch.row_kernels", reason="needs Triton")
RUNNABLE = kernels.INTERPRETED or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() and not kernels.INTERPRETED else "cpu"
needs_kernels = pytest.mark.skipif(not RUNNABLE, reason="run by test_under_triton_interpreter")
PROMPT = 40  # keys 5..29 are visual, 30..39 the text rows VAR may change at prefill
PADDING = (0, 4, 0)  # left padding per sample


def attention_case(dtype: torch.dtype, decode: bool, padded: bool, seed: int = 0) -> dict:
    """A layer's attention inputs for 3 samples, GQA 6/2 heads, at prefill (10 rows) or at decode.

    Sample 0 has text and visual sinks, and the heads on key/value head 0 mostly look at its
    visual sinks (not image-centric); sample 1 has a visual sink and, if `padded`, 4 padding
    positions holding a text sink, and one row fewer; sample 2 has text sinks only.
    """
    generator = torch.Generator().manual_seed(seed)
    batch, heads, kv_heads, head_dim = 3, 6, 2, 48
    keys = PROMPT + 1 if decode else PROMPT
    queries = 1 if decode else PROMPT
    # Laid out [B, Q, H, d] and transposed, as Hugging Face attention modules pass it.
    query = torch.randn(batch, queries, heads, head_dim, generator=generator).transpose(1, 2) * 2
    key = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    value = torch.randn(batch, kv_heads, keys, head_dim, generator=generator)
    direction = torch.randn(head_dim, generator=generator)
    query[0, :3] += direction  # these heads share key/value head 0, whose visual sinks point that way
    key[0, 0, [7, 20]] = 3 * direction
    image = torch.zeros(batch, PROMPT, dtype=torch.bool)
    image[:, 5:30] = True
    sinks = torch.zeros(batch, PROMPT, dtype=torch.bool)
    sinks[0, [0, 7, 20]] = True
    sinks[1, [2, 4, 10]] = True
    sinks[2, [0, 35]] = True
    if decode:
        rows = torch.zeros(batch, 1, dtype=torch.long)
        row_valid = torch.ones(batch, 1, dtype=torch.bool)
    else:
        rows = torch.arange(30, 40).repeat(batch, 1)
        row_valid = torch.ones(batch, 10, dtype=torch.bool)
        row_valid[1, -1] = False
    mask = None
    if padded:
        visible = torch.arange(keys)[None, :] >= torch.tensor(PADDING)[:, None]
        causal = torch.arange(keys)[None, :] <= torch.arange(keys - queries, keys)[:, None]
        mask = (visible[:, None, None, :] & causal[None, None]).to(DEVICE)
    tensors = {
        "output": torch.randn(batch, queries, heads, head_dim, generator=generator),
        "query": query,
        "key": key,
        "value": value,
    }
    case = {name: tensor.to(DEVICE, dtype) for name, tensor in tensors.items()}
    plan = plan_keys(image, sinks, p=0.3, rho=0.6, summ=0.1)
    case["plan"] = type(plan)(*(tensor.to(DEVICE) for tensor in plan))
    case["rows"], case["row_valid"] = rows.to(DEVICE), row_valid.to(DEVICE)
    case["mask"], case["scaling"] = mask, head_dim**-0.5
    return case


def pytorch_path(case: dict, whole_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The corrected (or, `whole_rows`, written) output, selection and budgets of `attention`'s PyTorch path."""
    query, rows, output = case["query"], case["rows"], case["output"]
    heads, query_length, head_dim = query.shape[1:]
    rows_query = query.gather(2, rows[:, None, :, None].expand(-1, heads, -1, head_dim))
    blocked = _blocked_keys(case["mask"], rows, query_length, case["key"].shape[2])
    computed, selected, budget = _fused_rows(
        rows_query,
        case["key"],
        case["value"],
        blocked,
        case["plan"],
        case["row_valid"],
        scaling=case["scaling"],
        in_prefill=query_length > 1,
        whole_rows=whole_rows,
    )
    if whole_rows:
        return computed.transpose(1, 2).to(output.dtype), selected, budget
    index = rows[:, :, None, None].expand(-1, -1, heads, head_dim)
    corrected = output.clone().scatter_add_(1, index, computed.transpose(1, 2).to(output.dtype))
    return corrected, selected, budget


def plain_attention(case: dict) -> torch.Tensor:
    """softmax(q k^T) V [B, Q, H, d] of every query row in float32: what a base kernel computes."""
    query = case["query"]
    blocked = _blocked_keys(case["mask"], case["rows"], query.shape[2], case["key"].shape[2])
    attn = _explicit_attention(query, case["key"], blocked, case["scaling"], may_be_empty=True)
    return _times_values(attn, case["value"]).transpose(1, 2)


def through_kernels(case: dict, row_valid: torch.Tensor | None = None, **options):
    """The corrected (or written) output and the diagnostics counters from `redistribute_rows`."""
    corrected = case["output"].clone()
    zeros = torch.zeros(3, device=DEVICE)
    activity = LayerActivity(zeros, zeros.clone(), zeros.clone(), zeros.clone())
    blocked = None
    if case["mask"] is not None:
        blocked = _blocked_keys(case["mask"], case["rows"], case["query"].shape[2], case["key"].shape[2])
    kernels.redistribute_rows(
        corrected,
        case["query"],
        case["key"],
        case["value"],
        blocked,
        case["plan"],
        case["rows"],
        case["row_valid"] if row_valid is None else row_valid,
        scaling=case["scaling"],
        activity=activity,
        **options,
    )
    return corrected, activity


@pytest.mark.skipif(RUNNABLE, reason="the kernels run directly here")
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


@needs_kernels
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_kernels_equal_the_pytorch_path(dtype, decode, padded):
    check_against_the_pytorch_path(dtype, decode, padded)


@needs_kernels
@pytest.mark.parametrize("decode", [False, True], ids=["prefill", "decode"])
@pytest.mark.parametrize("chunks", [1, 3, 2], ids=["3 tiles in 1 chunk", "1 tile per chunk", "uneven"])
def test_rows_split_into_tiles_and_chunks_merge_exactly(decode, chunks):
    check_against_the_pytorch_path(torch.float32, decode, padded=True, block_k=16, chunks=chunks)


def check_against_the_pytorch_path(dtype, decode: bool, padded: bool, **tiling) -> None:
    case = attention_case(dtype, decode, padded)
    expected, selected, budget = pytorch_path(case)
    corrected, activity = through_kernels(case, **tiling)
    assert selected[0].any() and not selected[0].all(), "sample 0 should mix selected and unselected heads"
    assert selected[1].any() and not selected[2].any()
    # bfloat16: the PyTorch path rounds the correction before adding it, the kernels after.
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-3, "rtol": 2e-2}
    torch.testing.assert_close(corrected, expected, **tolerance)
    touched = torch.zeros(case["output"].shape[:3], dtype=torch.bool, device=DEVICE)  # [B, Q, H]
    touched.scatter_(1, case["rows"][..., None].expand(-1, -1, selected.shape[1]), selected.transpose(1, 2))
    assert torch.equal(corrected[~touched], case["output"][~touched]), "untouched rows stay bit-identical"
    check_activity(activity, selected, budget)


def check_activity(activity: LayerActivity, selected: torch.Tensor, budget: torch.Tensor) -> None:
    assert torch.equal(activity.redistributed_rows, selected.sum(dim=(1, 2)).float())
    torch.testing.assert_close(activity.moved_mass, (budget * selected).sum(dim=(1, 2)))


@needs_kernels
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("chunks", [None, 1], ids=["default chunks", "1 chunk"])
def test_whole_rows_are_plain_attention_plus_the_correction(dtype, padded, chunks):
    """A decode step's rows written whole: A'V, i.e. what the base kernel gives plus VAR's correction."""
    case = attention_case(dtype, decode=True, padded=padded)
    case["output"] = plain_attention(case).to(dtype)  # as an exact base kernel would
    corrected, selected, budget = pytorch_path(case)
    whole, whole_selected, _ = pytorch_path(case, whole_rows=True)
    case["output"] = torch.full_like(case["output"], float("nan"))  # every value must be written
    through, activity = through_kernels(case, whole_rows=True, block_k=16, chunks=chunks)
    assert selected[0].any() and not selected[0].all() and selected[1].any() and not selected[2].any()
    assert torch.equal(whole_selected, selected)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(whole, corrected, **tolerance)
    torch.testing.assert_close(through, corrected, **tolerance)
    check_activity(activity, selected, budget)


@needs_kernels
def test_launches_leave_their_tickets_at_zero():
    """The ticket counters are kept across launches, so each launch must leave them as it found them."""
    for whole_rows in (False, True, False):
        case = attention_case(torch.float32, decode=whole_rows, padded=True)
        expected = pytorch_path(case, whole_rows=whole_rows)[0]
        torch.testing.assert_close(through_kernels(case, whole_rows=whole_rows, chunks=3)[0], expected)
        assert not kernels._tickets_on[torch.device(DEVICE)].any()


@needs_kernels
def test_rows_step_two_forbids_are_untouched():
    case = attention_case(torch.float32, decode=False, padded=True)
    corrected, activity = through_kernels(case, row_valid=torch.zeros_like(case["row_valid"]))
    assert torch.equal(corrected, case["output"])
    assert not activity.redistributed_rows.any()


def test_launch_keys_tell_apart_every_specialisation_triton_compiles():
    """The fast launch reuses a compiled kernel only for arguments Triton would compile the same way."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    storage = torch.zeros(64)
    arguments = [storage, storage[1:], storage[4:], storage.half(), storage.view(torch.int32)]
    arguments += [0, 1, 2, 15, 16, 48, -16, 2**31 - 16, 2**31, 2**40 + 1, 0.5, 2.0, True, False]
    keys = [kernels._specialization(argument) for argument in arguments]
    for one, other in ((storage, storage[1:]), (1, 2), (15, 16), (2**31 - 16, 2**31), (True, 1)):
        assert kernels._specialization(one) != kernels._specialization(other)
    for argument, key in zip(arguments, keys, strict=True):
        for other, other_key in zip(arguments, keys, strict=True):
            if key == other_key:
                assert native_specialize_impl(BaseBackend, argument, False, True, True) == (
                    native_specialize_impl(BaseBackend, other, False, True, True)
                )


def test_non_contiguous_output_is_rejected():
    case = attention_case(torch.float32, decode=False, padded=False)
    case["output"] = case["output"].transpose(0, 1).contiguous().transpose(0, 1)
    with pytest.raises(ValueError, match="output must be a contiguous"):
        through_kernels(case)


@needs_kernels
def test_generation_through_the_kernels_equals_the_pytorch_path(monkeypatch, tiny_model, padded_batch):
    """Model level: prefill and decode go through the kernels and match the PyTorch path and diagnostics."""
    model = copy.deepcopy(tiny_model[0]).to(DEVICE)
    inputs = {key: value.to(DEVICE) for key, value in padded_batch.items()}
    calls = []
    launch = kernels.redistribute_rows
    monkeypatch.setattr(
        kernels, "redistribute_rows", lambda *args, **kwargs: calls.append(1) or launch(*args, **kwargs)
    )
    runs = []
    for use_triton in (True, False):
        with enable_var(model, CONFIG, diagnostics=True, use_triton=use_triton) as handle:
            out = model.generate(
                **inputs,
                max_new_tokens=3,
                min_new_tokens=3,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            runs.append((out, handle.diagnostics()))
            if use_triton:  # the prefill corrected the base kernel, the decode steps were written whole
                assert handle.state.kernels_agree == {
                    (torch.device(DEVICE), False): True,
                    (torch.device(DEVICE), True): True,
                }
    active_layers = len(CONFIG.active_layers(len(model.model.language_model.layers)))
    # The prefill and two decode steps, and two launches for each kind's first-use check.
    assert len(calls) == 3 * active_layers + 4
    (kernel_out, kernel_report), (torch_out, torch_report) = runs
    assert torch.equal(kernel_out.sequences, torch_out.sequences)
    for kernel_step, torch_step in zip(kernel_out.logits, torch_out.logits, strict=True):
        torch.testing.assert_close(kernel_step, torch_step, atol=1e-4, rtol=0)
    for kernel_sample, torch_sample in zip(kernel_report, torch_report, strict=True):
        assert kernel_sample["redistributed_rows"] == torch_sample["redistributed_rows"] > 0
        assert kernel_sample["moved_mass"] == pytest.approx(torch_sample["moved_mass"], rel=1e-5)


@needs_kernels
@pytest.mark.parametrize("failure", ["raises", "disagrees"])
def test_kernels_that_fail_fall_back_to_the_pytorch_path(
    monkeypatch, caplog, tiny_model, padded_batch, failure
):
    """A Triton build that errors or computes wrongly is caught by the first-use check, not trusted."""
    model = copy.deepcopy(tiny_model[0]).to(DEVICE)
    inputs = {key: value.to(DEVICE) for key, value in padded_batch.items()}

    def broken(output, *args, **kwargs):
        if failure == "raises":
            raise RuntimeError("no kernel image is available for execution on the device")
        output.mul_(2)

    monkeypatch.setattr(kernels, "redistribute_rows", broken)
    results = []
    for use_triton in (True, False):
        with enable_var(model, CONFIG, use_triton=use_triton) as handle:
            results.append(model(**inputs).logits)
            if use_triton:
                assert list(handle.state.kernels_agree.values()) == [False]
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)
    assert "Triton kernels are off" in caplog.text
