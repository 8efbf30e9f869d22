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
from lmms_var.patch.counters import Counters
from lmms_var.patch.kernel_launch import launch_key, parameters
from lmms_var.patch.prefill import relevant_keys
from tests.patch import layer_cases
from tests.patch.layer_cases import (
    ONE_IMAGE,
    TWO_IMAGES,
    assert_matches_whole_rows,
    layer_call,
    normaliser_for,
    plain_attention,
    pytorch_path,
)
from tests.patch.test_enable_var import CONFIG

kernels = pytest.importorskip("lmms_var.patch.row_kernels", reason="needs Triton")
RUNNABLE = kernels.INTERPRETED or torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() and not kernels.INTERPRETED else "cpu"
needs_kernels = pytest.mark.skipif(not RUNNABLE, reason="run by test_under_triton_interpreter")
# Kernel against the PyTorch path; bfloat16: the PyTorch path rounds the correction before adding it,
# the kernel after.
KERNEL_TOLERANCE = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.bfloat16: {"atol": 2e-3, "rtol": 2e-2}}


def attention_case(dtype: torch.dtype, decode: bool, padded: bool, **options) -> dict:
    return layer_cases.attention_case(dtype, decode, padded, device=DEVICE, **options)


def through_kernels(case: dict, row_valid: torch.Tensor | None = None, **options):
    """The corrected (or written) output and the diagnostics counters from `redistribute_rows`."""
    corrected = case["output"].clone()
    counters = Counters(torch.zeros(3, device=DEVICE), torch.zeros(3, device=DEVICE))
    kernels.redistribute_rows(
        corrected,
        layer_call(case),
        case["plan"],
        case["rows"],
        case["row_valid"] if row_valid is None else row_valid,
        counters=counters,
        **options,
    )
    return corrected, counters


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


def prefill_through_kernels(case: dict, source: str = "sdpa", row_valid=None, **options):
    """The corrected output and the diagnostics counters from `correct_prefill_rows`."""
    corrected = case["output"].clone()
    counters = Counters(torch.zeros(3, device=DEVICE), torch.zeros(3, device=DEVICE))
    kernels.correct_prefill_rows(
        corrected,
        layer_call(case, normaliser_for(case, source)),
        case["plan"],
        relevant_keys(case["plan"]),
        case["rows"],
        case["row_valid"] if row_valid is None else row_valid,
        counters=counters,
        **options,
    )
    return corrected, counters


def check_prefill(case: dict, source: str = "sdpa", **tiling) -> None:
    """The prefill kernel corrects exactly the selected rows as whole rows over every key would."""
    expected, selected, budget = pytorch_path(case)
    corrected, counters = prefill_through_kernels(case, source, **tiling)
    assert_matches_whole_rows(case, corrected, expected, selected, **KERNEL_TOLERANCE[case["output"].dtype])
    # bfloat16: SDPA's log-sum-exp is off by up to 1e-4 from float32 scores of the same inputs.
    check_activity(counters, selected, budget, rtol=1.3e-6 if case["output"].dtype == torch.float32 else 1e-4)


@needs_kernels
@pytest.mark.parametrize(
    ("dtype", "images", "padded", "source"),
    [
        (torch.float32, ONE_IMAGE, False, "sdpa"),
        (torch.float32, TWO_IMAGES, True, "sdpa"),
        (torch.float32, TWO_IMAGES, False, "none"),
        (torch.bfloat16, TWO_IMAGES, True, "sdpa"),
    ],
    ids=["text after the image", "text between images, padded", "no log-sum-exp, causal only", "bfloat16"],
)
def test_prefill_kernel_equals_whole_rows(dtype, images, padded, source):
    check_prefill(attention_case(dtype, decode=False, padded=padded, images=images), source)


@needs_kernels
@pytest.mark.parametrize(
    ("tile_rows", "chunks"),
    [(8, 1), (8, 3), (16, 2), (16, 5)],
    ids=["8 rows", "8 rows, 3 chunks", "16 rows, 2 chunks", "16 rows, 5 chunks"],
)
def test_prefill_tiles_and_chunks_merge_exactly(tile_rows, chunks):
    """20 rows in tiles of 8 (broadcast products; the last tile part empty) or 16 (`tl.dot`); the
    relevant keys (26 or 27 here) in 16-key tiles shared by chunks (5 chunks leave some with nothing)."""
    case = attention_case(torch.float32, decode=False, padded=True, images=TWO_IMAGES)
    check_prefill(case, tile_rows=tile_rows, block_k=16, chunks=chunks)


