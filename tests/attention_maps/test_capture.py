"""The heatmaps are an honest picture of the numbers, checked against attention computed independently.

"Before": transformers' own `output_attentions` of the plain model. "After": the VAR run's attention
(`output_attentions` with VAR on an eager base), sinks found from its hidden states, and spec step 4
written out here by hand. Both averaged over the chosen layers, heads and rows, then compared per
visual token with what `attention_maps` puts on every panel, for every family of the test matrix.
"""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from lmms_var import VARConfig, enable_var
from lmms_var.attention_maps import MapSettings, attention_maps, default_layers, resolve_layers
from lmms_var.attention_maps.figure import draw_figure
from lmms_var.core import find_sink_tokens
from lmms_var.testing.images import random_image
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.conftest import FAMILIES, TINY_SPEC, TINY_TAU
from tests.patch.conftest import QUESTIONS, chat_text, prompt_inputs
from tests.patch.eager_reference import visual_token_ids

# except_last_layer=False: VAR acts on layers 2 and 3 of the 4-layer tiny model, so averages span two.
CONFIG = VARConfig(sink_dims=TINY_SPEC.sink_dims, tau=TINY_TAU, except_last_layer=False)
LAYERS = (1, 2, 3)  # layer 1 is one VAR leaves alone: there A' is A


def softmax_layers(model) -> list[int]:
    """The decoder layers that return attention weights: not linear-attention ones (Qwen3.5's), as
    transformers' `layer_types` says."""
    text_config = model.config.get_text_config()
    types = getattr(text_config, "layer_types", None)
    return [
        i for i in range(text_config.num_hidden_layers) if types is None or types[i] != "linear_attention"
    ]


@contextmanager
def eager(model):
    """Within: the text decoder runs transformers' eager attention, which returns attention weights."""
    with pytest.MonkeyPatch.context() as switch:
        switch.setattr(model.config.get_text_config(), "_attn_implementation", "eager")
        yield


def redistributed_by_hand(attn, visual, sinks, allowed, config: VARConfig):
    """Spec steps 3 and 4 for every row of `attn` [H, R, K]: (A', selected [H, R])."""
    eps = 1e-6 * visual.sum()
    image = (attn * visual).sum(-1)
    visual_sinks = (attn * (visual & sinks)).sum(-1)
    receivers = visual & ~sinks
    selected = (visual_sinks / (image + eps) <= config.rho) & (image >= config.summ) & allowed
    selected &= (attn * receivers).sum(-1) > 0
    budget = (1 - config.p) * (attn * sinks).sum(-1, keepdim=True)
    moved = torch.where(sinks, config.p * attn, attn)
    moved = moved + receivers * budget * attn / (attn * receivers).sum(-1, keepdim=True)
    return torch.where(selected[..., None], moved, attn), selected


def independent_maps(model, processor, model_type: str, inputs, rows_rule: str):
    """Per key (before, after), the heads used and the visual sink positions, without `attention_maps`."""
    ids = inputs["input_ids"][0]
    visual = torch.isin(ids, torch.tensor(visual_token_ids(model_type, processor)))
    allowed = (visual.cumsum(0) > 0) & ~visual
    rows = allowed.nonzero().flatten() if rows_rule == "all" else torch.tensor([len(ids) - 1])
    with torch.no_grad(), eager(model):
        plain = model(**inputs, output_attentions=True, use_cache=False).attentions
        with enable_var(model, CONFIG):
            var_run = model(**inputs, output_attentions=True, output_hidden_states=True, use_cache=False)
    with_weights = softmax_layers(model)
    active = set(CONFIG.active_layers(len(var_run.hidden_states) - 1))
    before, after, selected, sink_positions = [], [], [], set()
    for layer in (layer for layer in LAYERS if layer in with_weights):
        before.append(plain[with_weights.index(layer)][0][:, rows].float())
        attn = var_run.attentions[with_weights.index(layer)][0][:, rows].float()
        if layer in active:
            sinks = find_sink_tokens(var_run.hidden_states[layer], CONFIG.sink_dims, CONFIG.tau)[0]
            sink_positions |= set((sinks & visual).nonzero().flatten().tolist())
            attn, chosen = redistributed_by_hand(attn, visual, sinks, allowed[rows], CONFIG)
        else:
            chosen = torch.zeros(attn.shape[:2], dtype=torch.bool)
        after.append(attn)
        selected.append(chosen)
    heads = torch.stack(selected).any(dim=(0, 2)).nonzero().flatten()
    assert len(heads) > 0, "the tiny model's planted sinks should make VAR select some heads"
    average = {
        name: torch.stack(values)[:, heads].mean(dim=(0, 1, 2)).double().numpy()
        for name, values in (("before", before), ("after", after))
    }
    return average, heads.tolist(), rows.tolist(), sink_positions, int(torch.stack(selected).sum())


