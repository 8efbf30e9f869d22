"""Where an intervention's compute paths add what they did: below the state, the paths and the kernels."""

from typing import NamedTuple

import torch


class Counters(NamedTuple):
    """One layer's diagnostics counters, Float32[B] on its device: added to, never read, in a forward."""

    redistributed_rows: torch.Tensor  # (head, row) pairs the intervention changed (VAR: redistributed)
    moved_mass: torch.Tensor  # attention mass they moved (VAR: their budgets)
