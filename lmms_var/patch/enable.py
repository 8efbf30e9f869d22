"""`enable_intervention` (and `enable_var`): attach an intervention to a Hugging Face vision-language
model without touching its modeling file.

The model's `Backbone` (`lmms_var.backbones`) says where its text decoder, layers and attention
modules are and which tokens are visual; any family with a backbone works.

Three attachment points, all undone by `InterventionHandle.remove()`:
- the text config's attention implementation is switched to a registered function wrapping the
  model's own kernel (the vision tower keeps its own config and attention);
- a forward pre-hook on the multimodal model reads `input_ids` and the cache length to start each
  prompt (prefill) or extend it (decode);
- forward pre-hooks on the decoder layers the intervention acts on build its per-layer plans at
  prefill (VAR's sinks come from the residual stream entering the layer).
A method with a part outside the attention adds one more: AdaptVis a pre-hook on the model choosing
alpha before each prefill (`Intervention.prompt_options`), PAI a wrapper of `model.generate` adding
its logit refine (`Intervention.generate`).
"""

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils.hooks import RemovableHandle

from lmms_var.backbones import Backbone, backbone_for
from lmms_var.config import PAIConfig, VARConfig
from lmms_var.patch.attention import STATE_ATTRIBUTE, registered_name
from lmms_var.patch.intervention import Intervention, RowOptions
from lmms_var.patch.interventions import intervention_for
from lmms_var.patch.prefill import DEFAULT_BLOCK_ELEMENTS
from lmms_var.patch.state import InterventionState, Settings
from lmms_var.patch.var import PromptSinks, prompt_sinks


