"""The model args of lmms-var's lmms-eval models: one table, one row per arg, read by all that names them.

The models' parser (`lmms_var.models`), the journal's key (the rows that can change an answer), the
leaderboard's run labels and `lmms-var show`'s help read `MODEL_ARGS`, so a new arg is one row, and a
new method's arg is one row with `method=` its method. Methods may share an arg's name (`alpha` is
ScalingVis's scale and PAI's amplification): one row per method, each with its own default and parser. This module imports no torch, transformers or
lmms-eval: the leaderboard and the CLI's help read it without loading a model stack.

lmms-eval turns `true`/`false` into bools, digit strings into ints and decimals into floats before the
model sees them (`sink_dims=458` arrives as 458, `var=false` as False), so every parser here accepts
those as well as strings. Each error names the model arg and what it expected.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from lmms_var.config import (
    DEFAULT_TAU,
    METHOD_CONFIGS,
    check_fraction,
    check_layer,
    check_non_negative,
    check_positive,
    check_tau,
)

AUTO = "auto"
# The attention interventions a run may choose with `method=` (var=false turns any of them off); each
# builds its config (`METHOD_CONFIGS`) from its rows, which are the config's fields of the same names.
METHODS = tuple(METHOD_CONFIGS)
# ScalingVis's alpha grid in the authors' paper (Chen et al., ICML 2025), for the missing-alpha message.
SCALINGVIS_GRID = (0.5, 0.8, 1.2, 1.5, 2.0)
# The spellings of a true/false model arg (lmms-eval hands `true`/`false` over as bools already).
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
# dtype spellings -> torch's name for the dtype (the models resolve them to torch dtypes).
DTYPE_NAMES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


class ModelArgError(ValueError):
    """A bad `--model_args` value; the model being configured adds its name (`for_model`), so the
    message reads `qwen2_5_vl_var: invalid model_args: ...` and stands out in logs."""

    def __init__(self, message: str, model: str | None = None) -> None:
        super().__init__(f"{model + ': ' if model else ''}invalid model_args: {message}")
        self.message, self.model = message, model

    def for_model(self, model: str) -> "ModelArgError":
        return self if self.model else ModelArgError(self.message, model)


def parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ModelArgError(f"{name} must be true or false, got {value!r}")


def parse_float(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ModelArgError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelArgError(f"{name} must be a number, got {value!r}") from None


def _checked_number(check: Callable[[float, str], None]) -> "Parser":
    """A number parser that then runs `check(number, name)`, a check `VARConfig` shares, naming the arg."""

    def parse(name: str, value: object) -> float:
        number = parse_float(name, value)
        try:
            check(number, name)
        except ValueError as error:
            raise ModelArgError(str(error)) from None
        return number

    return parse


# A share in [0, 1] (`p`, `rho`, `summ`).
parse_fraction = _checked_number(check_fraction)
# A finite number above 0 (an infinite sink threshold finds no sink, so VAR would change nothing).
parse_threshold = _checked_number(check_tau)
# A finite number above 0 (ScalingVis's and AdaptVis's scales), or at least 0 (PAI's alpha and gamma).
parse_positive = _checked_number(check_positive)
parse_non_negative = _checked_number(check_non_negative)


def parse_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(str(value)) < 1:
        raise ModelArgError(f"{name} must be a positive integer, got {value!r}")
    return int(str(value))


def parse_layer(name: str, value: object) -> int:
    """A decoder layer index (an integer >= 0), checked as the configs check theirs."""
    text = str(value).strip()
    number = int(text) if not isinstance(value, bool) and text.lstrip("-").isdigit() else value
    try:
        check_layer(number, name)
    except ValueError as error:
        raise ModelArgError(str(error)) from None
    return number


def parse_optional_layer(name: str, value: object) -> int | None:
    """A decoder layer index, or None (`none`, or not given: the model's last)."""
    return None if value is None or str(value).strip().lower() == "none" else parse_layer(name, value)


def parse_count(name: str, value: object) -> int:
    """0 (off) or a positive integer."""
    return 0 if str(value).strip() == "0" else parse_positive_int(name, value)


def parse_text(_name: str, value: object) -> str | None:
    """A name or a path, as given (None: not given)."""
    return None if value is None else str(value)


def parse_method(name: str, value: object) -> str:
    text = str(value).strip().lower()
    if text not in METHODS:
        raise ModelArgError(f"{name} must be one of {list(METHODS)}, got {value!r}")
    return text


def parse_dtype_name(name: str, value: object) -> str | None:
    """torch's name for the dtype, `auto` (the checkpoint's own), or None (the device's default)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if text not in DTYPE_NAMES:
        raise ModelArgError(f"{name} must be one of {[AUTO, *sorted(DTYPE_NAMES)]}, got {value!r}")
    return DTYPE_NAMES[text]


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
    if value is None or text.lower() in FALSE_WORDS:
        return None
    if text.lower() == AUTO:
        return AUTO
    if isinstance(value, bool) or text.lower() in TRUE_WORDS or not text:
        raise ModelArgError(f"journal must be auto, off or a folder path, got {value!r}")
    return text


Parser = Callable[[str, object], object]


def _one_arg(parse: Callable[[object], object]) -> Parser:
    """A parser whose messages name its one arg already, called as the table calls parsers."""
    return lambda _name, value: parse(value)


class Label(Enum):
    """Where a model arg appears in the leaderboard's run labels (`qwen2_5_vl_var var=true p=0.6 ...`)."""

    LISTED = "listed"  # whenever given (a method's args only while that method is on)
    IF_VARYING = "if varying"  # when runs differ in it
    NEVER = "never"  # it changes what is logged, never a prediction


@dataclass(frozen=True)
class Required:
    """The default of an arg its method cannot run without (ScalingVis's `alpha`); `hint` says what to give."""

    hint: str


@dataclass(frozen=True)
class ModelArg:
    """One model arg: its name, default (or `Required`), parser (raises `ModelArgError` naming the arg), one line of
    help, the method it belongs to (None: every run), whether it can change an answer (the journal's
    key holds those) and where run labels show it."""

    name: str
    default: object
    parse: Parser
    help: str
    method: str | None = None
    changes_answers: bool = True
    label: Label = Label.IF_VARYING

    def parsed(self, value: object) -> object:
        return self.parse(self.name, value)


# In the order run labels list them. `var` is the switch: var=false is the plain model (the baseline).
MODEL_ARGS: tuple[ModelArg, ...] = (
    ModelArg("pretrained", None, parse_text, "checkpoint folder or Hub id (default: the model's)"),
    ModelArg(
        "device", None, parse_text, "cpu, cuda or cuda:N (default: cuda if available)", changes_answers=False
    ),
    ModelArg(
        "device_map",
        None,
        parse_text,
        "where the weights load; auto spreads them over GPUs",
        changes_answers=False,
    ),
    ModelArg("dtype", None, parse_dtype_name, "weights dtype (default: the model's on CUDA, float32 on CPU)"),
    ModelArg("batch_size", 1, parse_positive_int, "prompts generated at a time", changes_answers=False),
    ModelArg("attn_implementation", "sdpa", parse_text, "transformers' attention the intervention wraps"),
    ModelArg("var", True, parse_bool, "false: the plain model, the baseline", label=Label.LISTED),
    ModelArg(
        "method",
        METHODS[0],
        parse_method,
        f"the attention intervention, one of {list(METHODS)}",
        label=Label.LISTED,
    ),
    ModelArg("p", 0.6, parse_fraction, "fraction of sink attention kept", method="var", label=Label.LISTED),
    ModelArg(
        "rho",
        0.5,
        parse_fraction,
        "largest visual-sink share of image attention for a selected head",
        method="var",
        label=Label.LISTED,
    ),
    ModelArg(
        "tau",
        DEFAULT_TAU,
        parse_threshold,
        "sink threshold on the RMS-normalised hidden state",
        method="var",
        label=Label.LISTED,
    ),
    ModelArg(
        "summ",
        0.2,
        parse_fraction,
        "smallest image attention for a selected head",
        method="var",
        label=Label.LISTED,
    ),
    ModelArg(
        "sink_dims",
        None,
        _one_arg(parse_sink_dims),
        "sink channels, ';'-separated, or auto (default: published)",
        method="var",
        label=Label.LISTED,
    ),
    ModelArg(
        "except_last_layer",
        True,
        parse_bool,
        "leave the last decoder layer alone",
        method="var",
        label=Label.LISTED,
    ),
    ModelArg(
        "alpha",
        Required(f"e.g. one of the authors' grid {', '.join(map(str, SCALINGVIS_GRID))}"),
        parse_positive,
        "scale of the last prompt row's scores on image keys (> 1 sharpens, < 1 flattens; required)",
        method="scalingvis",
        label=Label.LISTED,
    ),
    ModelArg(
        "alpha_low",
        0.5,
        parse_positive,
        "ScalingVis's alpha where the plain model's first-token confidence is below threshold",
        method="adaptvis",
        label=Label.LISTED,
    ),
    ModelArg(
        "alpha_high",
        1.5,
        parse_positive,
        "ScalingVis's alpha where that confidence is at least threshold",
        method="adaptvis",
        label=Label.LISTED,
    ),
    ModelArg(
        "threshold",
        0.4,
        parse_fraction,
        "confidence (largest first-token probability) that picks alpha_high",
        method="adaptvis",
        label=Label.LISTED,
    ),
    ModelArg(
        "alpha",
        0.2,
        parse_non_negative,
        "amplification of the last row's scores on image keys (s + alpha * |s|)",
        method="pai",
        label=Label.LISTED,
    ),
    ModelArg(
        "start_layer", 2, parse_layer, "first decoder layer amplified", method="pai", label=Label.LISTED
    ),
    ModelArg(
        "end_layer",
        None,
        parse_optional_layer,
        "decoder layer after the last amplified (default: the number of layers)",
        method="pai",
        label=Label.LISTED,
    ),
    ModelArg(
        "gamma",
        1.1,
        parse_non_negative,
        "logit refine against the text-only stream (1: off)",
        method="pai",
        label=Label.LISTED,
    ),
    ModelArg(
        "diagnostics",
        False,
        parse_bool,
        "log what the intervention did per sample",
        changes_answers=False,
        label=Label.NEVER,
    ),
    ModelArg(
        "diagnostics_path",
        None,
        parse_text,
        "JSONL file or folder for per-sample records (turns diagnostics on)",
        changes_answers=False,
        label=Label.NEVER,
    ),
    ModelArg(
        "attention_maps",
        0,
        parse_count,
        "docs per task to draw attention maps of (0: none)",
        changes_answers=False,
        label=Label.NEVER,
    ),
    ModelArg(
        "attention_maps_path",
        None,
        parse_text,
        "folder for the attention-map figures",
        changes_answers=False,
        label=Label.NEVER,
    ),
    ModelArg(
        "journal",
        AUTO,
        _one_arg(parse_journal),
        "auto, off or a folder: keep answers to resume runs",
        changes_answers=False,
        label=Label.NEVER,
    ),
)
# Model args that place the work or log it but never change an answer: left out of the journal's key.
NOT_OUTPUT_ARGS = frozenset(row.name for row in MODEL_ARGS if not row.changes_answers)


def rows_named(name: str) -> tuple[ModelArg, ...]:
    """The rows of the model arg `name`: one, or one per method that takes an arg of that name."""
    return tuple(row for row in MODEL_ARGS if row.name == name)


def find_model_arg(name: str, method: str | None = None) -> ModelArg | None:
    """The row of the model arg `name` a run of `method` takes; without `method`, its first row (rows
    sharing a name share `changes_answers` and `label`). None when there is none (an upstream arg, or
    unknown)."""
    return next((row for row in rows_named(name) if method is None or row.method in (None, method)), None)


def model_arg(name: str, method: str | None = None) -> ModelArg:
    """The row of the model arg `name` (for `method`, if given), which the table holds."""
    row = find_model_arg(name, method)
    if row is None:
        raise KeyError(f"no model arg {name!r} for method {method!r} in lmms_var.model_args.MODEL_ARGS")
    return row


def method_args(method: str) -> tuple[ModelArg, ...]:
    """The rows a run with `method=method` takes: every run's and the method's own."""
    return tuple(row for row in MODEL_ARGS if row.method in (None, method))


def label_args(method: str) -> tuple[str, ...]:
    """The args a run label lists (when given) for a run of `method`, in the table's order."""
    return tuple(row.name for row in method_args(method) if row.label is Label.LISTED)


@dataclass(frozen=True)
class ModelSettings:
    """Every model arg of the chosen method, parsed (defaults for those not given)."""

    method: str
    values: Mapping[str, object]

    def __getitem__(self, name: str) -> object:
        return self.values[name]


def parse_settings(given: Mapping[str, object]) -> ModelSettings:
    """Parse the table's args among `given` (others, upstream's, are the caller's), defaults for the
    rest of the chosen method's; an arg of another method than the chosen one is an error. A `Required`
    arg not given is an error while the method is on (None with var=false: the plain model)."""
    method = model_arg("method").parsed(given.get("method", model_arg("method").default))
    for name in given:
        rows = rows_named(name)
        if rows and not any(row.method in (None, method) for row in rows):
            owners = " or ".join(f"method={row.method}" for row in rows)
            raise ModelArgError(f"{name} belongs to {owners}, not method={method}")
    enabled = model_arg("var").parsed(given.get("var", model_arg("var").default))
    values = {}
    for row in method_args(method):
        try:
            values[row.name] = _parsed(row, given, enabled)
        except ModelArgError as error:
            # The default method's messages are as they were before there were others.
            if row.method in (None, METHODS[0]):
                raise
            raise ModelArgError(f"method={method}: {error.message}") from None
    return ModelSettings(method, MappingProxyType(values))


def _parsed(row: ModelArg, given: Mapping[str, object], enabled: bool) -> object:
    if row.name in given:
        return row.parsed(given[row.name])
    if not isinstance(row.default, Required):
        return row.parsed(row.default)
    if enabled:
        raise ModelArgError(f"{row.name} is required: give {row.name}=N, {row.default.hint}")
    return None
