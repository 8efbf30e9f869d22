"""VAR's Triton row kernels compiled ahead of time for real GPUs, on any machine (no GPU needed).

Triton compiles for a target it is told, not only for the device it runs on: `triton.compile`
with a `GPUTarget` lowers a kernel to PTX and `ptxas` (shipped with Triton) assembles a cubin.
Each `row_kernels` specialisation is compiled from its own constexprs and argument types, then
checked against the GPU's shared memory per block; its register and spill counts are read from
the cubin with `cuobjdump` (also shipped with Triton). This is what CI runs for every
specialisation, and what `lmms-var doctor` runs for the ones a model would use.
"""

import itertools
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lmms_var.backbones import BACKBONES


@dataclass(frozen=True)
class GPU:
    """A GPU the kernels are compiled for."""

    name: str
    capability: int  # compute capability as Triton writes it: 80 for sm_80
    shared_memory_per_block: int  # bytes a block may use (the opt-in maximum)


# What a block may ask for (`sharedMemPerBlockOptin`, which Triton checks at launch): 1 KiB under
# the multiprocessor's 164 / 228 KiB, which the driver reserves per block.
A100 = GPU("A100", 80, 163 * 1024)
H100 = GPU("H100", 90, 227 * 1024)
GPUS = (A100, H100)


@dataclass(frozen=True)
class KernelBuild:
    """One specialisation compiled for one GPU, or why it did not compile."""

    specialization: str  # its `describe()`
    gpu: str
    seconds: float
    error: str | None = None
    shared_memory: int = 0  # bytes per block (Triton's dynamic shared memory, all a kernel uses)
    registers: int = 0  # per thread
    spilled: int = 0  # bytes of stack per thread (register spills)
    warps: int = 0
    shared_memory_limit: int = 0

    @property
    def fits(self) -> bool:
        return self.error is None and self.shared_memory <= self.shared_memory_limit

    def problem(self) -> str | None:
        """Why this build would fail on its GPU, or None."""
        if self.error is not None:
            return f"does not compile: {self.error}"
        if not self.fits:
            return f"needs {self.shared_memory} bytes of shared memory, over {self.gpu}'s {self.shared_memory_limit}"
        return None


_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+)")


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) per thread of the cubin's one kernel, as cuobjdump reports them."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        report = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = _RESOURCES.search(report)
    if found is None:
        raise RuntimeError(f"cuobjdump reported no resource usage:\n{report}")
    registers, stack = map(int, found.groups())
    return registers, stack


def _aligned_pointers(specialization) -> dict[tuple[int], list]:
    """Every pointer 16-byte aligned, as PyTorch allocates tensors; integers with no assumption.

    At run time Triton also specialises integer arguments (a stride of 1, a multiple of 16); those
    variants only add facts to this most general one.
    """
    return {
        (index,): [["tt.divisibility", 16]]
        for index, kind in enumerate(specialization.signature().values())
        if kind.startswith("*")
    }


def compile_specialization(specialization, gpu: GPU) -> KernelBuild:
    """Compile one `row_kernels` specialisation for `gpu`, with no GPU present."""
    source = ASTSource(
        specialization.kernel,
        specialization.signature(),
        specialization.constexprs(),
        _aligned_pointers(specialization),
    )
    start = time.perf_counter()
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", gpu.capability, 32))
        registers, spilled = _resource_usage(compiled.asm["cubin"])
    except Exception as error:  # a compiler error of any kind is the finding
        return KernelBuild(
            specialization.describe(),
            gpu.name,
            time.perf_counter() - start,
            error=f"{type(error).__name__}: {error}",
        )
    return KernelBuild(
        specialization.describe(),
        gpu.name,
        time.perf_counter() - start,
        shared_memory=compiled.metadata.shared,
        registers=registers,
        spilled=spilled,
        warps=compiled.metadata.num_warps,
        shared_memory_limit=gpu.shared_memory_per_block,
    )


def compile_all(
    specializations: Iterable, gpus: Iterable[GPU] = GPUS, workers: int | None = None
) -> list[KernelBuild]:
    """Every specialisation compiled for every GPU, in that order, on `workers` processes (default: every CPU).

    Compilation is single-threaded CPU work, so processes (started fresh: Triton is not fork-safe) share it.
    """
    jobs = list(itertools.product(specializations, gpus))
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) == 1:
        return [compile_specialization(*job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(compile_specialization, *zip(*jobs, strict=True)))


def shipped_head_dims() -> tuple[int, ...]:
    """The head dims of the supported families' published checkpoints (from `lmms_var.backbones`)."""
    return tuple(sorted({dim for backbone in BACKBONES for dim in backbone.head_dims}))


def build_table(builds: list[KernelBuild]) -> str:
    """A markdown table of the builds, one row per specialisation and GPU."""
    lines = [
        "| specialisation | GPU | shared memory (KiB) / limit | registers | spilled (bytes) | warps | compile (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for build in builds:
        if build.error is not None:
            lines.append(
                f"| {build.specialization} | {build.gpu} | **{build.problem()}** | | | | {build.seconds:.1f} |"
            )
            continue
        flag = "" if build.fits else " **over**"
        lines.append(
            f"| {build.specialization} | {build.gpu} | {build.shared_memory / 1024:.1f} / "
            f"{build.shared_memory_limit // 1024}{flag} | {build.registers} | {build.spilled} | {build.warps} | "
            f"{build.seconds:.1f} |"
        )
    return "\n".join(lines)