@needs_kernels
@pytest.mark.parametrize("mask", ["additive", "padding"])
def test_prefill_kernel_reads_every_mask_format(mask):
    """Eager's additive [B, 1, Q, K] mask and flash's 2D padding mask, as the base kernels get them."""
    case = attention_case(torch.float32, decode=False, padded=True, images=TWO_IMAGES)
    visible = case["mask"]
    if mask == "additive":
        case["mask"] = torch.zeros(visible.shape, device=DEVICE).masked_fill(
            ~visible, torch.finfo(torch.float32).min
        )
    else:
        case["mask"] = visible[:, 0, -1].long()  # the last row sees every non-padding key
    check_prefill(case, "none")


@needs_kernels
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_decode_correction_equals_the_pytorch_path(dtype, padded):
    """A decode step with a prompt without an image in the batch: corrections over every key."""
    check_decode_correction(dtype, padded)


@needs_kernels
@pytest.mark.parametrize("chunks", [1, 3, 2], ids=["3 tiles in 1 chunk", "1 tile per chunk", "uneven"])
def test_decode_rows_split_into_tiles_and_chunks_merge_exactly(chunks):
    check_decode_correction(torch.float32, padded=True, block_k=16, chunks=chunks)


def check_decode_correction(dtype, padded: bool, **tiling) -> None:
    case = attention_case(dtype, decode=True, padded=padded)
    expected, selected, budget = pytorch_path(case)
    corrected, counters = through_kernels(case, **tiling)
    assert_matches_whole_rows(case, corrected, expected, selected, **KERNEL_TOLERANCE[dtype])
    check_activity(counters, selected, budget)


def check_activity(
    counters: Counters, selected: torch.Tensor, budget: torch.Tensor, rtol: float = 1.3e-6
) -> None:
    assert torch.equal(counters.redistributed_rows, selected.sum(dim=(1, 2)).float())
    torch.testing.assert_close(counters.moved_mass, (budget * selected).sum(dim=(1, 2)), rtol=rtol, atol=1e-5)


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
    through, counters = through_kernels(case, whole_rows=True, block_k=16, chunks=chunks)
    assert selected[0].any() and not selected[0].all() and selected[1].any() and not selected[2].any()
    assert torch.equal(whole_selected, selected)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(whole, corrected, **tolerance)
    torch.testing.assert_close(through, corrected, **tolerance)
    check_activity(counters, selected, budget)


@needs_kernels
def test_launches_leave_their_tickets_at_zero():
    """The ticket counters are kept across launches, so each launch must leave them as it found them."""
    for kind in ("prefill", "whole rows", "prefill", "decode correction"):
        case = attention_case(torch.float32, decode=kind != "prefill", padded=True)
        if kind == "prefill":
            corrected = prefill_through_kernels(case, tile_rows=8, chunks=3)[0]
        else:
            corrected = through_kernels(case, whole_rows=kind == "whole rows", chunks=3)[0]
        torch.testing.assert_close(corrected, pytorch_path(case, whole_rows=kind == "whole rows")[0])
        assert not kernels._tickets_on[torch.device(DEVICE)].any()


@needs_kernels
def test_rows_step_two_forbids_are_untouched():
    case = attention_case(torch.float32, decode=False, padded=True)
    corrected, counters = prefill_through_kernels(case, row_valid=torch.zeros_like(case["row_valid"]))
    assert torch.equal(corrected, case["output"])
    assert not counters.redistributed_rows.any()


