"""VAR's Triton row kernels compiled ahead of time for A100 and H100, no GPU needed: a table of
each specialisation's shared memory (against the GPU's limit per block), registers and spills.

    python benchmarks/kernel_builds.py                     # every specialisation the launchers launch
    python benchmarks/kernel_builds.py --head-dims 128 --dtypes bfloat16

The same compilation is what CI checks (tests/patch/test_kernel_builds.py). Registers are per
thread (255 at most); "spilled" is stack per thread, i.e. registers that did not fit.
"""

import argparse
import sys

import torch

from lmms_var.patch import kernel_builds, row_kernels
from lmms_var.testing import TinySpec


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_dims = sorted({64, 80, *kernel_builds.shipped_head_dims(), TinySpec().shape.head_dim})
    parser.add_argument("--head-dims", type=int, nargs="+", default=default_dims)
    parser.add_argument(
        "--dtypes", nargs="+", default=[str(dtype).removeprefix("torch.") for dtype in row_kernels.DTYPES]
    )
    parser.add_argument("--workers", type=int, help="compiling processes (default: one per CPU)")
    args = parser.parse_args()
    variants = row_kernels.specializations(
        tuple(args.head_dims), tuple(getattr(torch, name) for name in args.dtypes)
    )
    results = kernel_builds.compile_all(variants, workers=args.workers)
    print(kernel_builds.build_table(results))
    problems = [build for build in results if build.problem()]
    print(
        f"\n{len(results)} builds ({len(variants)} specialisations x {len(kernel_builds.GPUS)} GPUs), {len(problems)} with a problem"
    )
    for gpu in kernel_builds.GPUS:
        built = [build for build in results if build.gpu == gpu.name and build.error is None]
        print(
            f"{gpu.name}: shared memory at most {max(build.shared_memory for build in built) / 1024:.1f} KiB of "
            f"{gpu.shared_memory_per_block // 1024}; registers at most {max(build.registers for build in built)}; "
            f"{sum(build.spilled > 0 for build in built)} of {len(built)} spill"
        )
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
