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
from dataclasses import dataclass

import torch

from lmms_var.attention_maps.family import decoder_layers, seen_images, text_config, visual_grids, with_answer
from lmms_var.attention_maps.layout import visual_panels
from lmms_var.attention_maps.maps import AttentionMaps, PanelMap
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
    chosen = sorted(set(layers))
    bad = [layer for layer in chosen if isinstance(layer, bool) or not isinstance(layer, int)]
    bad += [layer for layer in chosen if layer not in bad and not 0 <= layer < num_layers]
    if not chosen or bad:
        raise ValueError(f"layers must be decoder layers in [0, {num_layers}), got {list(layers)}")
    return chosen


@contextmanager
def _attention_for_run(model: torch.nn.Module, state: VARState, *, var: bool, eager: bool) -> Iterator[None]:
    """Within: the text decoder runs VAR's attention or the model's own (VAR bypassed), eager or not.

    VAR wraps `state.base_implementation`, so an eager VAR run swaps that too; both are restored.
    """
    config = text_config(model)
    saved = config._attn_implementation, state.base_implementation
    base = EAGER if eager else state.base_implementation
    state.base_implementation = base
    config._attn_implementation = registered_name(base) if var else base
    try:
        yield
    finally:
        config._attn_implementation, state.base_implementation = saved


class _Capture:
    """Per run: the chosen rows' attention summed over rows, per head and key; for the VAR run, A'."""

    def __init__(self, num_heads: int, num_keys: int, device: torch.device) -> None:
        self.before = torch.zeros(num_heads, num_keys, device=device)
        self.after = torch.zeros(num_heads, num_keys, device=device)
        self.selected_per_head = torch.zeros(num_heads, dtype=torch.long, device=device)
        self.selected_pairs: dict[int, int] = {}
        self.sink_positions: set[int] = set()


def _eligible_rows(state: VARState) -> torch.Tensor:
    """Bool[B, T]: the rows VAR may change in this forward (spec step 2), as VAR's state holds them."""
    eligible = torch.zeros_like(state.visual)
    return eligible.scatter_(1, state.rows.to(eligible.device), state.row_valid.to(eligible.device))


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
    modules = decoder_layers(model)
    with ExitStack() as stack, torch.no_grad():
        for layer in layers:
            handle = modules[layer].self_attn.register_forward_hook(
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


def attention_maps(
    handle: VARHandle, processor, inputs: Mapping, settings: MapSettings = MapSettings()
) -> AttentionMaps:
    """Attention maps of one prompt (a batch of one) before and after VAR, as `handle` configures VAR.

    `inputs` are the processor's outputs for the prompt (`family.MODEL_INPUTS`); `handle.model` is
    left as it was found. Raises `ValueError` for a batch, a prompt without visual tokens, or
    `settings.layers` outside the model.
    """
    model, state = handle.model, handle.state
    device = model.device
    inputs = {key: value.to(device) if torch.is_tensor(value) else value for key, value in inputs.items()}
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError(
            f"inputs must hold one prompt, got a batch of {inputs['input_ids'].shape[0]} (see family.split_batch)"
        )
    layers = resolve_layers(settings.layers, len(decoder_layers(model)))
    grids = visual_grids(model, processor, inputs)
    panels = visual_panels(inputs["input_ids"][0].tolist(), grids)
    if not panels:
        raise ValueError("inputs hold no image or video tokens: there is no attention on an image to draw")
    prompt_length = inputs["input_ids"].shape[1]
    answer = None
    if settings.rows == "answer":
        answer = _plain_answer(handle, inputs, settings.max_new_tokens)
        inputs = with_answer(inputs, answer)
    config = text_config(model)
    capture = _Capture(config.num_attention_heads, inputs["input_ids"].shape[1], device)
    rows: list[torch.Tensor] = []

    def chosen_rows() -> torch.Tensor:
        if not rows:
            if settings.rows == "all":
                rows.append(_eligible_rows(state)[0].nonzero().flatten())
            else:  # the rows predicting the answer's tokens (the prompt's last one alone for "last")
                count = 1 if answer is None else len(answer)
                rows.append(torch.arange(prompt_length - 1, prompt_length - 1 + count, device=device))
            if rows[0].numel() == 0:
                raise ValueError("the prompt has no text after its first visual token: no row VAR may change")
        return rows[0]

    def var_hook(layer: int, output) -> None:
        picked = chosen_rows()
        attn = _attention_rows(output, layer, picked)
        if state.acts_on(layer):
            visual, sinks = state.visual.to(attn.device), state.sinks[layer].to(attn.device)
            query_mask = _eligible_rows(state).to(attn.device)[:, picked.to(attn.device)]
            var = state.config
            after, selected = redistribute_with_selection(
                attn, visual, sinks, query_mask, p=var.p, rho=var.rho, summ=var.summ
            )
            capture.sink_positions.update((sinks & visual)[0].nonzero().flatten().tolist())
        else:  # a layer VAR leaves alone: A' is A
            after, selected = attn, torch.zeros(attn.shape[:3], dtype=torch.bool, device=attn.device)
        capture.after += after[0].sum(dim=1).to(device)
        capture.selected_per_head += selected[0].sum(dim=1).to(device)
        capture.selected_pairs[layer] = int(selected.sum())

    def plain_hook(layer: int, output) -> None:
        capture.before += _attention_rows(output, layer, chosen_rows())[0].sum(dim=1).to(device)

    with _attention_for_run(model, state, var=True, eager=True):
        after_logits = _run_and_capture(model, inputs, layers, var_hook, prompt_length)
    with _attention_for_run(model, state, var=False, eager=True):
        before_logits = _run_and_capture(model, inputs, layers, plain_hook, prompt_length)

    if settings.heads == "selected" and capture.selected_per_head.any():
        heads, head_rule = capture.selected_per_head.nonzero().flatten().tolist(), "selected"
    else:
        heads = list(range(config.num_attention_heads))
        head_rule = "all" if settings.heads == "all" else "all: VAR selected none"
    picked = chosen_rows().tolist()
    scale = 1.0 / (len(layers) * len(heads) * len(picked))
    per_key = {
        name: (sums[heads].sum(dim=0) * scale).double().cpu().numpy()
        for name, sums in (("before", capture.before), ("after", capture.after))
    }
    images = seen_images(processor, inputs, grids, panels)
    maps = []
    for panel, image in zip(panels, images, strict=True):
        start, stop = panel.tokens
        cols = panel.grid[1]
        sinks = tuple(divmod(p - start, cols) for p in sorted(capture.sink_positions) if start <= p < stop)
        grid = {name: values[start:stop].reshape(panel.grid) for name, values in per_key.items()}
        maps.append(PanelMap(panel, grid["before"], grid["after"], sinks, image))
    tokenizer = processor.tokenizer
    return AttentionMaps(
        layers=tuple(layers),
        heads=tuple(heads),
        head_rule=head_rule,
        rows=tuple(picked),
        row_rule=settings.rows,
        selected_pairs=capture.selected_pairs,
        var=state.config,
        panels=tuple(maps),
        next_token={
            "before": tokenizer.decode([int(before_logits.argmax())]),
            "after": tokenizer.decode([int(after_logits.argmax())]),
        },
        answer=None if answer is None else tokenizer.decode(answer, skip_special_tokens=True),
    )
