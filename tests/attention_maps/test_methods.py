"""Attention maps of ScalingVis, AdaptVis and PAI: the `after` maps are the attention the eager
references of INTERVENTIONS_SPEC.md return (`tests/patch/intervention_references.py`, independent of
`lmms_var.patch`), averaged as the maps average; no sinks; the heads drawn are those whose row changed."""

import numpy as np
import pytest
import torch

from lmms_var import AdaptVisConfig, PAIConfig, ScalingVisConfig, enable_intervention
from lmms_var.attention_maps import MapSettings, attention_maps
from lmms_var.attention_maps.figure import draw_figure
from tests.attention_maps.test_capture import LAYERS, eager, softmax_layers, two_images
from tests.conftest import FAMILIES
from tests.patch.eager_reference import visual_token_ids
from tests.patch.intervention_references import eager_intervention, pai_rule, scalingvis_rule

METHODS = {
    "scalingvis": ScalingVisConfig(alpha=1.8),
    "scalingvis flattening": ScalingVisConfig(alpha=0.5),
    "pai": PAIConfig(alpha=0.5, start_layer=2, gamma=1.1),
}


def reference_rule(config, inputs, num_layers: int):
    if isinstance(config, PAIConfig):
        end = num_layers if config.end_layer is None else config.end_layer
        return pai_rule(config.alpha, config.start_layer, end, inputs)
    return scalingvis_rule(config.alpha, inputs)


def reference_maps(model, processor, model_type: str, inputs, rule) -> dict[str, np.ndarray]:
    """Per key, the last prompt row's attention averaged over `LAYERS` and every head: the plain model's
    (transformers' eager attention) and the reference method's."""
    layers = [layer for layer in LAYERS if layer in softmax_layers(model)]
    ids = visual_token_ids(model_type, processor)
    with torch.no_grad():
        with eager(model):
            plain = model(**inputs, output_attentions=True, use_cache=False).attentions
        with eager_intervention(model, rule, inputs, ids):
            changed = model(**inputs, output_attentions=True, use_cache=False).attentions
    with_weights = softmax_layers(model)
    return {
        name: torch.stack([run[with_weights.index(layer)][0, :, -1].float() for layer in layers])
        .mean(dim=(0, 1))
        .double()
        .numpy()
        for name, run in (("before", plain), ("after", changed))
    }


def drawn(maps) -> dict[str, np.ndarray]:
    """Per visual key of the prompt (in order), the maps' before and after values."""
    values = {"before": [], "after": []}
    for panel_map in maps.panels:
        cells = panel_map.panel.cells()
        for name, grid in (("before", panel_map.before), ("after", panel_map.after)):
            values[name] += [grid[cell] for cell in cells if cell is not None]
    return {name: np.array(value) for name, value in values.items()}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_after_is_the_reference_methods_attention(tiny_models, model_type, method):
    model, processor = tiny_models(model_type)
    config = METHODS[method]
    inputs = two_images(processor)
    num_layers = model.config.get_text_config().num_hidden_layers
    expected = reference_maps(
        model, processor, model_type, inputs, reference_rule(config, inputs, num_layers)
    )
    layers = tuple(layer for layer in LAYERS if layer in softmax_layers(model))
    with enable_intervention(model, config, tokenizer=processor.tokenizer) as handle:
        maps = attention_maps(handle, processor, inputs, MapSettings(layers=layers, heads="all"))
    visual = torch.isin(inputs["input_ids"][0], torch.tensor(visual_token_ids(model_type, processor)))
    positions = visual.nonzero().flatten().numpy()
    drawn_positions = [
        start + index
        for panel_map in maps.panels
        for start in [panel_map.panel.tokens[0]]
        for index, cell in enumerate(panel_map.panel.cells())
        if cell is not None
    ]
    keep = np.isin(positions, drawn_positions)
    values = drawn(maps)
    for name in ("before", "after"):
        np.testing.assert_allclose(values[name], expected[name][positions[keep]], atol=1e-6)
    assert not np.allclose(values["before"], values["after"])  # the method changed the picture
    assert maps.method == type(handle.intervention).name and maps.config == config
    assert all(not panel_map.sinks for panel_map in maps.panels) and not maps.finds_sinks
    assert maps.rows == (inputs["input_ids"].shape[1] - 1,) and maps.head_rule == "all"
    # Every head's last row changed in every layer the method acts on, and none elsewhere.
    heads = model.config.get_text_config().num_attention_heads
    acting = set(config.active_layers(num_layers))
    assert maps.selected_pairs == {layer: heads if layer in acting else 0 for layer in layers}


def test_selected_heads_are_those_whose_row_changed(tiny_model):
    """`heads="selected"` for a method without VAR's head selection: the heads whose row it changed;
    PAI from layer 3 on changes none in layers 1-2, so there all heads are drawn and the rule says why."""
    model, processor = tiny_model
    inputs = two_images(processor)
    heads = model.config.get_text_config().num_attention_heads
    with enable_intervention(model, PAIConfig(alpha=0.5, gamma=1.0)) as handle:
        maps = attention_maps(handle, processor, inputs, MapSettings(layers=LAYERS))
    assert (maps.head_rule, maps.heads) == ("selected", tuple(range(heads)))
    with enable_intervention(model, PAIConfig(alpha=0.5, start_layer=3, gamma=1.0)) as handle:
        maps = attention_maps(handle, processor, inputs, MapSettings(layers=(1, 2)))
    assert (maps.head_rule, maps.heads) == ("all: PAI changed none", tuple(range(heads)))
    assert maps.total_selected_pairs == 0
    assert all(np.array_equal(panel_map.before, panel_map.after) for panel_map in maps.panels)


@pytest.mark.parametrize(("threshold", "chosen"), [(0.0, "alpha_high"), (1.0, "alpha_low")])
def test_adaptvis_draws_the_alpha_it_chose_from_the_plain_confidence(tiny_model, threshold, chosen):
    """The plain model's confidence is never below 0 and always below 1: each threshold picks one alpha,
    and the maps are ScalingVis's with it."""
    model, processor = tiny_model
    config = AdaptVisConfig(alpha_low=0.5, alpha_high=1.8, threshold=threshold)
    alpha = getattr(config, chosen)
    inputs = two_images(processor)
    with enable_intervention(model, config) as handle:
        maps = attention_maps(handle, processor, inputs, MapSettings(layers=LAYERS, heads="all"))
    assert maps.chosen == {"alpha": pytest.approx(alpha)}
    with enable_intervention(model, ScalingVisConfig(alpha=alpha)) as handle:
        scaled = attention_maps(handle, processor, inputs, MapSettings(layers=LAYERS, heads="all"))
    for ours, theirs in zip(maps.panels, scaled.panels, strict=True):
        np.testing.assert_allclose(ours.after, theirs.after, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(ours.before, theirs.before)  # the choice's plain pass is not tapped
    figure = draw_figure(maps, model="tiny", question="?")
    header = [text.get_text() for text in figure.texts]
    assert any(
        f"AdaptVis alpha_low=0.5 alpha_high=1.8 threshold={threshold:g} (chose alpha={alpha:g})" in line
        for line in header
    )
    assert figure.legends == []  # no sinks to outline


def test_answer_rows_are_refused_for_a_method_that_changes_one_row(tiny_model):
    model, processor = tiny_model
    with (
        enable_intervention(model, ScalingVisConfig(alpha=1.5)) as handle,
        pytest.raises(ValueError, match="rows 'answer' is for VAR; ScalingVis changes the last row"),
    ):
        attention_maps(handle, processor, two_images(processor), MapSettings(rows="answer"))
