"""One prompt's attention maps before and after an intervention (VAR, ScalingVis, AdaptVis, PAI), drawn
and saved: what `lmms-var show` and the demo draw, the intervention attached for the prompt alone."""

from collections.abc import Mapping
from pathlib import Path

import torch

from lmms_var.attention_maps.capture import MapSettings, attention_maps
from lmms_var.attention_maps.figure import save_attention_maps
from lmms_var.attention_maps.maps import AttentionMaps
from lmms_var.patch import enable_intervention


def figure_for_prompt(
    model: torch.nn.Module,
    processor,
    inputs: Mapping,
    config: object,
    output: Path,
    *,
    question: str,
    model_name: str,
    settings: MapSettings | None = None,
    note: str | None = None,
) -> AttentionMaps:
    """Attach the intervention `config` describes (`VARConfig`, `ScalingVisConfig`, ...) to `model`, draw
    the maps of one prompt's processor outputs `inputs` to `output` (a `.png`, and its numbers beside it
    as `.json`), detach; returns the maps.

    `question` and `model_name` are written on the figure, as is `note` (what the model is);
    `settings` default to `MapSettings()`.
    """
    # The tokenizer is what PAI's refine needs to attach; the maps draw the attention part only.
    with enable_intervention(model, config, tokenizer=processor.tokenizer) as handle:
        maps = attention_maps(handle, processor, inputs, settings or MapSettings())
    save_attention_maps(maps, output, model=model_name, question=question, note=note)
    return maps
