"""Model-arg parsing for the VAR models: what needs torch or lmms-eval on top of `lmms_var.model_args`.

The table of model args, their parsers and `ModelArgError` live in `lmms_var.model_args` (no torch);
this module adds lmms-eval's `k=v` string, its own options (`--batch_size`, `--device`), torch dtypes
and the VAR part of the settings. Each error names the model arg and what it expected.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from lmms_eval.utils import _smart_comma_split, handle_arg_string

from lmms_var.config import VARConfig
from lmms_var.model_args import (
    AUTO,
    DTYPE_NAMES,
    MODEL_ARGS,
    ModelArgError,
    ModelSettings,
    parse_bool,
    parse_dtype_name,
    parse_journal,
    parse_positive_int,
    parse_settings,
    parse_sink_dims,
)

__all__ = [
    "AUTO",
    "DTYPES",
    "LMMS_EVAL_DEFAULT_BATCH_SIZE",
    "ModelArgError",
    "VAROptions",
    "merge_lmms_eval_options",
    "model_arg_checks",
    "parse_bool",
    "parse_dtype",
    "parse_journal",
    "parse_model_args",
    "parse_positive_int",
    "parse_sink_dims",
    "parse_var_options",
]

# lmms-eval passes its own `--batch_size` to every model, 1 when the command line leaves it out.
LMMS_EVAL_DEFAULT_BATCH_SIZE = 1
DTYPES = {spelling: getattr(torch, name) for spelling, name in DTYPE_NAMES.items()}


@contextmanager
def model_arg_checks() -> Iterator[None]:
    """Within: a `ValueError` of a check shared with other callers (paths, devices, checkpoints, the
    backbone's upstream args) becomes a `ModelArgError`, so the log shows it as one."""
    try:
        yield
    except ModelArgError:
        raise
    except ValueError as error:
        raise ModelArgError(str(error)) from None


def parse_model_args(arg_string: str) -> dict[str, object]:
    """`--model_args` as lmms-eval parses them (`k=v,k=v`, commas inside quotes or brackets kept,
    values typed), but a piece that is not `k=v` or an arg given twice is a `ModelArgError`."""
    args: dict[str, object] = {}
    previous = None
    for piece in _smart_comma_split(arg_string.strip()):
        name, equals, text = piece.partition("=")
        name = name.strip()
        if not equals or not name:
            hint = ""
            if previous == "sink_dims":
                hint = f"; separate sink dims with ';': sink_dims={args[previous]};{piece}"
            elif previous is not None:
                hint = f" (after {previous}={args[previous]})"
            raise ModelArgError(
                f"{piece!r} is not an arg=value pair{hint}; commas separate model args (k=v,k=v)"
            )
        if name in args:
            raise ModelArgError(f"{name} is given twice ({name}={args[name]} and {name}={text})")
        args[name] = handle_arg_string(text)
        previous = name
    return args


def merge_lmms_eval_options(model_args: Mapping[str, object], options: Mapping[str, object]) -> dict:
    """The model args with the options lmms-eval passes every model (`--batch_size`, `--device`,
    `--max_batch_size`; None when not given) added.

    `--model_args` decides `batch_size` when lmms-eval's `--batch_size` is its default 1; an arg given
    both ways with different values is an error, so no run silently uses the one the user did not mean.
    """
    merged = dict(model_args)
    for name, value in options.items():
        if value is None:
            continue
        if name == "max_batch_size":
            raise ModelArgError(
                f"lmms-eval's --max_batch_size {value} applies to --batch_size auto, which this model does "
                "not take; give batch_size=N"
            )
        if name not in merged:
            merged[name] = value
        elif str(merged[name]) != str(value) and not (
            name == "batch_size" and str(value) == str(LMMS_EVAL_DEFAULT_BATCH_SIZE)
        ):
            raise ModelArgError(
                f"{name}={merged[name]} in --model_args and lmms-eval's --{name} {value} differ; give one of them"
            )
    return merged


def parse_dtype(value: object, device: str, cuda_default: str = "bfloat16") -> torch.dtype | str:
    """Default `cuda_default` on CUDA (upstream's: bfloat16, or "auto" for the checkpoint's own dtype),
    float32 on CPU (where bfloat16 is slow and lossy)."""
    if value is None:
        value = cuda_default if str(device).startswith("cuda") else "float32"
    name = parse_dtype_name("dtype", value)
    return AUTO if name == AUTO else getattr(torch, name)


@dataclass(frozen=True)
class VAROptions:
    """The VAR part of the model args, checked before any weights are loaded: `hyper` holds the VAR rows
    of the table but `sink_dims` (`tau`, `p`, ...), which are `VARConfig`'s fields of the same names."""

    enabled: bool
    sink_dims: tuple[int, ...] | str | None
    hyper: Mapping[str, object]
    diagnostics: bool
    diagnostics_path: str | None

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> "VAROptions":
        hyper = {
            row.name: settings[row.name]
            for row in MODEL_ARGS
            if row.method == "var" and row.name != "sink_dims"
        }
        return cls(
            enabled=settings["var"],
            sink_dims=settings["sink_dims"],
            hyper=hyper,
            diagnostics=settings["diagnostics"] or settings["diagnostics_path"] is not None,
            diagnostics_path=settings["diagnostics_path"],
        )

    def config(self, sink_dims: Sequence[int]) -> VARConfig:
        """The run's config once its dims are known (the table's parsers checked every other value)."""
        return VARConfig(sink_dims=tuple(sink_dims), **self.hyper)


def parse_var_options(**model_args: object) -> VAROptions:
    """Parse and validate every VAR model arg among `model_args` (dims are range-checked against the
    model later)."""
    return VAROptions.from_settings(parse_settings(model_args))
