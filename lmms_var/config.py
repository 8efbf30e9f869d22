"""The configs of the attention interventions (VAR, ScalingVis, AdaptVis, PAI), validated once so every
layer can trust them.

This module imports nothing else from the package, so every layer can use it. A config with measured
sink dims comes from `lmms_var.config_from_model` (in `sink_dims.auto`, the layer that measures).
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

# The RMS-normalised sink threshold the paper uses: VARConfig's, the finder's and the models' default.
DEFAULT_TAU = 20.0


class ConfigError(ValueError):
    """A config field's bad value. The message names `Config.field`; `field` and `problem` let a caller
    that knows the value under another name (a model arg, a command-line option) name it so."""

    def __init__(self, config: str, field: str, problem: str) -> None:
        super().__init__(f"{config}.{field} {problem}")
        self.field, self.problem = field, problem


def _fraction_problem(value: object) -> str | None:
    return None if _is_number(value) and 0 <= value <= 1 else f"must be in [0, 1], got {value!r}"


def _positive_problem(value: object) -> str | None:
    ok = _is_number(value) and 0 < value < math.inf
    return None if ok else f"must be a finite number > 0, got {value!r}"


def _non_negative_problem(value: object) -> str | None:
    ok = _is_number(value) and 0 <= value < math.inf
    return None if ok else f"must be a finite number >= 0, got {value!r}"


def _layer_problem(value: object) -> str | None:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= 0
    return None if ok else f"must be a layer index (an integer >= 0), got {value!r}"


def _check_fields(config: object, problems: dict[str, object]) -> None:
    """Raise a `ConfigError` for the first field (name -> its check's problem or None) that has one."""
    for field, problem in problems.items():
        if problem is not None:
            raise ConfigError(type(config).__name__, field, problem)


def _checker(problem_of):
    """`check(value, name)`: a `ValueError` naming `name` where `problem_of(value)` finds a problem."""

    def check(value: object, name: str) -> None:
        problem = problem_of(value)
        if problem is not None:
            raise ValueError(f"{name} {problem}")

    return check


# Checks of a value under a caller's own name for it (the model args' parsers, `lmms-var show`).
check_fraction = _checker(_fraction_problem)  # a share in [0, 1]: p, rho, summ, threshold
check_positive = _checker(_positive_problem)
check_non_negative = _checker(_non_negative_problem)
check_layer = _checker(_layer_problem)


def check_tau(tau: object, name: str = "tau") -> None:
    """A sink threshold: finite and above 0 (an infinite one finds no sink anywhere, so VAR would
    change nothing). `name` is the argument as the caller names it."""
    check_positive(tau, name)


@dataclass(frozen=True)
class VARConfig:
    """Hyper-parameters from VAR_SPEC.md, with the paper's defaults.

    `sink_dims` are the backbone's massive-activation channels; `tau` the RMS-normalised threshold
    for a sink; `rho` the largest visual-sink share of image attention for an image-centric head;
    `summ` the smallest image attention for one; `p` the fraction of sink attention kept.

    `p` and `rho` are the VAR authors' code's, which are the complements of the paper's symbols (the
    authors confirmed it in seilk/VisAttnSink issue 5): the paper writes the fraction of sink
    attention collected (`1 - p` here) and the non-sink share of a head's image attention (`1 - rho`).
    The defaults are the paper's numbers; whether its `p = 0.6` means `p=0.6` or `p=0.4` here is open
    (README, "Checking against the paper"). `rho = 0.5` is its own complement.
    """

    sink_dims: Sequence[int] | int
    tau: float = DEFAULT_TAU
    rho: float = 0.5
    summ: float = 0.2
    p: float = 0.6
    except_last_layer: bool = True

    def __post_init__(self) -> None:
        dims = (self.sink_dims,) if isinstance(self.sink_dims, int) else tuple(self.sink_dims)
        object.__setattr__(self, "sink_dims", dims)
        self._validate()

    def _validate(self) -> None:
        if not self.sink_dims:
            raise ConfigError(
                "VARConfig", "sink_dims", "must list at least one hidden-state channel, got none"
            )
        if any(_layer_problem(dim) for dim in self.sink_dims):  # a channel index is checked as a layer's
            raise ConfigError(
                "VARConfig", "sink_dims", f"must be non-negative integers, got {self.sink_dims!r}"
            )
        fractions = {name: _fraction_problem(getattr(self, name)) for name in ("p", "rho", "summ")}
        _check_fields(self, fractions | {"tau": _positive_problem(self.tau)})

    def active_layers(self, num_layers: int) -> range:
        """Decoder layers VAR acts on: never the first two, and not the last with `except_last_layer`."""
        return range(2, num_layers - 1 if self.except_last_layer else num_layers)


@dataclass(frozen=True)
class ScalingVisConfig:
    """ScalingVis (Chen et al., ICML 2025; INTERVENTIONS_SPEC.md section 1): in every layer and head, the
    last prompt row's scores on visual keys are multiplied by `alpha` before the softmax, at prefill
    only. `alpha > 1` sharpens the attention on the image, `alpha < 1` flattens it, 1 changes nothing.
    """

    alpha: float

    def __post_init__(self) -> None:
        _check_fields(self, {"alpha": _positive_problem(self.alpha)})

    def active_layers(self, num_layers: int) -> range:
        """Every decoder layer."""
        return range(num_layers)


@dataclass(frozen=True)
class AdaptVisConfig:
    """AdaptVis (the same paper): ScalingVis with `alpha_low` where the plain model's first-token
    confidence (its largest probability) is below `threshold`, `alpha_high` where it is not. The
    defaults are the authors' example run."""

    alpha_low: float = 0.5
    alpha_high: float = 1.5
    threshold: float = 0.4

    def __post_init__(self) -> None:
        _check_fields(
            self,
            {
                "alpha_low": _positive_problem(self.alpha_low),
                "alpha_high": _positive_problem(self.alpha_high),
                "threshold": _fraction_problem(self.threshold),
            },
        )

    def active_layers(self, num_layers: int) -> range:
        """Every decoder layer."""
        return range(num_layers)


@dataclass(frozen=True)
class PAIConfig:
    """PAI (Liu et al., ECCV 2024; INTERVENTIONS_SPEC.md section 2): in layers `start_layer` ..
    `end_layer - 1` (None: to the last), the last row of every forward adds `alpha * |s|` to its scores
    on visual keys; the logits are refined against a text-only stream with `gamma` (1: no refine).
    `alpha = 0` and `gamma = 1` together are the plain model. The defaults are the authors'."""

    alpha: float = 0.2
    start_layer: int = 2
    end_layer: int | None = None
    gamma: float = 1.1

    def __post_init__(self) -> None:
        end = self.end_layer
        _check_fields(
            self,
            {
                "alpha": _non_negative_problem(self.alpha),
                "gamma": _non_negative_problem(self.gamma),
                "start_layer": _layer_problem(self.start_layer),
                "end_layer": None if end is None else _layer_problem(end),
            },
        )
        if end is not None and end <= self.start_layer:
            raise ConfigError(
                "PAIConfig", "end_layer", f"must be above start_layer ({self.start_layer}), got {end}"
            )

    def active_layers(self, num_layers: int) -> range:
        """Layers `start_layer` .. `end_layer - 1`; a range beyond the model's `num_layers` is an error
        (a config written for a deeper model would otherwise act on fewer layers than it says)."""
        end = num_layers if self.end_layer is None else self.end_layer
        if end > num_layers:
            raise ConfigError(
                "PAIConfig", "end_layer", f"must be at most the model's {num_layers} layers, got {end}"
            )
        if self.start_layer >= end:
            raise ConfigError(
                "PAIConfig",
                "start_layer",
                f"must be below the model's {num_layers} layers, got {self.start_layer}",
            )
        return range(self.start_layer, end)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The interventions by the name a run or a command chooses them with (`method=`, `lmms-var show --method`).
METHOD_CONFIGS: Mapping[str, type] = MappingProxyType(
    {"var": VARConfig, "scalingvis": ScalingVisConfig, "adaptvis": AdaptVisConfig, "pai": PAIConfig}
)