def two_images(processor):
    return prompt_inputs(processor, [(2, QUESTIONS[0])])


def image_and_video(processor):
    frames = np.stack([np.asarray(random_image(i, size=(56, 84))) for i in range(4)])
    content = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": QUESTIONS[0]}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=[random_image(9)], videos=[frames], return_tensors="pt")


# Every family with two images and every row VAR may change; Qwen2.5-VL also with the last row only;
# the families that take videos with a video of two temporal groups after an image.
HONEST_CASES = [
    *((model_type, two_images, "all") for model_type in FAMILIES),
    (TINY_SPEC.model_type, two_images, "last"),
    *(
        (model_type, image_and_video, "all")
        for model_type in FAMILIES
        if len(TINY_FAMILIES[model_type].visual_tokens) > 1
    ),
]


@pytest.mark.parametrize(("model_type", "make_inputs", "rows"), HONEST_CASES)
def test_every_panel_holds_the_averaged_attention_before_and_after_var(
    tiny_models, model_type, make_inputs, rows
):
    model, processor = tiny_models(model_type)
    inputs = make_inputs(processor)
    expected, heads, expected_rows, sink_positions, pairs = independent_maps(
        model, processor, model_type, inputs, rows
    )
    layers = tuple(layer for layer in LAYERS if layer in softmax_layers(model))
    with enable_var(model, CONFIG) as handle:
        maps = attention_maps(handle, processor, inputs, MapSettings(layers=layers, rows=rows))
    assert (maps.layers, list(maps.heads), list(maps.rows)) == (layers, heads, expected_rows)
    assert maps.head_rule == "selected" and maps.total_selected_pairs == pairs > 0
    assert len(maps.panels) == (2 if make_inputs is two_images else 3)  # a video of 4 frames: 2 groups
    visual = torch.isin(inputs["input_ids"][0], torch.tensor(visual_token_ids(model_type, processor)))
    drawn = [position for panel_map in maps.panels for position in range(*panel_map.panel.tokens)]
    assert drawn == visual.nonzero().flatten().tolist()  # every visual token on one panel, in prompt order
    for panel_map in maps.panels:
        start, stop = panel_map.panel.tokens
        data = panel_map.to_json()
        for name in ("before", "after"):
            values = expected[name][start:stop]
            np.testing.assert_allclose(np.array(data[name]).flatten(), values, atol=1e-6)
            # The per-patch values add up to the attention mass on the image from these rows, layers, heads.
            assert data["image_mass"][name] == pytest.approx(values.sum(), abs=1e-6)
        sinks = {start + row * panel_map.panel.grid[1] + col for row, col in data["sinks"]}
        assert sinks == {p for p in sink_positions if start <= p < stop}
        assert data["sink_mass"]["before"] == pytest.approx(expected["before"][sorted(sinks)].sum(), abs=1e-6)
    assert any(panel_map.sinks for panel_map in maps.panels)


def test_selected_pairs_are_the_ones_var_redistributes_in_its_own_run(tiny_model):
    """All rows and all VAR's layers: the count equals the patch's own diagnostics (sdpa, fused path)."""
    model, processor = tiny_model
    inputs = two_images(processor)
    with enable_var(model, CONFIG, diagnostics=True) as handle:
        with torch.no_grad():
            model(**inputs, use_cache=False)
        redistributed = handle.diagnostics()[0]["redistributed_rows"]
        maps = attention_maps(handle, processor, inputs, MapSettings(layers=[2, 3], rows="all", heads="all"))
    assert maps.total_selected_pairs == redistributed > 0
    assert maps.heads == tuple(range(model.config.get_text_config().num_attention_heads))