def test_launch_keys_tell_apart_every_specialisation_triton_compiles():
    """The fast launch reuses a compiled kernel only for arguments Triton would compile the same way."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    storage = torch.zeros(64)
    arguments = [storage, storage[1:], storage[4:], storage.half(), storage.view(torch.int32)]
    arguments += [0, 1, 2, 15, 16, 48, -16, 2**31 - 16, 2**31, 2**40 + 1, 0.5, 2.0, True, False]
    keys = [launch_key(argument) for argument in arguments]
    for one, other in ((storage, storage[1:]), (1, 2), (15, 16), (2**31 - 16, 2**31), (True, 1)):
        assert launch_key(one) != launch_key(other)
    for argument, key in zip(arguments, keys, strict=True):
        for other, other_key in zip(arguments, keys, strict=True):
            if key == other_key:
                assert native_specialize_impl(BaseBackend, argument, False, True, True) == (
                    native_specialize_impl(BaseBackend, other, False, True, True)
                )


def _recorded_launch(monkeypatch, run) -> tuple[object, tuple, tuple]:
    """(kernel, arguments, constexprs) of the one launch `run` makes, the kernel not run."""
    launches = []
    for launcher in ("_launch_correct_prefill_rows", "_launch_redistribute_rows"):
        kernel = getattr(kernels, launcher).kernel
        monkeypatch.setattr(
            kernels,
            launcher,
            lambda grid, device, arguments, constants, kernel=kernel: launches.append(
                (kernel, arguments, constants)
            ),
        )
    run()
    (launch,) = launches
    return launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(
    "kind",
    [
        "decode correction",
        "whole rows",
        "prefill",
        "prefill, no log-sum-exp",
        "additive",
        "padding",
        "unmasked",
    ],
)
def test_launches_are_specialisations_ci_compiles(monkeypatch, dtype, kind):
    """What a launch passes Triton is exactly its specialisation: the constexprs, and the argument
    types Triton derives at run time, are those `specializations` lists and CI compiles."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    case = attention_case(dtype, decode=kind in ("decode correction", "whole rows"), padded=True)
    if kind == "additive":
        case["mask"] = torch.zeros(case["mask"].shape, dtype=dtype).masked_fill(
            ~case["mask"], torch.finfo(dtype).min
        )
    elif kind == "padding":
        case["mask"] = case["mask"][:, 0, -1].long()
    elif kind == "unmasked":
        case["mask"] = None
    if kind in ("decode correction", "whole rows"):
        whole_rows = kind == "whole rows"
        kernel, arguments, constants = _recorded_launch(
            monkeypatch, lambda: through_kernels(case, whole_rows=whole_rows)
        )
        expected = kernels.rows_specialization(dtype, 48, blocked=True, whole_rows=whole_rows)
    else:
        source = "none" if kind in ("prefill, no log-sum-exp", "padding") else "sdpa"
        call = layer_call(case, normaliser_for(case, source))
        kernel, arguments, constants = _recorded_launch(
            monkeypatch, lambda: prefill_through_kernels(case, source)
        )
        expected = kernels.prefill_specialization(call, case["plan"].weights.shape[1], case["rows"].shape[1])
    assert expected in kernels.specializations((48,), (dtype,))
    assert kernel is expected.kernel and constants == expected.constants()
    # Triton makes an integer argument equal to 1 a constant; CI compiles the general i32 variant.
    runtime = [native_specialize_impl(BaseBackend, argument, False, True, True)[0] for argument in arguments]
    runtime = ["i32" if kind == "constexpr" else kind for kind in runtime]
    signature = [kind for kind in expected.signature().values() if kind != "constexpr"]
    assert runtime == signature


def test_launch_arguments_are_laid_out_like_the_kernels():
    """A launch passes its named arguments then its specialisation's constexprs, positionally: together
    they must be the kernel's parameters in order."""
    for variant in kernels.specializations((48,), (torch.float32,)):
        decode = isinstance(variant, kernels.RowsSpecialization)
        arguments = kernels._RowsArguments if decode else kernels._PrefillArguments
        assert [*arguments._fields, *variant.constexprs()] == parameters(variant.kernel)


@pytest.mark.parametrize("kernel", ["prefill", "decode"])
def test_non_contiguous_output_is_rejected(kernel):
    case = attention_case(torch.float32, decode=kernel == "decode", padded=False)
    case["output"] = case["output"].transpose(0, 2).contiguous().transpose(0, 2)  # batch and heads swapped
    with pytest.raises(ValueError, match="output must be a contiguous"):
        prefill_through_kernels(case) if kernel == "prefill" else through_kernels(case)


