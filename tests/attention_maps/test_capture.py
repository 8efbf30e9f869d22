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
from torch.utils._python_dispatch import TorchDispatchMode

from lmms_var import VARConfig, enable_var
from lmms_var.attention_maps import MapSettings, attention_maps, default_layers, map_layers
from lmms_var.attention_maps.capture import BLOCK_ELEMENTS, row_blocks
from lmms_var.attention_maps.figure import draw_figure
from lmms_var.core import find_sink_tokens
from lmms_var.patch.explicit import LayerCall
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
    # Two images, or an image and a video (a panel per frame or temporal group); an image seen in parts
    # (InternVL's tiles and thumbnail, LLaVA-NeXT's base and high-res view) has a panel per part.
    assert len({(panel_map.panel.kind, panel_map.panel.index) for panel_map in maps.panels}) == 2
    visual = torch.isin(inputs["input_ids"][0], torch.tensor(visual_token_ids(model_type, processor)))
    drawn = [position for panel_map in maps.panels for position in range(*panel_map.panel.tokens)]
    assert drawn == visual.nonzero().flatten().tolist()  # every visual token on one panel, in prompt order
    for panel_map in maps.panels:
        start, stop = panel_map.panel.tokens
        data = panel_map.to_json()
        # (row, col) of each token: tiles placed where they were cut; None: a newline feature, not drawn.
        cells = panel_map.panel.cells()
        drawn = [index for index, cell in enumerate(cells) if cell is not None]
        rows, cols = data["grid"]
        assert sorted(cells[i] for i in drawn) == [(row, col) for row in range(rows) for col in range(cols)]
        for name in ("before", "after"):
            values = expected[name][start:stop][drawn]
            drawn_values = [data[name][row][col] for row, col in (cells[i] for i in drawn)]
            np.testing.assert_allclose(drawn_values, values, atol=1e-6)
            # The per-patch values add up to the attention mass on the image from these rows, layers, heads.
            assert data["image_mass"][name] == pytest.approx(values.sum(), abs=1e-6)
        sinks = {start + cells.index(tuple(sink)) for sink in data["sinks"]}
        assert sinks == {p for p in sink_positions if start <= p < stop and cells[p - start] is not None}
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
        implementation, base = text_config._attn_implementation, handle.state.settings.base_implementation
        logits = model(**inputs).logits
        attention_maps(handle, processor, inputs, MapSettings(rows="answer", max_new_tokens=2))
        assert (text_config._attn_implementation, handle.state.settings.base_implementation) == (
            implementation,
            base,
        )
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
        map_layers([4], 4)
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


