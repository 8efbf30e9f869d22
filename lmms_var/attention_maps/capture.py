"""Attention on the visual tokens, before an intervention and after: two forward passes over one prompt.

- The **intervention run**: the prompt through the model with the intervention attached (its
  handle) and its own kernel. At each chosen layer a tap on the attention function takes the
  layer's queries and keys and computes the chosen rows of the attention `A` from them, then the
  `A'` the method leaves from the plan it recorded in its state for this layer and prompt: VAR's
  with the core's `redistribute_with_selection` and its sinks, image mask and allowed rows;
  ScalingVis's, AdaptVis's and PAI's by the row-local change of the scores on visual keys
  (`core.score_change`, INTERVENTIONS_SPEC.md section 3) on the rows they change. (The method's own
  kernel computes the same `A'` for the layer's output.)
- The **plain run**: the same prompt with the intervention bypassed, the same rows of `A` at the
  same layers.

Only the chosen rows are computed, a block of rows at a time (at most `BLOCK_ELEMENTS` float32
values per block, all keys of its rows), and summed over rows as they come (`[heads, keys]` per
run). So memory grows with the rows drawn times the keys, never with the keys squared as the
eager kernel's full attention would: a long prompt costs time, not memory. The averages over
layers, heads and rows are taken at the end, when the heads the method changed are known.
AdaptVis's alpha is chosen before the intervention run, from a plain pass of the prompt, as its
hook would.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from lmms_var.attention_maps.inputs import model_inputs, with_answer
from lmms_var.attention_maps.layout import panel_pictures, visual_panels
from lmms_var.attention_maps.maps import AttentionMaps, PanelMap
from lmms_var.backbones import Backbone, backbone_for
from lmms_var.checks import check_layers
from lmms_var.config import VARConfig
from lmms_var.core import redistribute_with_selection
from lmms_var.core.score_change import renormaliser, visual_weight_change
from lmms_var.patch import InterventionHandle, InterventionState
from lmms_var.patch.attention import attention_function, registered_name
from lmms_var.patch.explicit import LayerCall, explicit_attention, scores
from lmms_var.patch.masks import blocked_keys
from lmms_var.patch.prefill import DEFAULT_BLOCK_ELEMENTS
from lmms_var.patch.row_local import ScoreChangePlan
from lmms_var.patch.var import VARLayerPlan

HEAD_RULES = ("selected", "all")
ROW_RULES = ("last", "answer", "all")
# Float32 values in one block of rows' attention ([1, heads, rows, keys]), as VAR's own prefill blocks.
BLOCK_ELEMENTS = DEFAULT_BLOCK_ELEMENTS
TAP_ATTRIBUTE = "_lmms_var_maps_tap"
_TAP_PREFIX = "lmms_var_maps_"


@dataclass(frozen=True)
class MapSettings:
    """Which attention to average: decoder layers (None: the middle third), heads, query rows.

    `max_new_tokens` bounds the plain model's greedy answer for `rows="answer"`.
    """

    layers: Sequence[int] | None = None
    heads: str = "selected"
    rows: str = "last"
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.heads not in HEAD_RULES:
            raise ValueError(f"heads must be one of {list(HEAD_RULES)}, got {self.heads!r}")
        if self.rows not in ROW_RULES:
            raise ValueError(f"rows must be one of {list(ROW_RULES)}, got {self.rows!r}")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")


def default_layers(num_layers: int) -> list[int]:
    """The middle third of the decoder (layers 10-18 of 28), where the paper's figures look."""
    return list(range(-(-num_layers // 3), -(-2 * num_layers // 3)))


def map_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """The decoder layers the maps average: `layers` sorted and checked against the model, or
    `default_layers`."""
    if layers is None:
        return default_layers(num_layers)
    return check_layers(layers, num_layers)


def attention_layers_among(
    layers: Sequence[int] | None, num_layers: int, with_attention: Sequence[int]
) -> list[int]:
    """`map_layers`, among the layers `with_attention` (softmax attention): by default the others
    are left out (Qwen3.5's linear-attention layers have no attention map); given ones are refused."""
    chosen = map_layers(layers, num_layers)
    linear = [layer for layer in chosen if layer not in with_attention]
    if linear and layers is not None:
        raise ValueError(
            f"layers {linear} are linear-attention layers, which have no attention map; "
            f"choose among {list(with_attention)}"
        )
    return [layer for layer in chosen if layer in with_attention]


LayerHook = Callable[[int, LayerCall], None]


@dataclass(frozen=True)
class _Tap:
    """What the tapped attention function of a run does: run `implementation`, hand `layers`' calls to `hook`."""

    implementation: str  # VAR's registered function or the model's own kernel
    layers: frozenset[int]
    hook: LayerHook | None


def _tapped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The run's attention function for every layer; at the chosen layers its queries and keys are also
    handed to the tap's hook (which computes the rows it needs from them)."""
    tap: _Tap = getattr(module, TAP_ATTRIBUTE)
    kernel = attention_function(module, tap.implementation)
    output = kernel(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if tap.hook is not None and module.layer_idx in tap.layers:
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        with torch.no_grad():
            tap.hook(module.layer_idx, LayerCall(query, key, value, attention_mask, scaling))
    return output


def _tap_name(base_implementation: str) -> str:
    """The name the tap is registered under for a base kernel, with that kernel's mask."""
    name = _TAP_PREFIX + base_implementation
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _tapped_attention)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_implementation])
    return name


# The intervention's state is read through its public methods only: what the intervention run recorded.


@contextmanager
def _tapped_run(
    model: torch.nn.Module,
    state: InterventionState,
    *,
    var: bool,
    layers: Sequence[int] = (),
    hook: LayerHook | None = None,
) -> Iterator[None]:
    """Within: the text decoder runs the intervention's attention or the model's own (the intervention
    bypassed), with `hook` on `layers`; the config and the attention modules are restored after."""
    backbone = backbone_for(model)
    config = backbone.text_config(model)
    base = state.settings.base_implementation
    tap = _Tap(registered_name(base) if var else base, frozenset(layers), hook)
    decoder_layers = backbone.decoder_layers(model)
    # Only layers with softmax attention call the attention function (not Qwen3.5's linear ones).
    modules = [backbone.attention_of(decoder_layers[index]) for index in backbone.attention_layers(model)]
    saved = config._attn_implementation
    with ExitStack() as restore:
        for module in modules:
            setattr(module, TAP_ATTRIBUTE, tap)
            restore.callback(delattr, module, TAP_ATTRIBUTE)
        config._attn_implementation = _tap_name(base)
        restore.callback(setattr, config, "_attn_implementation", saved)
        yield


def row_blocks(
    call: LayerCall, rows: torch.Tensor, block_elements: int = BLOCK_ELEMENTS
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows of the block Long[r], their attention Float32[1, H, r, K]) for `rows` (query indices of this
    forward), computed from the layer's queries and keys a block at a time: at most `block_elements`
    values per block (one row at least), so no [K, K] tensor is built however long the prompt."""
    heads, query_length, key_length = call.query.shape[1], call.query.shape[2], call.key.shape[2]
    rows = rows.to(call.query.device)
    step = max(1, block_elements // (heads * key_length))
    for start in range(0, rows.numel(), step):
        block = rows[start : start + step]
        blocked = blocked_keys(call.attention_mask, block[None], query_length, key_length)
        query = call.query[:, :, block]
        yield block, explicit_attention(query, call.key, blocked, call.scaling, may_be_empty=False)


def _last_logits(model: torch.nn.Module, inputs: Mapping, prompt_length: int) -> torch.Tensor:
    """One forward (inside a `_tapped_run`); returns the logits after the prompt (only those are
    computed: a long prompt's vocabulary-sized logits would cost more than the attention)."""
    with torch.no_grad():
        last = torch.tensor([prompt_length - 1], device=inputs["input_ids"].device)
        return model(**inputs, use_cache=False, logits_to_keep=last).logits[0, -1]


def _plain_answer(handle: InterventionHandle, inputs: dict, max_new_tokens: int) -> torch.Tensor:
    """Long[n]: the plain model's greedy answer (VAR bypassed, the model's own kernel)."""
    with handle.suspended(), _tapped_run(handle.model, handle.state, var=False), torch.no_grad():
        output = handle.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :]


def _var_after(
    plan: VARLayerPlan, call: LayerCall, rows: torch.Tensor, attn: torch.Tensor, eligible: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAR's `A'` of a block of rows and the (head, row) pairs it redistributed."""
    image_mask, sinks = (mask.to(call.query.device) for mask in (plan.image_mask, plan.sinks))
    var = plan.config
    return redistribute_with_selection(
        attn, image_mask, sinks, eligible[:, rows], p=var.p, rho=var.rho, summ=var.summ
    )


def _score_change_after(
    plan: ScoreChangePlan, call: LayerCall, rows: torch.Tensor, attn: torch.Tensor, eligible: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ScalingVis's, AdaptVis's or PAI's `A'` of a block of rows: on the rows the method changes, each
    visual key's weight grows by `exp(g(s)) - 1` and the row is renormalised (INTERVENTIONS_SPEC.md
    section 3); the (head, row) pairs whose attention changed."""
    device = call.query.device
    keys = plan.keys
    image_mask = torch.zeros(1, call.key.shape[2], dtype=torch.bool, device=device)
    image_mask[0, keys.index[0][keys.present[0]].to(device)] = True
    logits = scores(call.query[:, :, rows], call.key, call.scaling)  # [1, H, r, K]
    on_image = image_mask[:, None, None, :] & eligible[:, rows].to(device)[:, None, :, None]
    # Off the changed entries no change (exp of another key's large change would overflow into 0 * inf).
    change = torch.where(on_image, plan.change(logits, plan.alpha[0].to(device)), 0.0)
    delta = visual_weight_change(attn, change)
    after = (attn + delta) / renormaliser(delta)[..., None]
    return after, (delta != 0).any(dim=-1)


# The plan each method records per layer -> how its `A'` follows from `A`.
AFTER_BY_PLAN = {VARLayerPlan: _var_after, ScoreChangePlan: _score_change_after}


def check_rows(rows: str, config: object) -> None:
    """`rows="answer"` reads the rows of the plain model's answer in one forward over prompt and answer:
    the rows VAR changes there are those it changes while generating (every text row after the image);
    a method that changes the last row of each forward only would change the wrong one."""
    if rows == "answer" and not isinstance(config, VARConfig):
        raise ValueError(
            f"rows 'answer' is for VAR; {type(config).__name__.removesuffix('Config')} changes the last row "
            "of a forward only: use rows 'last' (the row predicting the answer's first token)"
        )


@dataclass
class _Capture:
    """What the two runs leave: per head and key, the chosen rows' attention summed (`before` in the
    plain run, the method's `A'` as `after` in the intervention run), the (head, row) pairs it changed
    and VAR's visual sinks."""

    state: InterventionState
    row_rule: str
    predicting: range  # the rows of rule "last" or "answer": those predicting the answer's tokens
    before: torch.Tensor  # Float32[H, T]
    after: torch.Tensor  # Float32[H, T]
    selected_per_head: torch.Tensor  # Long[H]
    selected_pairs: dict[int, int] = field(default_factory=dict)  # layer -> (head, row) pairs
    sink_positions: set[int] = field(default_factory=set)  # visual sinks in any chosen layer
    _rows: torch.Tensor | None = None

    def rows(self) -> torch.Tensor:
        """Long[R]; for rule "all" read from the intervention's state in its run (it runs first)."""
        if self._rows is None:
            device = self.before.device
            if self.row_rule == "all":
                self._rows = self.state.eligible_rows()[0].nonzero().flatten().to(device)
            else:
                self._rows = torch.tensor(list(self.predicting), device=device)
            if self._rows.numel() == 0:
                name = self.state.settings.intervention.name
                raise ValueError(
                    f"the prompt has no row {name} may change (no text after its first visual token)"
                )
        return self._rows

    def intervention_hook(self, layer: int, call: LayerCall) -> None:
        """`A'` of the chosen rows, from this run's `A` and what the method recorded for this layer and prompt."""
        plan = self.state.layer_plan(layer)
        if plan is not None:
            after_of = AFTER_BY_PLAN[type(plan)]
            eligible = self.state.eligible_rows().to(call.query.device)
            if isinstance(plan, VARLayerPlan):
                sinks = (plan.sinks & plan.image_mask)[0]
                self.sink_positions.update(sinks.nonzero().flatten().tolist())
        pairs = 0
        for rows, attn in row_blocks(call, self.rows()):
            if plan is not None:
                after, selected = after_of(plan, call, rows, attn, eligible)
            else:  # a layer the method leaves alone: A' is A
                after, selected = attn, torch.zeros(attn.shape[:3], dtype=torch.bool, device=attn.device)
            self.after += after[0].sum(dim=1).to(self.after.device)
            self.selected_per_head += selected[0].sum(dim=1).to(self.after.device)
            pairs += int(selected.sum())
        self.selected_pairs[layer] = pairs

    def plain_hook(self, layer: int, call: LayerCall) -> None:
        for _rows, attn in row_blocks(call, self.rows()):
            self.before += attn[0].sum(dim=1).to(self.before.device)

    def heads(self, rule: str) -> tuple[list[int], str]:
        """(heads, head_rule): those the method changed (VAR: selected), or all of them (asked, or it
        changed none)."""
        if rule == "selected" and self.selected_per_head.any():
            return self.selected_per_head.nonzero().flatten().tolist(), "selected"
        settings = self.state.settings
        verb = "selected" if isinstance(settings.config, VARConfig) else "changed"
        everything = "all" if rule == "all" else f"all: {settings.intervention.name} {verb} none"
        return list(range(len(self.selected_per_head))), everything


def _panel_maps(
    panels, images, per_key: dict[str, np.ndarray], sink_positions: set[int]
) -> tuple[PanelMap, ...]:
    """Each panel's slice of the per-key averages, placed on its grid, and its sinks as (row, col)."""
    maps = []
    for panel, image in zip(panels, images, strict=True):
        start, stop = panel.tokens
        cells = panel.cells()
        sinks = tuple(
            sorted(cells[p - start] for p in sink_positions if start <= p < stop and cells[p - start])
        )
        drawn = [index for index, cell in enumerate(cells) if cell is not None]
        rows, cols = (np.array(axis) for axis in zip(*(cells[index] for index in drawn), strict=True))
        grid = {}
        for name, values in per_key.items():
            grid[name] = np.zeros(panel.grid)
            grid[name][rows, cols] = values[start:stop][drawn]
        maps.append(PanelMap(panel, grid["before"], grid["after"], sinks, image))
    return tuple(maps)


def _panels_and_pictures(backbone: Backbone, model: torch.nn.Module, processor, inputs: Mapping):
    """The prompt's panels and, per panel, the picture the model saw (from the processor's outputs)."""
    grids = backbone.visual_grids(inputs, processor)
    placeholder_ids = backbone.placeholder_ids(model.config)
    panels = visual_panels(inputs["input_ids"][0].tolist(), grids, placeholder_ids)
    if not panels:
        raise ValueError("inputs hold no image or video tokens: there is no attention on an image to draw")
    return panels, panel_pictures(panels, grids, backbone.processor_outputs.pictures(inputs, processor))


def attention_maps(
    handle: InterventionHandle, processor, inputs: Mapping, settings: MapSettings = MapSettings()
) -> AttentionMaps:
    """Attention maps of one prompt (a batch of one) before and after the intervention `handle` attaches
    (VAR, ScalingVis, AdaptVis or PAI), as it configures it.

    `inputs` are the processor's outputs for the prompt (those the forward takes are used: see
    `Backbone.processor_outputs`); `handle.model` is left as it was found. Raises `ValueError` for a
    batch, a prompt without visual tokens, `settings.layers` outside the model, or `rows="answer"`
    for a method other than VAR (`check_rows`).
    """
    check_rows(settings.rows, handle.config)
    model, state = handle.model, handle.state
    backbone, device = backbone_for(model), model.device
    inputs = {
        key: value.to(device) if torch.is_tensor(value) else value
        for key, value in model_inputs(backbone, inputs).items()
    }
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(
            f"inputs must hold one prompt, got a batch of {inputs['input_ids'].shape[0]} "
            "(see lmms_var.attention_maps.inputs.split_batch)"
        )
    num_layers = len(backbone.decoder_layers(model))
    layers = attention_layers_among(settings.layers, num_layers, backbone.attention_layers(model))
    panels, pictures = _panels_and_pictures(backbone, model, processor, inputs)
    prompt_length = inputs["input_ids"].shape[1]
    answer = None
    if settings.rows == "answer":
        answer = _plain_answer(handle, inputs, settings.max_new_tokens)
        inputs = with_answer(backbone, inputs, answer)
    heads, keys = backbone.text_config(model).num_attention_heads, inputs["input_ids"].shape[1]
    capture = _Capture(
        state=state,
        row_rule=settings.rows,
        predicting=range(prompt_length - 1, prompt_length - 1 + (1 if answer is None else len(answer))),
        before=torch.zeros(heads, keys, device=device),
        after=torch.zeros(heads, keys, device=device),
        selected_per_head=torch.zeros(heads, dtype=torch.long, device=device),
    )
    # Per-prompt options (AdaptVis's alpha) chosen before the tapped runs, so their plain pass is not tapped.
    options = handle.intervention.prompt_options(handle, inputs)
    with (
        handle.prompt_options(**options),
        _tapped_run(model, state, var=True, layers=layers, hook=capture.intervention_hook),
    ):
        after_logits = _last_logits(model, inputs, prompt_length)
    with handle.suspended(), _tapped_run(model, state, var=False, layers=layers, hook=capture.plain_hook):
        before_logits = _last_logits(model, inputs, prompt_length)

    heads, head_rule = capture.heads(settings.heads)
    rows = capture.rows().tolist()
    scale = 1.0 / (len(layers) * len(heads) * len(rows))
    per_key = {
        name: (sums[heads].sum(dim=0) * scale).double().cpu().numpy()
        for name, sums in (("before", capture.before), ("after", capture.after))
    }
    tokenizer = processor.tokenizer
    return AttentionMaps(
        layers=tuple(layers),
        heads=tuple(heads),
        head_rule=head_rule,
        rows=tuple(rows),
        row_rule=settings.rows,
        selected_pairs=capture.selected_pairs,
        method=handle.intervention.name,
        config=handle.config,
        # As the float32 the method used, in its shortest decimal (1.8, not 1.7999999523).
        chosen={name: float(str(value.flatten()[0].cpu().numpy())) for name, value in options.items()},
        panels=_panel_maps(panels, pictures, per_key, capture.sink_positions),
        next_token={
            "before": tokenizer.decode([int(before_logits.argmax())]),
            "after": tokenizer.decode([int(after_logits.argmax())]),
        },
        answer=None if answer is None else tokenizer.decode(answer, skip_special_tokens=True),
    )
