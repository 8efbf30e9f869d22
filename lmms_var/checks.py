"""Checks of the paths, devices and layers users give, run before any expensive work (loading weights, measuring).

Shared by the model args, the sink-dims cache and every `lmms-var` subcommand that writes files, so a
run cannot compute for minutes and then die on a folder given as an output file or a missing GPU.
Each check raises a `ValueError` naming the argument as its caller knows it (`what`: `--output`,
`diagnostics_path`, ...) and what is allowed. Like `config.py`, this module imports nothing else from
the package, so every layer can use it; torch is imported only by the device check.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def check_output_file(path: str | Path, what: str) -> Path:
    """`path` can be written as a file: not a folder, and its folder exists or can be created there."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ValueError(f"{what} {path} is not writable")
        return path
    _check_creatable(path, what)
    return path


def check_output_folder(path: str | Path, what: str) -> Path:
    """`path` is a writable folder, or one that can be created there (it is not created here)."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} {path} is a file; give a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {path} is a folder this user cannot write in")
        return path
    _check_creatable(path, what)
    return path


def probe_output_file(path: str | Path, what: str) -> Path:
    """`check_output_file`, then its folders created and the file opened for appending (one made here is
    removed again, so a process that will not write it leaves nothing behind).

    Permission bits do not say everything (root passes them everywhere, even under /proc; a read-only
    mount or an immutable file refuses anyway): only opening the file shows it can be written.
    """
    path = check_output_file(path, what)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be written: {error.strerror or error}") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path


def probe_output_folder(path: str | Path, what: str) -> Path:
    """`check_output_folder`, then the folder created and a scratch file written in it and removed
    (see `probe_output_file` for why)."""
    path = check_output_folder(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be written in: {error.strerror or error}") from None
    return path


def _check_creatable(path: Path, what: str) -> None:
    """The nearest existing ancestor of a missing `path` must be a folder this user can write in."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be created: this user cannot write in {ancestor}")


def check_device(device: str, what: str) -> torch.device:
    """`device` parsed as a `torch.device` that exists here (a `cuda` device needs a visible GPU)."""
    import torch  # here: the other checks serve `lmms-var --help`, which must not wait for torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {device!r} is not a device; give cpu, cuda or cuda:N") from None
    backend = getattr(torch, parsed.type, None)
    if parsed.type != "cpu" and not getattr(backend, "is_available", lambda: True)():
        raise ValueError(f"{what} {device!r}: this machine has no {parsed.type.upper()} device; give cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(
            f"{what} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return parsed


def device_or_default(device: str | None, what: str) -> str:
    """`device` checked (`check_device`); "auto" as it is (accelerate spreads the model over what there
    is); None: the GPU when there is one, else the CPU."""
    import torch  # see check_device

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device if device == "auto" else str(check_device(device, what))


def check_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    """`layers` (decoder layer indices) sorted, without repeats, each in `[0, num_layers)`."""
    chosen = sorted(set(layers))
    bad = [layer for layer in chosen if isinstance(layer, bool) or not isinstance(layer, int)]
    bad += [layer for layer in chosen if layer not in bad and not 0 <= layer < num_layers]
    if not chosen or bad:
        raise ValueError(f"layers must be decoder layers in [0, {num_layers}), got {list(layers)}")
    return chosen
