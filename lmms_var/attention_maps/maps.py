"""The numbers behind an attention-map figure, and their JSON form (the figure's `.json` next to it)."""

import dataclasses
from dataclasses import dataclass

import numpy as np

from lmms_var.attention_maps.layout import VisualPanel
from lmms_var.config import VARConfig

# What the JSON's fields mean, written into every JSON so a reader needs nothing else.
DEFINITIONS = {
    "before": "attention each visual token receives in the plain model's run (the method off), per token of the "
    "panel's grid (rows x cols, row-major), averaged over `layers`, `heads` and `rows`",
    "after": "the same in the run of `method`: the attention A' it leaves (VAR: the attention it redistributes "
    "to, VAR_SPEC.md step 4; ScalingVis, AdaptVis, PAI: the softmax of the changed scores on visual keys, "
    "INTERVENTIONS_SPEC.md), averaged over the same layers, heads and rows",
    "method": "the attention intervention drawn (VAR, ScalingVis, AdaptVis or PAI); `config` its settings",
    "chosen": "settings the method chose for this prompt (AdaptVis: `alpha`, from the plain model's confidence)",
    "heads": "query heads averaged over; `head_rule` 'selected': the heads the method changed (VAR: "
    "redistributed) for at least one chosen row in at least one chosen layer of its run ('all: VAR selected "
    "none', 'all: PAI changed none', ...: all heads, as it changed none)",
    "rows": "query positions (0-based, in the prompt's tokens) averaged over; `row_rule` 'last': the last "
    "prompt token, 'answer': the rows predicting the plain model's greedy answer (one forward over prompt + "
    "answer; VAR only), 'all': every row the method may change (VAR: text after the first visual token; "
    "ScalingVis, AdaptVis, PAI: the last prompt token)",
    "sinks": "[row, col] of the panel's visual tokens VAR found to be sinks (VAR_SPEC.md step 1) in at least "
    "one chosen layer of the VAR run (none for other methods)",
    "image_mass": "sum of `before` and of `after` over the panel: its share of the averaged attention row",
    "sink_mass": "sum of `before` and of `after` over the panel's `sinks`",
    "selected_pairs": "per chosen layer, the (head, row) pairs among the chosen rows that the method changed "
    "(VAR: redistributed; over all heads)",
    "size": "[width, height] in pixels of the resized image the model saw",
    "grid": "[rows, cols] of visual tokens; each covers a square of size[0] / cols pixels",
    "tiles": "[rows, cols] of tiles the image was cut into (InternVL): its tokens come tile after tile, "
    "each row-major; `before`, `after` and `sinks` are placed on the whole grid",
    "part": "which part of its image the panel shows (e.g. InternVL's 'thumbnail'); '' for the whole image",
    "undrawn_tokens": "tokens of the panel's span that cover no pixels (LLaVA-NeXT's newline features): "
    "not drawn, not in `before`, `after`, the masses or `sinks`",
}


@dataclass(frozen=True)
class PanelMap:
    """One panel's heatmaps: per visual token of its grid, before and after the method."""

    panel: VisualPanel
    before: np.ndarray  # Float64[rows, cols]
    after: np.ndarray  # Float64[rows, cols]
    sinks: tuple[tuple[int, int], ...]  # (row, col) of its visual sinks
    image: np.ndarray  # Uint8[height, width, 3]: what the model saw

    def image_mass(self, values: np.ndarray) -> float:
        return float(values.sum())

    def sink_mass(self, values: np.ndarray) -> float:
        return float(sum(values[row, col] for row, col in self.sinks))

    def to_json(self) -> dict:
        panel = self.panel
        return {
            "kind": panel.kind,
            "index": panel.index,
            "group": panel.group,
            "size": list(panel.size),
            "grid": list(panel.grid),
            "tokens": list(panel.tokens),
            "tiles": list(panel.tiles),
            "part": panel.part,
            "undrawn_tokens": sum(cell is None for cell in panel.cells()),
            "before": self.before.tolist(),
            "after": self.after.tolist(),
            "sinks": [list(sink) for sink in self.sinks],
            "image_mass": {"before": self.image_mass(self.before), "after": self.image_mass(self.after)},
            "sink_mass": {"before": self.sink_mass(self.before), "after": self.sink_mass(self.after)},
        }


@dataclass(frozen=True)
class AttentionMaps:
    """Attention on every panel of one prompt, before and after an intervention, and how it was averaged."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    head_rule: str
    rows: tuple[int, ...]
    row_rule: str
    selected_pairs: dict[int, int]  # layer -> (head, row) pairs the method changed among the rows
    method: str  # the intervention's name (`Intervention.name`: VAR, ScalingVis, AdaptVis, PAI)
    config: object  # its config (`VARConfig`, `ScalingVisConfig`, ...)
    chosen: dict[str, float]  # per-prompt settings it chose (AdaptVis: alpha)
    panels: tuple[PanelMap, ...]
    next_token: dict[str, str]  # "before"/"after": the token each run predicts after the prompt
    answer: str | None  # the plain model's greedy answer, for row_rule "answer"

    @property
    def finds_sinks(self) -> bool:
        """Whether the method finds visual sinks (VAR): only then are sinks outlined and counted."""
        return isinstance(self.config, VARConfig)

    @property
    def verb(self) -> str:
        """What the method did to the (head, row) pairs it changed, as the figure and `show` say it."""
        return "redistributed" if self.finds_sinks else "changed"

    @property
    def total_selected_pairs(self) -> int:
        return sum(self.selected_pairs.values())

    def to_json(self) -> dict:
        return {
            "layers": list(self.layers),
            "heads": list(self.heads),
            "head_rule": self.head_rule,
            "rows": list(self.rows),
            "row_rule": self.row_rule,
            "selected_pairs": {str(layer): count for layer, count in self.selected_pairs.items()},
            "method": self.method,
            "config": dataclasses.asdict(self.config),
            "chosen": self.chosen,
            "next_token": self.next_token,
            "answer": self.answer,
            "images": [panel.to_json() for panel in self.panels],
            "definitions": DEFINITIONS,
        }
