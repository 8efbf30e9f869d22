"""`enable_var`: attach VAR to a Hugging Face Qwen2.5-VL model without touching its modeling file.

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

from lmms_var.config import VARConfig
from lmms_var.patch.attention import STATE_ATTRIBUTE, registered_name
from lmms_var.patch.state import VARState

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)


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


def multimodal_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module that owns `visual` and `language_model` (ForConditionalGeneration wraps it as `.model`)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"VAR supports model types {list(SUPPORTED_MODEL_TYPES)}, got {model_type!r} "
            f"({type(model).__name__})"
        )
    inner = model.model if hasattr(model, "model") and hasattr(model.model, "language_model") else model
    if not hasattr(inner, "language_model"):
        raise ValueError(f"{type(model).__name__} has no `language_model`; pass the Qwen2.5-VL model itself")
    return inner


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
    """Attach VAR to `model` (a Qwen2.5-VL model); returns a handle whose `remove()` undoes it.

    `fused=False` materialises full attention rows (the slow reference); `diagnostics=True` records
    per-sample sink counts and redistributed mass, read with `handle.diagnostics()`.
    On CUDA with Triton installed, the fused path runs as one Triton kernel per layer
    (`patch/row_kernels.py`): there, small PyTorch operations cost more in launches than in math.
    `use_triton=False` keeps the PyTorch path (for comparison); `compile=True` runs that path's
    per-row arithmetic through `torch.compile`.
    """
    inner = multimodal_model(model)
    text_model = inner.language_model
    text_config = text_model.config
    hidden_size = text_config.hidden_size
    bad_dims = [d for d in config.sink_dims if d >= hidden_size]
    if bad_dims:
        raise ValueError(
            f"sink_dims {bad_dims} are >= the model's hidden size {hidden_size}; "
            "sink dimensions must be hidden-state channels of this model"
        )
    layers = text_model.layers
    if any(hasattr(layer.self_attn, STATE_ATTRIBUTE) for layer in layers):
        raise RuntimeError("VAR is already enabled on this model; call remove() on the first handle")
    base = text_config._attn_implementation or "eager"
    name = registered_name(base)
    top_config = inner.config
    state = VARState(
        config=config,
        visual_token_ids=(top_config.image_token_id, top_config.video_token_id),
        active_layers=frozenset(config.active_layers(len(layers))),
        base_implementation=base,
        fused=fused,
        compile=compile,
        use_triton=use_triton,
        collect_diagnostics=diagnostics,
    )
    handle = VARHandle(model=model, state=state, _text_config=text_config)

    def start_prompt(_module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        state.start_forward(input_ids, kwargs.get("attention_mask"), _past_length(cache))

    handle._hooks.append(inner.register_forward_pre_hook(start_prompt, with_kwargs=True))
    for index, layer in enumerate(layers):
        setattr(layer.self_attn, STATE_ATTRIBUTE, state)
        handle._attention_modules.append(layer.self_attn)
        if index in state.active_layers:
            handle._hooks.append(
                layer.register_forward_pre_hook(_sink_finder(state, index), with_kwargs=True)
            )
    text_config._attn_implementation = name
    return handle


def _sink_finder(state: VARState, layer: int):
    def find_sinks(_module, args, kwargs):
        state.record_sinks(layer, kwargs.get("hidden_states", args[0] if args else None))

    return find_sinks
