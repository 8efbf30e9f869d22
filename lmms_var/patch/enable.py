"""`enable_var`: attach VAR to a Hugging Face vision-language model without touching its modeling file.

The model's `Backbone` (`lmms_var.backbones`) says where its text decoder, layers and attention
modules are and which tokens are visual; any family with a backbone works.

Three attachment points, all undone by `VARHandle.remove()`:
- the text config's attention implementation is switched to a registered VAR function wrapping the
  model's own kernel (the vision tower keeps its own config and attention);
- a forward pre-hook on the multimodal model reads `input_ids` and the cache length to start each
  prompt (prefill) or extend it (decode);
- forward pre-hooks on the decoder layers VAR acts on find sink tokens in the residual stream.
"""

from dataclasses import dataclass, field

import torch
from torch.utils.hooks import RemovableHandle

from lmms_var.backbones import Backbone, backbone_for
from lmms_var.config import VARConfig
from lmms_var.patch.attention import STATE_ATTRIBUTE, registered_name
from lmms_var.patch.state import PromptSinks, VARState


@dataclass
class VARHandle:
    """A live VAR attachment; `remove()` restores the model exactly. Usable as a context manager."""

    model: torch.nn.Module
    state: VARState
    _text_config: object
    _hooks: list[RemovableHandle] = field(default_factory=list)
    _attention_modules: list[torch.nn.Module] = field(default_factory=list)
    _removed: bool = False

    @property
    def config(self) -> VARConfig:
        return self.state.config

    def diagnostics(self) -> list[dict]:
        """What VAR did for each sample of the last prompt batch (needs `diagnostics=True`)."""
        return self.state.diagnostics()

    def prefill_sinks(self) -> list[PromptSinks]:
        """Per prompt of the last prefill: its visual tokens and the visual sinks VAR found among them,
        over all its layers (no sink: VAR changed nothing). Synchronises the GPU: read it after `generate`."""
        return self.state.prefill_sinks()

    def remove(self) -> None:
        if self._removed:
            return
        for hook in self._hooks:
            hook.remove()
        for module in self._attention_modules:
            delattr(module, STATE_ATTRIBUTE)
        self._text_config._attn_implementation = self.state.base_implementation
        self._removed = True

    def __enter__(self) -> "VARHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


def _past_length(cache) -> int:
    """Positions already in the cache (transformers 5 no longer passes `cache_position`)."""
    return 0 if cache is None else int(cache.get_seq_length())


def enable_var(
    model: torch.nn.Module,
    config: VARConfig,
    *,
    fused: bool = True,
    diagnostics: bool = False,
    compile: bool = False,
    use_triton: bool = True,
) -> VARHandle:
    """Attach VAR to `model` (of a family in `lmms_var.backbones`); returns a handle whose `remove()` undoes it.

    `fused=False` materialises full attention rows (the slow reference); `diagnostics=True` records
    per-sample sink counts and redistributed mass, read with `handle.diagnostics()`.
    On CUDA with Triton installed, the fused path runs as one Triton kernel per layer
    (`patch/row_kernels.py`): there, small PyTorch operations cost more in launches than in math.
    `use_triton=False` keeps the PyTorch path (for comparison); `compile=True` runs that path's
    per-row arithmetic through `torch.compile`.
    """
    backbone = backbone_for(model)
    inner = backbone.multimodal_model(model)
    text_config = backbone.text_config(model)
    hidden_size = text_config.hidden_size
    bad_dims = [d for d in config.sink_dims if d >= hidden_size]
    if bad_dims:
        raise ValueError(
            f"sink_dims {bad_dims} are >= the model's hidden size {hidden_size}; "
            "sink dimensions must be hidden-state channels of this model"
        )
    layers = backbone.decoder_layers(model)
    with_attention = backbone.attention_layers(model)
    attention_modules = {index: backbone.attention_of(layers[index]) for index in with_attention}
    if any(hasattr(module, STATE_ATTRIBUTE) for module in attention_modules.values()):
        raise RuntimeError("VAR is already enabled on this model; call remove() on the first handle")
    base = text_config._attn_implementation or "eager"
    if base == "flash_attention_2" and "sliding_attention" in (
        getattr(text_config, "layer_types", None) or ()
    ):
        # Flash gets the window as an argument, not in the mask VAR's rows are computed from.
        raise ValueError(
            "attn_implementation flash_attention_2 hides sliding windows from VAR; use sdpa or eager, "
            "whose masks hold the window"
        )
    name = registered_name(base)
    state = VARState(
        config=config,
        visual_token_ids=backbone.visual_token_ids(inner.config),
        # Linear-attention layers (Qwen3.5) have no attention rows to redistribute.
        active_layers=frozenset(config.active_layers(len(layers))) & frozenset(with_attention),
        base_implementation=base,
        fused=fused,
        compile=compile,
        use_triton=use_triton,
        collect_diagnostics=diagnostics,
    )
    handle = VARHandle(model=model, state=state, _text_config=text_config)

    handle._hooks.append(inner.register_forward_pre_hook(_prompt_starter(state, backbone), with_kwargs=True))
    for index, attention in attention_modules.items():
        setattr(attention, STATE_ATTRIBUTE, state)
        handle._attention_modules.append(attention)
        if index in state.active_layers:
            handle._hooks.append(
                layers[index].register_forward_pre_hook(_sink_finder(state, index), with_kwargs=True)
            )
    text_config._attn_implementation = name
    return handle


def _prompt_starter(state: VARState, backbone: Backbone):
    """The multimodal module's pre-hook: every forward starts a prompt (empty cache) or extends it."""

    def start_prompt(_module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = next((kwargs[name] for name in backbone.cache_kwargs if kwargs.get(name) is not None), None)
        state.start_forward(input_ids, kwargs.get("attention_mask"), _past_length(cache))

    return start_prompt


def _sink_finder(state: VARState, layer: int):
    def find_sinks(_module, args, kwargs):
        state.record_sinks(layer, kwargs.get("hidden_states", args[0] if args else None))

    return find_sinks