@pytest.mark.parametrize("mask", ["none", "boolean", "additive"])
def test_row_blocks_compute_the_chosen_rows_of_softmax_in_bounded_blocks(mask):
    """Rows in blocks of at most `block_elements` values give the rows of the full causal softmax, GQA
    included, whatever mask format the base kernel got."""
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, length, dim = 4, 2, 23, 8
    query = torch.randn(1, heads, length, dim, generator=generator)
    key = torch.randn(1, kv_heads, length, dim, generator=generator)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    masks = {
        "none": None,
        "boolean": causal[None, None],
        "additive": torch.zeros(1, 1, length, length).masked_fill(~causal, torch.finfo(torch.float32).min),
    }
    call = LayerCall(query, key, key, masks[mask], 0.5)
    logits = (query @ key.repeat_interleave(heads // kv_heads, dim=1).mT * 0.5).masked_fill(
        ~causal, -torch.inf
    )
    expected = logits.softmax(-1)
    rows = torch.tensor([3, 4, 9, 15, 21, 22])
    block_elements = heads * length * 2  # two rows a block
    blocks = list(row_blocks(call, rows, block_elements=block_elements))
    assert [block.tolist() for block, _ in blocks] == [[3, 4], [9, 15], [21, 22]]
    assert all(attn.numel() <= block_elements for _, attn in blocks)
    torch.testing.assert_close(torch.cat([attn for _, attn in blocks], dim=2), expected[:, :, rows])


class _ShapeLog(TorchDispatchMode):
    """Records the shape of every tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in torch.utils._pytree.tree_leaves(result):
            if isinstance(value, torch.Tensor):
                self.shapes.add(tuple(value.shape))
        return result


@pytest.mark.parametrize("rows", ["last", "answer", "all"])
def test_a_long_prompt_never_builds_keys_by_keys_attention(tiny_model, rows):
    """With a question of ~1,000 tokens (4 heads x K x K would be 4M values, beyond a block) no
    operation of the capture, VAR's run or the plain run returns a [.., K, K] tensor, for every row
    rule: memory grows with the rows drawn times the keys, not with the keys squared."""
    model, processor = tiny_model
    question = " ".join(f"word{index}" for index in range(300))
    inputs = prompt_inputs(processor, [(1, question)])
    keys = inputs["input_ids"].shape[1]
    assert model.config.get_text_config().num_attention_heads * keys * keys > 4 * BLOCK_ELEMENTS
    with enable_var(model, CONFIG) as handle, _ShapeLog() as log:
        maps = attention_maps(
            handle, processor, inputs, MapSettings(layers=LAYERS, rows=rows, max_new_tokens=2)
        )
    assert len(maps.rows) >= 1
    squared = [shape for shape in log.shapes if len(shape) >= 2 and min(shape[-2:]) >= keys]
    assert squared == []
    # The check sees attention-sized tensors: the blocks of rows over all keys (the prompt's, and the
    # answer's after it for rows "answer").
    assert any(len(shape) == 4 and shape[-1] >= keys for shape in log.shapes)


def _luminance(rgba: np.ndarray) -> np.ndarray:
    """Relative luminance of sRGB colours [..., 3 or 4]: what lightness rises with."""
    rgb = np.asarray(rgba)[..., :3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def test_more_attention_reads_lighter_so_a_lowered_sink_darkens_after_var(tiny_model):
    """The colour scale's lightness rises with the value over its whole range (a rainbow's does not),
    and a visual sink whose attention VAR lowered is drawn darker in its 'after' panel than in 'before'."""
    model, processor = tiny_model
    with enable_var(model, CONFIG) as handle:
        maps = attention_maps(
            handle, processor, two_images(processor), MapSettings(layers=LAYERS, rows="all")
        )
    figure = draw_figure(maps, model="tiny", question="?")
    heatmaps = [axes for axes in figure.axes if len(axes.images) == 2]
    assert np.all(np.diff(_luminance(heatmaps[0].images[1].cmap(np.linspace(0, 1, 256)))) > 0)
    lowered = 0
    for index, panel_map in enumerate(maps.panels):
        before_axes, after_axes = heatmaps[2 * index : 2 * index + 2]
        assert before_axes.get_title().endswith("before VAR") and after_axes.get_title().endswith("after VAR")
        before_heat, after_heat = before_axes.images[1], after_axes.images[1]
        for row, col in panel_map.sinks:
            if panel_map.after[row, col] < panel_map.before[row, col]:
                lowered += 1
                drawn_before = before_heat.to_rgba(before_heat.get_array()[row, col])
                drawn_after = after_heat.to_rgba(after_heat.get_array()[row, col])
                assert _luminance(drawn_after) < _luminance(drawn_before)
    assert lowered > 0


def test_a_linear_attention_layer_is_refused_naming_the_others(tiny_models):
    model, processor = tiny_models("qwen3_5")
    with enable_var(model, CONFIG) as handle, pytest.raises(ValueError) as error:
        attention_maps(handle, processor, two_images(processor), MapSettings(layers=[1, 2]))
    assert str(error.value) == (
        "layers [1] are linear-attention layers, which have no attention map; choose among [2]"
    )
