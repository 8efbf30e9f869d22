"""The registry of interventions: which `Intervention` a config builds. A new method is one module
(its `Intervention` subclass) and one row here."""

from lmms_var.config import AdaptVisConfig, PAIConfig, ScalingVisConfig, VARConfig
from lmms_var.patch.intervention import Intervention
from lmms_var.patch.pai import PAI
from lmms_var.patch.scalingvis import AdaptVis, ScalingVis
from lmms_var.patch.var import VAR

INTERVENTIONS: dict[type, type[Intervention]] = {
    VARConfig: VAR,
    ScalingVisConfig: ScalingVis,
    AdaptVisConfig: AdaptVis,
    PAIConfig: PAI,
}


def intervention_for(config: object) -> Intervention:
    """The intervention a config describes; a `TypeError` naming the accepted configs otherwise."""
    kind = INTERVENTIONS.get(type(config))
    if kind is None:
        accepted = ", ".join(config_type.__name__ for config_type in INTERVENTIONS)
        raise TypeError(f"config must be one of {accepted}, got {type(config).__name__}")
    return kind(config)
