"""Model-arg parsing for the VAR models: what needs torch or lmms-eval on top of `lmms_var.model_args`.

The table of model args, their parsers and `ModelArgError` live in `lmms_var.model_args` (no torch);
this module adds lmms-eval's `k=v` string, its own options (`--batch_size`, `--device`), torch dtypes
and the chosen method's part of the settings (`InterventionOptions`), which builds its config. Each error names the model arg and what it expected.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from lmms_eval.utils import _smart_comma_split, handle_arg_string

from lmms_var.config import METHOD_CONFIGS, ConfigError
from lmms_var.model_args import (
    AUTO,
    DTYPE_NAMES,
    METHODS,
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
from lmms_var.patch.interventions import INTERVENTIONS

__all__ = [
    "AUTO",
    "DTYPES",
    "LMMS_EVAL_DEFAULT_BATCH_SIZE",
    "InterventionOptions",
    "ModelArgError",
    "merge_lmms_eval_options",
    "model_arg_checks",
    "parse_bool",
    "parse_dtype",
    "parse_intervention_options",
    "parse_journal",
    "parse_model_args",
    "parse_positive_int",
    "parse_sink_dims",
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
class InterventionOptions:
    """The chosen method's part of the model args, checked before any weights are loaded: `args` holds
    the method's rows but `sink_dims` (`tau`, `p`, ...; `alpha`, ...), which are its config's fields of
    the same names; `sink_dims` is VAR's (None: look them up; other methods have none)."""

    method: str
    enabled: bool
    args: Mapping[str, object]
    sink_dims: tuple[int, ...] | str | None
    diagnostics: bool
    diagnostics_path: str | None

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> "InterventionOptions":
        """The options of `settings`; a method without dims builds its config now, so args that are
        wrong together (PAI's `end_layer` not above `start_layer`) fail before loading too."""
        args = {
            row.name: settings[row.name]
            for row in MODEL_ARGS
            if row.method == settings.method and row.name != "sink_dims"
        }
        options = cls(
            method=settings.method,
            enabled=settings["var"],
            args=args,
            sink_dims=settings.values.get("sink_dims"),
            diagnostics=settings["diagnostics"] or settings["diagnostics_path"] is not None,
            diagnostics_path=settings["diagnostics_path"],
        )
        if options.enabled and not options.needs_sink_dims:
            options.config()
        return options

    @property
    def name(self) -> str:
        """The method as its intervention names itself (`VAR`, `ScalingVis`, `AdaptVis`, `PAI`)."""
        return INTERVENTIONS[METHOD_CONFIGS[self.method]].name

    @property
    def needs_sink_dims(self) -> bool:
        return self.method == "var"

    def config(self, sink_dims: Sequence[int] | None = None):
        """The run's config (VAR's once its dims are known); the table's parsers checked each value,
        the config checks them together."""
        fields = dict(self.args) if sink_dims is None else {**self.args, "sink_dims": tuple(sink_dims)}
        try:
            return METHOD_CONFIGS[self.method](**fields)
        except ConfigError as error:
            raise ModelArgError(self._named(error)) from None

    def check_layers(self, num_layers: int, source: str) -> None:
        """The method's layer range lies within the `num_layers` decoder layers `source` (the checkpoint's
        config.json) gives, so PAI's `end_layer=40` on a 28-layer model fails before the weights load."""
        if not self.enabled or self.needs_sink_dims:
            return
        try:
            self.config().active_layers(num_layers)
        except ConfigError as error:
            raise ModelArgError(f"{self._named(error)} ({source})") from None

    def _named(self, error: ConfigError) -> str:
        """A config's message (`PAIConfig.end_layer must ...`) naming the model arg and the method."""
        message = f"{error.field} {error.problem}"  # the config's fields are the model args' names
        return message if self.method == METHODS[0] else f"method={self.method}: {message}"


def parse_intervention_options(**model_args: object) -> InterventionOptions:
    """Parse and validate every model arg of the chosen method among `model_args` (VAR's dims are
    range-checked against the model later)."""
    return InterventionOptions.from_settings(parse_settings(model_args))
