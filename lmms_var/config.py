"""The configs of the attention interventions (VAR, ScalingVis, AdaptVis, PAI), validated once so every
layer can trust them.

This module imports nothing else from the package, so every layer can use it. A config with measured
sink dims comes from `lmms_var.config_from_model` (in `sink_dims.auto`, the layer that measures).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The RMS-normalised sink threshold the paper uses: VARConfig's, the finder's and the models' default.
DEFAULT_TAU = 20.0


def check_tau(tau: object, name: str = "tau") -> None:
    """A sink threshold: a finite number above 0 (an infinite one finds no sink anywhere, so VAR
    would silently change nothing). `name` is the argument as the caller names it."""
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
            raise ValueError("VARConfig.sink_dims must list at least one hidden-state channel, got none")
        for dim in self.sink_dims:
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
                raise ValueError(f"VARConfig.sink_dims must be non-negative integers, got {self.sink_dims!r}")
        for name in ("p", "rho", "summ"):
            check_fraction(getattr(self, name), f"VARConfig.{name}")
        check_tau(self.tau, "VARConfig.tau")

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
        check_positive(self.alpha, "ScalingVisConfig.alpha")

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
        check_positive(self.alpha_low, "AdaptVisConfig.alpha_low")
        check_positive(self.alpha_high, "AdaptVisConfig.alpha_high")
        check_fraction(self.threshold, "AdaptVisConfig.threshold")

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
        check_non_negative(self.alpha, "PAIConfig.alpha")
        check_non_negative(self.gamma, "PAIConfig.gamma")
        check_layer(self.start_layer, "PAIConfig.start_layer")
        if self.end_layer is not None:
            check_layer(self.end_layer, "PAIConfig.end_layer")
            if self.end_layer <= self.start_layer:
                raise ValueError(
                    f"PAIConfig.end_layer must be above start_layer ({self.start_layer}), got {self.end_layer}"
                )

    def active_layers(self, num_layers: int) -> range:
        """Layers `start_layer` .. `end_layer - 1`; a range beyond the model's `num_layers` is an error
        (a config written for a deeper model would otherwise act on fewer layers than it says)."""
        end = num_layers if self.end_layer is None else self.end_layer
        if end > num_layers:
            raise ValueError(
                f"PAIConfig.end_layer must be at most the model's {num_layers} layers, got {end}"
            )
        if self.start_layer >= end:
            raise ValueError(
                f"PAIConfig.start_layer must be below the model's {num_layers} layers, got {self.start_layer}"
            )
        return range(self.start_layer, end)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_fraction(value: object, name: str) -> None:
    """A share in [0, 1] (`p`, `rho`, `summ`); `name` is the argument as the caller names it."""
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def check_positive(value: object, name: str) -> None:
    if not _is_number(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_non_negative(value: object, name: str) -> None:
    if not _is_number(value) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_layer(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a layer index (an integer >= 0), got {value!r}")


# The interventions by the name a run or a command chooses them with (`method=`, `lmms-var show --method`).
METHOD_CONFIGS: dict[str, type] = {
    "var": VARConfig,
    "scalingvis": ScalingVisConfig,
    "adaptvis": AdaptVisConfig,
    "pai": PAIConfig,
}
