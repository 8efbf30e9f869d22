"""VAR's Triton kernels compiled ahead of time for A100 (sm_80) and H100 (sm_90), with no GPU.

Every specialisation the launchers can launch must compile and fit the GPU's shared memory per
block: a variant that does not would otherwise fail on a user's GPU, hours into a run, at the
first prompt that needs it. `benchmarks/kernel_builds.py` prints the same table.
"""

import dataclasses

import pytest
import torch

from lmms_var.testing import TinySpec

kernels = pytest.importorskip("lmms_var.patch.row_kernels", reason="needs Triton")
builds = pytest.importorskip("lmms_var.patch.kernel_builds", reason="needs Triton")
pytestmark = pytest.mark.skipif(kernels.INTERPRETED, reason="compiles for real GPUs, not for the interpreter")

# The shipped families' head dims, the tiny test checkpoints', and 64 and 80 (smaller models; 80 is
# not a power of two, so the kernels pad it to 128).
HEAD_DIMS = tuple(sorted({64, 80, *builds.shipped_head_dims(), TinySpec().shape.head_dim}))


def assert_fit(results: list) -> None:
    problems = [
        f"{build.specialization} on {build.gpu}: {build.problem()}" for build in results if build.problem()
    ]
    assert not problems, "\n".join(problems)
    assert all(build.registers > 0 and build.warps > 0 for build in results)


def test_head_dims_cover_the_shipped_families():
    assert 128 in HEAD_DIMS and set(builds.shipped_head_dims()) <= set(HEAD_DIMS)


def heaviest() -> list:
    """The two kernels at their largest tiles, in float32, with every option on."""
    head_dim = max(HEAD_DIMS)
    return [
        kernels.rows_specialization(torch.float32, head_dim, blocked=True, whole_rows=True),
        next(
            variant
            for variant in kernels.specializations((head_dim,), (torch.float32,))
            if isinstance(variant, kernels.PrefillSpecialization)
            and variant.mask_kind == kernels.MASK_KINDS.index("additive")
            and variant.chunked
        ),
    ]


def test_the_heaviest_variants_compile_and_fit():
    results = builds.compile_all(heaviest())
    assert [build.gpu for build in results] == ["A100", "H100"] * 2
    assert_fit(results)


@pytest.mark.slow
def test_every_specialisation_compiles_and_fits_on_a100_and_h100():
    variants = kernels.specializations(HEAD_DIMS)
    results = builds.compile_all(variants)
    assert len(results) == 2 * len(variants) == 2 * len(HEAD_DIMS) * len(kernels.DTYPES) * 16
    print("\n" + builds.build_table(results))
    assert_fit(results)


def test_a_compile_error_and_a_shared_memory_overflow_are_reported():
    """The checks fail where they should: a variant that cannot compile, and a GPU too small for one."""
    variant = kernels.rows_specialization(torch.float16, 64, blocked=False, whole_rows=False)

    class Unbuildable(type(variant)):
        def constexprs(self):
            return super().constexprs() | {"BLOCK_D": 48}  # tl.arange needs a power of two

    broken = Unbuildable(*dataclasses.astuple(variant))
    (failed,) = builds.compile_all([broken], [builds.H100])
    assert failed.error is not None and "power of 2" in failed.error and not failed.fits
    small = builds.GPU("a GPU with 8 KiB per block", 80, 8 * 1024)
    (overflowing,) = builds.compile_all(heaviest()[1:], [small])  # the prefill kernel: over 16 KiB
    assert overflowing.error is None and overflowing.shared_memory > 8 * 1024
    assert "shared memory" in overflowing.problem()
    with pytest.raises(AssertionError, match="shared memory"):
        assert_fit([overflowing])
