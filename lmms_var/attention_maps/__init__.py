"""Attention maps on the image, before and after an intervention (VAR, ScalingVis, AdaptVis, PAI):
capture, token-to-pixel layout, figure and JSON.

Above `patch` (it runs a model with an intervention's handle), below `models` and `tools` (`lmms-var
show`, the `attention_maps=N` model arg, the demo). What depends on the model family comes from its
backbone (`lmms_var.backbones`): the grids, the pictures the model saw, the processor outputs it takes.
"""

from lmms_var.attention_maps.capture import MapSettings, attention_maps, default_layers, map_layers
from lmms_var.attention_maps.figure import draw_figure, model_note, save_attention_maps
from lmms_var.attention_maps.layout import VisualPanel, visual_panels
from lmms_var.attention_maps.maps import AttentionMaps, PanelMap
from lmms_var.attention_maps.with_var import figure_for_prompt

__all__ = [
    "AttentionMaps",
    "MapSettings",
    "PanelMap",
    "VisualPanel",
    "attention_maps",
    "default_layers",
    "draw_figure",
    "figure_for_prompt",
    "map_layers",
    "model_note",
    "save_attention_maps",
    "visual_panels",
]
