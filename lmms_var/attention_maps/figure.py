"""Draw `AttentionMaps`: per panel, the image the model saw under its attention, before and after the
method (VAR, ScalingVis, AdaptVis or PAI).

One row per panel (image or video temporal group), before on the left and after on the right, one
colour scale for every heatmap of the figure (one colorbar), VAR's visual sinks outlined, and a caption
per panel with the numbers. The JSON next to the PNG holds every value drawn.
"""

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lmms_var.attention_maps.maps import AttentionMaps, PanelMap

# Checkpoints written by `lmms_var.testing` carry one of these files: a random one, or a constructed one
# whose file holds its own note.
TINY_SPEC_FILE = "tiny_spec.json"
CONSTRUCTED_SPEC_FILE = "constructed_model.json"
RANDOM_MODEL_NOTE = "RANDOM tiny model (lmms_var.testing): this picture shows the mechanics, not what VAR does for a real model"
MAX_PANELS = 8  # panels drawn; the JSON holds them all
PANEL_WIDTH = 3.6  # inches per heatmap
CAPTION_HEIGHT = 0.75  # inches under each row of heatmaps
HEADER_LINE = 0.22  # inches per line of the header
TITLE_SPACE = 0.5  # inches between the header and the first panels, for their titles
# Perceptually uniform, its lightness rising with the value: more attention always reads lighter.
COLOURMAP = "viridis"
HEAT_ALPHA = 0.55
SINK_COLOUR = "magenta"
GAMMA = 0.5  # square-root colour scale: sinks can take far more than the other tokens


def model_note(pretrained: str | Path) -> str | None:
    """The warning a figure of a model written by `lmms_var.testing` carries (random or constructed
    weights), so that nobody reads it as a real model's; None for any other model."""
    folder = Path(pretrained)
    if (folder / TINY_SPEC_FILE).is_file():
        return RANDOM_MODEL_NOTE
    constructed = folder / CONSTRUCTED_SPEC_FILE
    return json.loads(constructed.read_text())["note"] if constructed.is_file() else None


def _span(values: list[int]) -> str:
    """`10-18` for a run of consecutive values, else the list."""
    if len(values) > 1 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _settings(maps: AttentionMaps) -> str:
    """The method's settings as the header writes them (AdaptVis: with the alpha it chose)."""
    config = maps.config
    if maps.finds_sinks:
        return (
            f"p={config.p:g} rho={config.rho:g} summ={config.summ:g} tau={config.tau:g} "
            f"sink dims {', '.join(map(str, config.sink_dims))}"
        )
    given = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    text = " ".join(f"{name}={value:g}" for name, value in given.items() if value is not None)
    chosen = " ".join(f"{name}={value:g}" for name, value in maps.chosen.items())
    return text + (f" (chose {chosen})" if chosen else "")


def _header(maps: AttentionMaps, model: str, question: str, note: str | None) -> list[str]:
    method = maps.method
    rows = {
        "last": "the last prompt token",
        "answer": "the answer's tokens",
        "all": f"every row {method} may change",
    }
    lines = [
        f"Attention on the image before and after {method}  ·  {model}",
        *textwrap.wrap(f"Question: {question}", 110, max_lines=2, placeholder=" ..."),
        f"layers {_span(list(maps.layers))}  ·  {len(maps.heads)} heads ({maps.head_rule})  ·  "
        f"rows: {rows[maps.row_rule]} ({len(maps.rows)})  ·  {method} {_settings(maps)}",
        f"next token: {maps.next_token['before']!r} before, {maps.next_token['after']!r} after {method}"
        + (f"  ·  plain model's answer: {maps.answer!r}" if maps.answer is not None else ""),
    ]
    return lines + ([note] if note else [])


def _tiling(panel) -> str:
    """`, in 2x3 tiles (dotted)` for a tiled panel, and how many of its tokens cover no pixels."""
    tiles = "" if panel.tiles == (1, 1) else f", in {panel.tiles[0]}x{panel.tiles[1]} tiles (dotted)"
    undrawn = sum(cell is None for cell in panel.cells())
    return tiles + (f", + {_count(undrawn, 'newline token')} (not drawn)" if undrawn else "")


def _caption(panel_map: PanelMap, maps: AttentionMaps) -> str:
    panel = panel_map.panel
    (width, height), (rows, cols) = panel.size, panel.grid
    before, after = panel_map.before, panel_map.after
    sinks = (
        f"  ·  on its {_count(len(panel_map.sinks), 'visual sink')} (outlined) {panel_map.sink_mass(before):.3f} "
        f"before, {panel_map.sink_mass(after):.3f} after"
        if maps.finds_sinks
        else ""
    )
    return (
        f"{panel.label()}: {width}x{height} px as the model saw it, {rows}x{cols} tokens of "
        f"{panel.token_size[0]}x{panel.token_size[1]} px{_tiling(panel)}\n"
        f"attention on it {panel_map.image_mass(before):.3f} before, {panel_map.image_mass(after):.3f} after"
        f"{sinks}\n"
        f"{maps.method} {maps.verb} {maps.total_selected_pairs} (head, row) pairs of the chosen rows in layers "
        f"{_span(list(maps.layers))} (for the whole prompt)"
    )