def test_the_model_is_left_as_it_was_found(tiny_model):
    model, processor = tiny_model
    inputs = two_images(processor)
    text_config = model.config.get_text_config()
    with enable_var(model, CONFIG) as handle, torch.no_grad():
        implementation, base = text_config._attn_implementation, handle.state.base_implementation
        logits = model(**inputs).logits
        attention_maps(handle, processor, inputs, MapSettings(rows="answer", max_new_tokens=2))
        assert (text_config._attn_implementation, handle.state.base_implementation) == (implementation, base)
        torch.testing.assert_close(model(**inputs).logits, logits, rtol=0, atol=0)


# Every head selected and all sink attention moved: unlike CONFIG, this changes the tiny model's greedy answer.
ANSWER_CHANGING = VARConfig(
    sink_dims=TINY_SPEC.sink_dims, tau=TINY_TAU, p=0.0, rho=1.0, summ=0.0, except_last_layer=False
)


def test_answer_rows_are_those_predicting_the_plain_models_answer(tiny_model):
    """The answer is the plain model's (VAR bypassed), and the rows are those predicting its tokens."""
    model, processor = tiny_model
    inputs = two_images(processor)
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        plain_answer = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, length:]
    with enable_var(model, ANSWER_CHANGING) as handle:
        maps = attention_maps(handle, processor, inputs, MapSettings(rows="answer", max_new_tokens=3))
        with torch.no_grad():
            var_answer = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, length:]
    assert maps.answer == processor.tokenizer.decode(plain_answer, skip_special_tokens=True)
    # VAR's own answer differs: an answer generated with VAR on would fail the check above.
    assert maps.answer != processor.tokenizer.decode(var_answer, skip_special_tokens=True)
    assert list(maps.rows) == list(range(length - 1, length - 1 + len(plain_answer)))


def test_the_figure_outlines_exactly_the_sinks_and_shares_one_colour_scale(tiny_model):
    model, processor = tiny_model
    with enable_var(model, CONFIG) as handle:
        maps = attention_maps(handle, processor, two_images(processor), MapSettings(layers=LAYERS))
    figure = draw_figure(maps, model="tiny", question="?")
    heatmaps = [axes for axes in figure.axes if len(axes.images) == 2]
    assert len(heatmaps) == 2 * len(maps.panels)
    norms = {(image.norm.vmin, image.norm.vmax) for axes in heatmaps for image in axes.images[1:]}
    assert len(norms) == 1  # one scale for every heatmap
    assert len([axes for axes in figure.axes if getattr(axes, "_colorbar", None) is not None]) == 1
    for index, panel_map in enumerate(maps.panels):
        for axes, values in zip(
            heatmaps[2 * index : 2 * index + 2], (panel_map.before, panel_map.after), strict=True
        ):
            np.testing.assert_array_equal(axes.images[1].get_array(), values)
            boxes = {
                (
                    round(r.get_x()),
                    round(r.get_y()),
                    round(r.get_x() + r.get_width()),
                    round(r.get_y() + r.get_height()),
                )
                for r in axes.patches
            }
            assert boxes == {panel_map.panel.pixel_box(row, col) for row, col in panel_map.sinks}


def test_bad_settings_and_inputs_are_refused(tiny_model):
    model, processor = tiny_model
    with pytest.raises(ValueError, match=r"layers must be decoder layers in \[0, 4\), got \[4\]"):
        resolve_layers([4], 4)
    with pytest.raises(ValueError, match="heads must be one of"):
        MapSettings(heads="some")
    with pytest.raises(ValueError, match="rows must be one of"):
        MapSettings(rows="first")
    assert default_layers(28) == list(range(10, 19)) and default_layers(4) == [2]
    text_only = processor(text=[chat_text(processor, 0, "no image")], return_tensors="pt")
    with enable_var(model, CONFIG) as handle:
        with pytest.raises(ValueError, match="no image or video tokens"):
            attention_maps(handle, processor, text_only)
        with pytest.raises(ValueError, match="inputs must hold one prompt, got a batch of 2"):
            attention_maps(handle, processor, prompt_inputs(processor, [(1, "a"), (1, "b")]))


def test_a_linear_attention_layer_is_refused_naming_the_others(tiny_models):
    model, processor = tiny_models("qwen3_5")
    with enable_var(model, CONFIG) as handle, pytest.raises(ValueError) as error:
        attention_maps(handle, processor, two_images(processor), MapSettings(layers=[1, 2]))
    assert str(error.value) == (
        "layers [1] are linear-attention layers, which have no attention map; choose among [2]"
    )
