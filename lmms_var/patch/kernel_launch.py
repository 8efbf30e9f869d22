"""Launching a Triton kernel: its arguments as one named object laid out like its signature, and a
fast path past Triton's per-launch Python work once a specialisation is compiled."""

import collections
import contextlib
import inspect

import torch
import triton
import triton.language as tl

from lmms_var.patch.kernel_code import INTERPRETED


def parameters(kernel: triton.JITFunction) -> list[str]:
    """A Triton kernel's parameter names (compiled or interpreted)."""
    return list(inspect.signature(kernel.fn).parameters)


def launch_arguments(kernel: triton.JITFunction) -> type:
    """A named tuple of `kernel`'s runtime (non-constexpr) parameters, in the signature's order.

    Launchers fill it by name, so no launch depends on keeping a hand-written order in step with
    the kernel's; a launch passes it positionally, which is what Triton's fast path takes.
    """
    signature = inspect.signature(kernel.fn).parameters.values()
    runtime = [parameter.name for parameter in signature if parameter.annotation is not tl.constexpr]
    return collections.namedtuple(f"{kernel.fn.__name__}_arguments", runtime)


def launch_key(argument: object) -> tuple:
    """What a compiled Triton kernel assumes of one runtime argument.

    Triton specialises on a tensor's dtype and 16-byte alignment and on an integer being 1, a
    multiple of 16, or beyond 32 (or 63) bits; this key tells apart at least as much.
    """
    if isinstance(argument, torch.Tensor):
        return argument.dtype, argument.data_ptr() % 16 == 0
    if isinstance(argument, int):
        return (
            type(argument),
            argument == 1,
            argument % 16 == 0,
            -(2**31) <= argument < 2**31,
            argument < 2**63,
        )
    return (type(argument),)


class Launcher:
    """Launches a Triton kernel through its compiled handle once it has been compiled for the arguments.

    Triton's generic launch re-derives the specialisation from every argument in Python, which on a
    decode step costs several times the kernel's own GPU time; a dictionary lookup on `launch_key`
    keys gets the same compiled kernel. The interpreter always goes the generic way.
    """

    def __init__(self, kernel: triton.JITFunction) -> None:
        self.kernel = kernel
        self.compiled: dict[tuple, object] = {}

    def __call__(self, grid: tuple[int, int, int], device: torch.device, arguments: tuple, constants: tuple):
        """Launch on `grid`; `arguments` a `launch_arguments(kernel)` tuple, `constants` the constexprs in order."""
        if INTERPRETED:
            self.kernel[grid](*arguments, *constants)
            return
        # Triton compiles and launches on the current device: make it the tensors' one.
        switch = device.index != torch.cuda.current_device()
        with torch.cuda.device(device) if switch else contextlib.nullcontext():
            key = (device.index, constants, *map(launch_key, arguments))
            compiled = self.compiled.get(key)
            if compiled is None:
                self.compiled[key] = self.kernel[grid](*arguments, *constants)
            else:
                compiled[grid](*arguments, *constants)