@dataclass
class InterventionHandle:
    """A live attachment; `remove()` restores the model exactly. Usable as a context manager."""

    model: torch.nn.Module
    state: InterventionState
    backbone: Backbone
    tokenizer: object | None  # PAI's refine reads the image delimiters and the pad from it
    _text_config: object
    _hooks: list[RemovableHandle] = field(default_factory=list)
    _attention_modules: list[torch.nn.Module] = field(default_factory=list)
    _generate: object = None  # the wrapper of `model.generate` it installed, if any
    _removed: bool = False

    @property
    def config(self):
        return self.state.settings.config

    @property
    def intervention(self) -> Intervention:
        return self.state.settings.intervention

    @property
    def active_layers(self) -> frozenset[int]:
        return self.state.settings.active_layers

    def diagnostics(self) -> list[dict]:
        """What the intervention did for each sample of the last prompt batch (needs `diagnostics=True`)."""
        return self.state.diagnostics()

    def prefill_sinks(self) -> list[PromptSinks]:
        """Per prompt of the last prefill (VAR): its visual tokens and the visual sinks found among
        them, over all its layers (no sink: VAR changed nothing). Synchronises the GPU: read it after
        `generate`."""
        return prompt_sinks(self.state.prompt)

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Within: the plain model (hooks and attention pass through); the prompt state is kept."""
        before = self.state.suspended
        self.state.suspended = True
        try:
            yield
        finally:
            self.state.suspended = before

    @contextmanager
    def prompt_options(self, **options) -> Iterator[None]:
        """Within: the next prefill gets these per-prompt options (AdaptVis: `alpha`, Float32[B])."""
        self.state.next_prompt_options = options
        try:
            yield
        finally:
            self.state.next_prompt_options = {}

    def remove(self) -> None:
        if self._removed:
            return
        for hook in self._hooks:
            hook.remove()
        for module in self._attention_modules:
            delattr(module, STATE_ATTRIBUTE)
        if self._generate is not None and vars(self.model).get("generate") is self._generate:
            del self.model.generate
        self._text_config._attn_implementation = self.state.settings.base_implementation
        self._removed = True

    def __enter__(self) -> "InterventionHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


VARHandle = InterventionHandle  # the public name from before there were other methods


def _past_length(cache) -> int:
    """Positions already in the cache (transformers 5 no longer passes `cache_position`)."""
    return 0 if cache is None else int(cache.get_seq_length())


def enable_intervention(
    model: torch.nn.Module,
    config: object,
    *,
    fused: bool = True,
    diagnostics: bool = False,
    compile: bool = False,
    use_triton: bool = True,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    tokenizer=None,
) -> InterventionHandle:
    """Attach the intervention `config` describes (`VARConfig`, `ScalingVisConfig`, `AdaptVisConfig`,
    `PAIConfig`) to `model` (of a family in `lmms_var.backbones`); `remove()` on the handle undoes it.

    `fused=False` materialises full attention rows (VAR's slow reference); `diagnostics=True` records
    per-sample counts, read with `handle.diagnostics()`. On CUDA with Triton installed, VAR's rows run
    as one Triton kernel per layer (`patch/row_kernels.py`): there, small PyTorch operations cost more
    in launches than in math. `use_triton=False` keeps the PyTorch path (for comparison);
    `compile=True` runs that path's decode arithmetic through `torch.compile`; `block_elements` bounds
    the float32 values of one block of explicit rows (tests make it small). `tokenizer` (the model's)
    is needed by PAI's logit refine (`PAIConfig.gamma != 1`) to build the text-only prompt.
    """
    intervention = intervention_for(config)
    if isinstance(config, PAIConfig) and config.gamma != 1 and tokenizer is None:
        raise ValueError(
            "tokenizer: PAI's logit refine (gamma != 1) needs the model's tokenizer, which knows its image "
            "delimiters and pad; pass enable_intervention(..., tokenizer=processor.tokenizer), or gamma=1"
        )
    backbone = backbone_for(model)
    inner = backbone.multimodal_model(model)
    text_config = backbone.text_config(model)
    if isinstance(config, VARConfig):
        _check_sink_dims(config, text_config.hidden_size)
    layers = backbone.decoder_layers(model)
    with_attention = backbone.attention_layers(model)
    attention_modules = {index: backbone.attention_of(layers[index]) for index in with_attention}
    if any(hasattr(module, STATE_ATTRIBUTE) for module in attention_modules.values()):
        raise RuntimeError(
            "an intervention is already enabled on this model; call remove() on the first handle"
        )
    base = text_config._attn_implementation or "eager"
    if base == "flash_attention_2" and "sliding_attention" in (
        getattr(text_config, "layer_types", None) or ()
    ):
        # Flash gets the window as an argument, not in the mask the changed rows are computed from.
        raise ValueError(
            f"attn_implementation flash_attention_2 hides sliding windows from {intervention.name}; use "
            "sdpa or eager, whose masks hold the window"
        )
    if not fused and not any(backend.name == "EAGER" for _, backend in intervention.paths):
        raise ValueError(f"fused=False is VAR's eager reference; {intervention.name} has none")
    name = registered_name(base)
    # Linear-attention layers (Qwen3.5) have no attention rows to change; an identity changes none.
    active = frozenset() if intervention.is_identity() else intervention.layers(len(layers))
    settings = Settings(
        intervention=intervention,
        visual_token_ids=backbone.visual_token_ids(inner.config),
        active_layers=active & frozenset(with_attention),
        base_implementation=base,
        fused=fused,
        use_triton=use_triton,
        collect_diagnostics=diagnostics,
        options=RowOptions(block_elements=block_elements, compile=compile),
    )
    state = InterventionState(settings)
    handle = InterventionHandle(model, state, backbone, tokenizer, text_config)
    modules = list(attention_modules.values())
    handle._hooks.append(
        inner.register_forward_pre_hook(_prompt_starter(state, backbone, modules), with_kwargs=True)
    )
    for index, attention in attention_modules.items():
        setattr(attention, STATE_ATTRIBUTE, state)
        handle._attention_modules.append(attention)
        if index in settings.active_layers:
            handle._hooks.append(
                layers[index].register_forward_pre_hook(_plan_builder(state, index), with_kwargs=True)
            )
    if type(intervention).prompt_options is not Intervention.prompt_options:
        handle._hooks.append(
            model.register_forward_pre_hook(_prompt_chooser(handle, backbone), with_kwargs=True)
        )
    if type(intervention).generate is not Intervention.generate:
        handle._generate = model.generate = functools.partial(intervention.generate, handle, model.generate)
    text_config._attn_implementation = name
    return handle


def enable_var(model: torch.nn.Module, config: VARConfig, **options) -> InterventionHandle:
    """Attach VAR: `enable_intervention` with a `VARConfig` (and its keyword options: `fused`,
    `diagnostics`, `compile`, `use_triton`, `block_elements`)."""
    if not isinstance(config, VARConfig):
        raise TypeError(f"enable_var takes a VARConfig, got {type(config).__name__}; see enable_intervention")
    return enable_intervention(model, config, **options)


def _check_sink_dims(config: VARConfig, hidden_size: int) -> None:
    bad_dims = [d for d in config.sink_dims if d >= hidden_size]
    if bad_dims:
        raise ValueError(
            f"sink_dims {bad_dims} are >= the model's hidden size {hidden_size}; "
            "sink dimensions must be hidden-state channels of this model"
        )


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _prompt_starter(state: InterventionState, backbone: Backbone, attention_modules: list[torch.nn.Module]):
    """The multimodal module's pre-hook: every forward starts a prompt (empty cache) or extends it."""

    def start_prompt(_module, args, kwargs):
        if state.suspended:
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = _prompt_cache(backbone, kwargs)
        devices = frozenset(_device_of(module) for module in attention_modules)
        state.start_forward(input_ids, kwargs.get("attention_mask"), _past_length(cache), devices)

    return start_prompt


def _prompt_cache(backbone: Backbone, kwargs: dict):
    return next((kwargs[name] for name in backbone.cache_kwargs if kwargs.get(name) is not None), None)


def _prompt_chooser(handle: InterventionHandle, backbone: Backbone):
    """The model's pre-hook for methods that choose per-prompt options before the prefill (AdaptVis)."""
    state = handle.state

    def choose(_module, args, kwargs):
        if state.suspended or state.next_prompt_options or _past_length(_prompt_cache(backbone, kwargs)):
            return
        state.next_prompt_options = handle.intervention.prompt_options(handle, kwargs)

    return choose


def _plan_builder(state: InterventionState, layer: int):
    def build_plan(module, args, kwargs):
        if not state.suspended:
            hidden_states = kwargs.get("hidden_states", args[0] if args else None)
            state.record_layer_input(layer, hidden_states, _device_of(module))

    return build_plan