def _draw_panel(axes, panel_map: PanelMap, values: np.ndarray, norm: PowerNorm, title: str):
    """The image, its heatmap (one block per token) and the sinks' outlines; returns the heatmap."""
    width, height = panel_map.panel.size
    # In grey, so that colour means attention only.
    grey = panel_map.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    axes.imshow(grey, cmap="gray", vmin=0, vmax=255, extent=(0, width, height, 0))
    heat = axes.imshow(
        values,
        cmap=COLOURMAP,
        norm=norm,
        alpha=HEAT_ALPHA,
        extent=(0, width, height, 0),
        interpolation="nearest",
    )
    tile_rows, tile_cols = panel_map.panel.tiles
    for row in range(1, tile_rows):
        axes.axhline(row * height / tile_rows, color="white", linestyle=":", linewidth=1.0)
    for col in range(1, tile_cols):
        axes.axvline(col * width / tile_cols, color="white", linestyle=":", linewidth=1.0)
    for row, col in panel_map.sinks:
        left, top, right, bottom = panel_map.panel.pixel_box(row, col)
        axes.add_patch(
            Rectangle(
                (left, top), right - left, bottom - top, fill=False, edgecolor=SINK_COLOUR, linewidth=1.6
            )
        )
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title, fontsize=9)
    return heat


def draw_figure(maps: AttentionMaps, *, model: str, question: str, note: str | None = None) -> Figure:
    """The figure for `maps` (at most `MAX_PANELS` panels; the caption says when some are left out)."""
    shown = maps.panels[:MAX_PANELS]
    header = _header(maps, model, question, note)
    if len(maps.panels) > len(shown):
        header.append(f"first {len(shown)} of {len(maps.panels)} panels shown; the JSON holds all of them")
    heights = [PANEL_WIDTH * p.panel.size[1] / p.panel.size[0] for p in shown]
    header_height = HEADER_LINE * len(header) + TITLE_SPACE
    total = header_height + sum(heights) + CAPTION_HEIGHT * len(shown)
    figure = Figure(figsize=(2 * PANEL_WIDTH + 1.6, total), dpi=100)
    ratios = [h for height in heights for h in (height, CAPTION_HEIGHT)]
    grid = figure.add_gridspec(
        len(ratios),
        3,
        width_ratios=[PANEL_WIDTH, PANEL_WIDTH, 0.15],
        height_ratios=ratios,
        left=0.02,
        right=0.9,
        top=1 - header_height / total,
        bottom=0.0,
        wspace=0.04,
        hspace=0.12,
    )
    vmax = max(max(p.before.max(), p.after.max()) for p in shown) or 1.0
    norm = PowerNorm(gamma=GAMMA, vmin=0.0, vmax=vmax)
    heat = None
    for index, panel_map in enumerate(shown):
        for column, (name, values) in enumerate(
            ((f"before {maps.method}", panel_map.before), (f"after {maps.method}", panel_map.after))
        ):
            axes = figure.add_subplot(grid[2 * index, column])
            heat = _draw_panel(axes, panel_map, values, norm, f"{panel_map.panel.label()}, {name}")
        caption = figure.add_subplot(grid[2 * index + 1, :2])
        caption.axis("off")
        caption.text(0.5, 0.92, _caption(panel_map, maps), ha="center", va="top", fontsize=8, linespacing=1.4)
    colorbar = figure.colorbar(heat, cax=figure.add_subplot(grid[:, 2]))
    colorbar.solids.set_alpha(1.0)
    colorbar.set_label("attention per visual token (square-root scale, all panels)", fontsize=8)
    for line, text in enumerate(header):
        is_note = note is not None and text == note
        figure.text(
            0.02,
            1 - HEADER_LINE * (line + 0.8) / total,
            text,
            fontsize=10 if line == 0 else 8,
            fontweight="bold" if line == 0 or is_note else "normal",
            color="firebrick" if is_note else "black",
            va="top",
        )
    if maps.finds_sinks:
        figure.legend(
            handles=[
                Rectangle(
                    (0, 0), 1, 1, fill=False, edgecolor=SINK_COLOUR, linewidth=1.6, label="visual sink (VAR)"
                )
            ],
            loc="upper right",
            bbox_to_anchor=(0.99, 1 - HEADER_LINE * 0.3 / total),
            fontsize=8,
            frameon=False,
        )
    return figure


def save_attention_maps(
    maps: AttentionMaps, path: str | Path, *, model: str, question: str, note: str | None = None
) -> tuple[Path, Path]:
    """Write the figure to `path` (a `.png`) and its numbers to the same name with `.json`; returns both."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"model": model, "question": question, "note": note, "figure": path.name, **maps.to_json()}
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    draw_figure(maps, model=model, question=question, note=note).savefig(path, dpi=100)
    return path, json_path