@needs_kernels
def test_generation_through_the_kernels_equals_the_pytorch_path(monkeypatch, tiny_model, padded_batch):
    """Model level: prefill and decode go through the kernels and match the PyTorch path and diagnostics."""
    model = copy.deepcopy(tiny_model[0]).to(DEVICE)
    inputs = {key: value.to(DEVICE) for key, value in padded_batch.items()}
    calls = []

    def counted(name: str):
        launch = getattr(kernels, name)
        return lambda *args, **kwargs: calls.append(name) or launch(*args, **kwargs)

    for name in ("correct_prefill_rows", "redistribute_rows"):
        monkeypatch.setattr(kernels, name, counted(name))
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
                checked = handle.state.caches.kernels_agree
                assert set(checked.values()) == {True}
                assert sorted(type(variant).__name__ for _, variant in checked) == [
                    "PrefillSpecialization",
                    "RowsSpecialization",
                ]
                assert all(variant.whole_rows for _, variant in checked if hasattr(variant, "whole_rows"))
    active_layers = len(CONFIG.active_layers(len(model.model.language_model.layers)))
    # The prefill and two decode steps, and two launches for each specialisation's first-use check.
    assert calls.count("correct_prefill_rows") == active_layers + 2
    assert calls.count("redistribute_rows") == 2 * active_layers + 2
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

    monkeypatch.setattr(kernels, "correct_prefill_rows", broken)  # a forward is a prefill
    results = []
    for use_triton in (True, False):
        with enable_var(model, CONFIG, use_triton=use_triton) as handle:
            results.append(model(**inputs).logits)
            if use_triton:
                assert list(handle.state.caches.kernels_agree.values()) == [False]
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)
    assert "Triton kernels are off" in caplog.text


@needs_kernels
def test_one_failing_specialisation_falls_back_alone(monkeypatch, caplog, tiny_model, padded_batch):
    """A variant that fails to compile (here the prefill's) is met in every layer of every prompt:
    VAR warns once, takes the PyTorch path there with its exact numbers, and keeps the kernels for
    the variants that work (the decode steps' whole rows)."""
    model = copy.deepcopy(tiny_model[0]).to(DEVICE)
    inputs = {key: value.to(DEVICE) for key, value in padded_batch.items()}
    decode_launches = []
    counted = kernels._launch_redistribute_rows

    def broken(grid, device, arguments, constants):
        raise RuntimeError("PTX .version 9.9 does not support .target sm_80")  # as a bad Triton build fails

    def counting(*args):
        decode_launches.append(args)
        counted(*args)

    monkeypatch.setattr(kernels, "_launch_correct_prefill_rows", broken)
    monkeypatch.setattr(kernels, "_launch_redistribute_rows", counting)
    options = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False}
    options |= {"output_logits": True, "return_dict_in_generate": True}
    runs = []
    for use_triton in (True, False):
        with enable_var(model, CONFIG, use_triton=use_triton) as handle:
            prefill = model(**inputs).logits
            generated = model.generate(**inputs, **options)
            runs.append((prefill, generated))
            if use_triton:
                verdicts = {
                    type(variant).__name__: agree
                    for (_, variant), agree in handle.state.caches.kernels_agree.items()
                }
    assert verdicts == {"PrefillSpecialization": False, "RowsSpecialization": True}
    assert caplog.text.count("Triton kernels are off") == 1
    assert "correct_prefill_rows, float32" in caplog.text and "PTX .version" in caplog.text
    assert decode_launches, "the decode steps' variant kept the kernels"
    (kernel_prefill, kernel_run), (torch_prefill, torch_run) = runs
    torch.testing.assert_close(kernel_prefill, torch_prefill, atol=0, rtol=0)
    assert torch.equal(kernel_run.sequences, torch_run.sequences)
    torch.testing.assert_close(kernel_run.logits[0], torch_run.logits[0], atol=0, rtol=0)
    for kernel_step, torch_step in zip(kernel_run.logits[1:], torch_run.logits[1:], strict=True):
        torch.testing.assert_close(kernel_step, torch_step, atol=1e-4, rtol=0)


@needs_kernels
@pytest.mark.parametrize("broken", [False, True], ids=["working", "prefill kernel off by one"])
def test_doctor_checks_each_specialisation_against_the_pytorch_path(monkeypatch, broken):
    """`lmms-var doctor`'s device check: every variant a model uses is launched as itself and
    compared with the PyTorch path; a kernel that computes wrongly is reported for its variants only."""
    from lmms_var.patch import doctor

    if broken:
        correct = kernels.correct_prefill_rows
        monkeypatch.setattr(
            kernels,
            "correct_prefill_rows",
            lambda output, *a, **k: (correct(output, *a, **k), output.add_(1)),
        )
    report = doctor.Report({}, DEVICE)
    variants = doctor.model_specializations(kernels, torch.float32)
    doctor.check_agreement(
        report, variants, torch.device(DEVICE), {"small": doctor.LayerShape(4, 2, 128, 160)}
    )
    assert len(report.findings) == len(variants) == 16
    failed = {finding.check for finding in report.findings if finding.status != doctor.OK}
    prefill = {finding.check for finding in report.findings if "correct_prefill_rows" in finding.check}
    assert failed == (prefill if broken else set()), [finding.detail for finding in report.findings]
