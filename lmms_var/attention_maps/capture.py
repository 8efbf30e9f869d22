"""Attention on the visual tokens, before VAR and after: two forward passes over one prompt.

- The **VAR run**: the prompt through the model with VAR attached (its `VARHandle`), the text
  decoder's kernel switched to eager for that run so each layer returns its attention `A`. At each
  chosen layer a forward hook takes the chosen rows of `A` and turns them into the `A'` VAR
  redistributes to, with the core's `redistribute_with_selection` and the sinks, visual mask and
  allowed rows VAR itself recorded in its state for this prompt. (VAR's own kernel computes the same
  `A'` for the layer's output; `A` is what eager returns, since VAR corrects only the output.)
- The **plain run**: the same prompt with VAR bypassed (the text config set to plain eager), the same
  rows of `A` at the same layers.

Only the chosen rows of the chosen layers are kept, summed over rows as they arrive (`[heads, keys]`
per run), so a long prompt never holds more than one layer's attention at a time. The averages over
layers, heads and rows are taken at the end, when the heads VAR selected are known.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from lmms_var.attention_maps.inputs import model_inputs, with_answer
from lmms_var.attention_maps.layout import panel_pictures, visual_panels
from lmms_var.attention_maps.maps import AttentionMaps, PanelMap
from lmms_var.backbones import Backbone, backbone_for
from lmms_var.checks import check_layers
from lmms_var.config import VARConfig
from lmms_var.core import redistribute_with_selection
from lmms_var.patch import VARHandle, VARState
from lmms_var.patch.attention import registered_name

HEAD_RULES = ("selected", "all")
ROW_RULES = ("last", "answer", "all")
EAGER = "eager"


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


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """`layers` sorted and checked against the model, or `default_layers`."""
    if layers is None:
        return default_layers(num_layers)
    return check_layers(layers, num_layers)


def attention_layers_among(
    layers: Sequence[int] | None, num_layers: int, with_attention: Sequence[int]
) -> list[int]:
    """`resolve_layers`, among the layers `with_attention` (softmax attention): by default the others
    are left out (Qwen3.5's linear-attention layers have no attention map); given ones are refused."""
    chosen = resolve_layers(layers, num_layers)
    linear = [layer for layer in chosen if layer not in with_attention]
    if linear and layers is not None:
        raise ValueError(
            f"layers {linear} are linear-attention layers, which have no attention map; "
            f"choose among {list(with_attention)}"
        )
    return [layer for layer in chosen if layer in with_attention]


# VAR's state (`VARState`) is read in the next three functions only: what the VAR run recorded.


@contextmanager
def _attention_for_run(model: torch.nn.Module, state: VARState, *, var: bool, eager: bool) -> Iterator[None]:
    """Within: the text decoder runs VAR's attention or the model's own (VAR bypassed), eager or not.

    VAR wraps `state.base_implementation`, so an eager VAR run swaps that too; both are restored.
    """
    config = backbone_for(model).text_config(model)
    saved = config._attn_implementation, state.base_implementation
    base = EAGER if eager else state.base_implementation
    state.base_implementation = base
    config._attn_implementation = registered_name(base) if var else base
    try:
        yield
    finally:
        config._attn_implementation, state.base_implementation = saved


def _eligible_rows(state: VARState) -> torch.Tensor:
    """Bool[B, T]: the rows VAR may change in this forward (spec step 2), as VAR's state holds them."""
    eligible = torch.zeros_like(state.visual)
    return eligible.scatter_(1, state.rows.to(eligible.device), state.row_valid.to(eligible.device))


def _recorded_sinks(state: VARState, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(visual Bool[B, T], sinks Bool[B, T]) VAR recorded for `layer` in this forward; None where VAR
    leaves the layer alone."""
    if not state.acts_on(layer, key_length=state.visual.shape[1]):  # a whole prompt: every key is there
        return None
    return state.visual, state.sinks[layer]


def _attention_rows(output, layer: int, rows: torch.Tensor) -> torch.Tensor:
    """Float32[1, H, R, T]: the chosen rows of the attention a layer's `self_attn` returned."""
    weights = output[1]
    if weights is None:
        raise RuntimeError(
            f"decoder layer {layer} returned no attention weights; eager attention was expected"
        )
    return weights[:, :, rows.to(weights.device), :].float()


def _run_and_capture(
    model: torch.nn.Module, inputs: Mapping, layers: Sequence[int], hook, prompt_length: int
) -> torch.Tensor:
    """One forward with `hook(layer, output)` on the chosen layers' attention.

    Returns the logits after the prompt (only those are computed: a long prompt's vocabulary-sized
    logits would cost more than the attention).
    """
    backbone = backbone_for(model)
    modules = backbone.decoder_layers(model)
    with ExitStack() as stack, torch.no_grad():
        for layer in layers:
            handle = backbone.attention_of(modules[layer]).register_forward_hook(
                lambda _module, _args, output, layer=layer: hook(layer, output)
            )
            stack.callback(handle.remove)
        last = torch.tensor([prompt_length - 1], device=inputs["input_ids"].device)
        return model(**inputs, use_cache=False, logits_to_keep=last).logits[0, -1]


def _plain_answer(handle: VARHandle, inputs: dict, max_new_tokens: int) -> torch.Tensor:
    """Long[n]: the plain model's greedy answer (VAR bypassed, the model's own kernel)."""
    with _attention_for_run(handle.model, handle.state, var=False, eager=False), torch.no_grad():
        output = handle.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :]


@dataclass
class _Capture:
    """What the two runs leave: per head and key, the chosen rows' attention summed (`before` in the
    plain run, VAR's `A'` as `after` in the VAR run), and VAR's selections and visual sinks."""

    state: VARState
    config: VARConfig
    row_rule: str
    predicting: range  # the rows of rule "last" or "answer": those predicting the answer's tokens
    before: torch.Tensor  # Float32[H, T]
    after: torch.Tensor  # Float32[H, T]
    selected_per_head: torch.Tensor  # Long[H]
    selected_pairs: dict[int, int] = field(default_factory=dict)  # layer -> (head, row) pairs
    sink_positions: set[int] = field(default_factory=set)  # visual sinks in any chosen layer
    _rows: torch.Tensor | None = None

    def rows(self) -> torch.Tensor:
        """Long[R]; for rule "all" read from VAR's state in the VAR run (it runs first)."""
        if self._rows is None:
            device = self.before.device
            if self.row_rule == "all":
                self._rows = _eligible_rows(self.state)[0].nonzero().flatten().to(device)
            else:
                self._rows = torch.tensor(list(self.predicting), device=device)
            if self._rows.numel() == 0:
                raise ValueError("the prompt has no text after its first visual token: no row VAR may change")
        return self._rows

    def var_hook(self, layer: int, output) -> None:
        """`A'` of the chosen rows, from this run's `A` and what VAR recorded for this layer and prompt."""
        state, rows = self.state, self.rows()
        attn = _attention_rows(output, layer, rows)
        recorded = _recorded_sinks(state, layer)
        if recorded is not None:
            visual, sinks = (mask.to(attn.device) for mask in recorded)
            query_mask = _eligible_rows(state).to(attn.device)[:, rows.to(attn.device)]
            var = self.config
            after, selected = redistribute_with_selection(
                attn, visual, sinks, query_mask, p=var.p, rho=var.rho, summ=var.summ
            )
            self.sink_positions.update((sinks & visual)[0].nonzero().flatten().tolist())
        else:  # a layer VAR leaves alone: A' is A
            after, selected = attn, torch.zeros(attn.shape[:3], dtype=torch.bool, device=attn.device)
        self.after += after[0].sum(dim=1).to(self.after.device)
        self.selected_per_head += selected[0].sum(dim=1).to(self.after.device)
        self.selected_pairs[layer] = int(selected.sum())

    def plain_hook(self, layer: int, output) -> None:
        self.before += _attention_rows(output, layer, self.rows())[0].sum(dim=1).to(self.before.device)

    def heads(self, rule: str) -> tuple[list[int], str]:
        """(heads, head_rule): those VAR selected, or all of them (asked, or VAR selected none)."""
        if rule == "selected" and self.selected_per_head.any():
            return self.selected_per_head.nonzero().flatten().tolist(), "selected"
        return list(range(len(self.selected_per_head))), "all" if rule == "all" else "all: VAR selected none"


def _panel_maps(
    panels, images, per_key: dict[str, np.ndarray], sink_positions: set[int]
) -> tuple[PanelMap, ...]:
    """Each panel's slice of the per-key averages, as its grid, and its sinks as (row, col)."""
    maps = []
    for panel, image in zip(panels, images, strict=True):
        start, stop = panel.tokens
        sinks = tuple(divmod(p - start, panel.grid[1]) for p in sorted(sink_positions) if start <= p < stop)
        grid = {name: values[start:stop].reshape(panel.grid) for name, values in per_key.items()}
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
    handle: VARHandle, processor, inputs: Mapping, settings: MapSettings = MapSettings()
) -> AttentionMaps:
    """Attention maps of one prompt (a batch of one) before and after VAR, as `handle` configures VAR.

    `inputs` are the processor's outputs for the prompt (those the forward takes are used: see
    `Backbone.processor_outputs`); `handle.model` is left as it was found. Raises `ValueError` for a
    batch, a prompt without visual tokens, or `settings.layers` outside the model.
    """
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
        config=handle.config,
        row_rule=settings.rows,
        predicting=range(prompt_length - 1, prompt_length - 1 + (1 if answer is None else len(answer))),
        before=torch.zeros(heads, keys, device=device),
        after=torch.zeros(heads, keys, device=device),
        selected_per_head=torch.zeros(heads, dtype=torch.long, device=device),
    )
    with _attention_for_run(model, state, var=True, eager=True):
        after_logits = _run_and_capture(model, inputs, layers, capture.var_hook, prompt_length)
    with _attention_for_run(model, state, var=False, eager=True):
        before_logits = _run_and_capture(model, inputs, layers, capture.plain_hook, prompt_length)

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
        var=handle.config,
        panels=_panel_maps(panels, pictures, per_key, capture.sink_positions),
        next_token={
            "before": tokenizer.decode([int(before_logits.argmax())]),
            "after": tokenizer.decode([int(after_logits.argmax())]),
        },
        answer=None if answer is None else tokenizer.decode(answer, skip_special_tokens=True),
    )
