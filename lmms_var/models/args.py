"""Model-arg parsing for the VAR models: lmms-eval hands `k=v` values over already half-parsed.

lmms-eval turns `true`/`false` into bools, digit strings into ints and decimals into floats before
the model sees them (`sink_dims=458` arrives as 458, `var=false` as False), so every parser here
accepts those as well as strings. Each error names the model arg and what it expected.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from lmms_eval.utils import _smart_comma_split, handle_arg_string

from lmms_var.config import VARConfig

AUTO = "auto"
# lmms-eval passes its own `--batch_size` to every model, 1 when the command line leaves it out.
LMMS_EVAL_DEFAULT_BATCH_SIZE = 1
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


class ModelArgError(ValueError):
    """A bad `--model_args` value; the model being configured adds its name (`for_model`), so the
    message reads `qwen2_5_vl_var: invalid model_args: ...` and stands out in logs."""

    def __init__(self, message: str, model: str | None = None) -> None:
        super().__init__(f"{model + ': ' if model else ''}invalid model_args: {message}")
        self.message, self.model = message, model

    def for_model(self, model: str) -> "ModelArgError":
        return self if self.model else ModelArgError(self.message, model)


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


def parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ModelArgError(f"{name} must be true or false, got {value!r}")


def parse_float(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ModelArgError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelArgError(f"{name} must be a number, got {value!r}") from None


def parse_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(str(value)) < 1:
        raise ModelArgError(f"{name} must be a positive integer, got {value!r}")
    return int(str(value))


def parse_sink_dims(value: object) -> tuple[int, ...] | str | None:
    """`458;2570` (commas would split lmms-eval's `k=v,k=v`), a bare int, a sequence, `auto`, or None."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, int) and not isinstance(value, bool):
        parts: Sequence[object] = [value]
    elif isinstance(value, str):
        parts = [part.strip() for part in value.strip().strip("[]()").split(";")]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        parts = [value]
    dims = []
    for part in parts:
        text = str(part)
        if isinstance(part, bool) or not text.isdigit():
            raise ModelArgError(
                f"sink_dims must be non-negative integers separated by ';' (e.g. sink_dims=458;2570) "
                f"or 'auto', got {value!r}"
            )
        dims.append(int(text))
    if not dims:
        raise ModelArgError("sink_dims is empty; give at least one hidden-state channel, e.g. sink_dims=458")
    return tuple(dims)


def parse_journal(value: object) -> str | None:
    """`auto`, a folder path, or None for `off` (lmms-eval hands `false` and `0` over as False and 0)."""
    text = str(value).strip()
    if value is None or text.lower() in _FALSE:
        return None
    if text.lower() == AUTO:
        return AUTO
    if isinstance(value, bool) or text.lower() in _TRUE or not text:
        raise ModelArgError(f"journal must be auto, off or a folder path, got {value!r}")
    return text


def parse_dtype(value: object, device: str, cuda_default: str = "bfloat16") -> torch.dtype | str:
    """Default `cuda_default` on CUDA (upstream's: bfloat16, or "auto" for the checkpoint's own dtype),
    float32 on CPU (where bfloat16 is slow and lossy)."""
    if value is None:
        value = cuda_default if str(device).startswith("cuda") else "float32"
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    dtype = DTYPES.get(text)
    if dtype is None:
        raise ModelArgError(f"dtype must be one of {[AUTO, *sorted(DTYPES)]}, got {value!r}")
    return dtype


@dataclass(frozen=True)
class VAROptions:
    """The VAR part of the model args, checked before any weights are loaded."""

    enabled: bool
    sink_dims: tuple[int, ...] | str | None
    tau: float
    rho: float
    summ: float
    p: float
    except_last_layer: bool
    diagnostics: bool
    diagnostics_path: str | None

    def config(self, sink_dims: Sequence[int]) -> VARConfig:
        try:
            return VARConfig(
                sink_dims=tuple(sink_dims),
                tau=self.tau,
                rho=self.rho,
                summ=self.summ,
                p=self.p,
                except_last_layer=self.except_last_layer,
            )
        except ValueError as error:
            # VARConfig says e.g. "VARConfig.p must be in [0, 1]"; the user wrote "p=".
            raise ModelArgError(str(error).replace("VARConfig.", "")) from None


def parse_var_options(
    *,
    var: object,
    sink_dims: object,
    tau: object,
    rho: object,
    summ: object,
    p: object,
    except_last_layer: object,
    diagnostics: object,
    diagnostics_path: object,
) -> VAROptions:
    """Parse and validate every VAR model arg (dims are range-checked against the model later)."""
    options = VAROptions(
        enabled=parse_bool("var", var),
        sink_dims=parse_sink_dims(sink_dims),
        tau=parse_float("tau", tau),
        rho=parse_float("rho", rho),
        summ=parse_float("summ", summ),
        p=parse_float("p", p),
        except_last_layer=parse_bool("except_last_layer", except_last_layer),
        diagnostics=parse_bool("diagnostics", diagnostics) or diagnostics_path is not None,
        diagnostics_path=None if diagnostics_path is None else str(diagnostics_path),
    )
    # Validate the hyper-parameters now; a placeholder channel stands in for dims not yet known.
    options.config(options.sink_dims if isinstance(options.sink_dims, tuple) else (0,))
    return options
