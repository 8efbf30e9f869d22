"""Where Triton kernels can run: on CUDA tensors, or on CPU tensors under Triton's interpreter."""

import importlib.util
import os

import torch

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
# `TRITON_INTERPRET=1` runs kernels on CPU tensors (how the CPU tests check them); read once, as Triton does.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_runs_on(tensor: torch.Tensor) -> bool:
    return TRITON_INSTALLED and (tensor.is_cuda or INTERPRETED)
