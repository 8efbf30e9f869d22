"""`Backbone`: the table that says everything family-specific about one vision-language model family.

One file per family (`qwen2_5_vl.py`, ...) fills one `Backbone`; `lmms_var.backbones` collects them.
Everything above this layer (patch, sink_dims, models, tools) asks a `Backbone` where a model's text
decoder, layers and attention modules are and which tokens are visual, so none of it names a family.

Paths are attribute paths as `torch.nn.Module.get_submodule` reads them. This module and the family
files import neither torch nor transformers at import time: lmms-eval imports the registry (through
our entry point) while it starts, and that must stay fast. Transformers classes are named and
resolved when a model is loaded.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


# The kinds of `VisualGrid`, in the order of `Backbone.visual_token_attributes`.
VISUAL_KINDS = ("image", "video")


def _no_options(_args: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _no_checks(_args: Mapping[str, Any]) -> None:
    return None


def attention_layer_indices(text_config) -> list[int]:
    """Decoder layers with softmax attention, from a text config alone (checkable before loading): all
    but those its `layer_types` calls "linear_attention" (Qwen3.5's Gated DeltaNet layers)."""
    types = getattr(text_config, "layer_types", None)
    count = text_config.num_hidden_layers
    return [index for index in range(count) if types is None or types[index] != "linear_attention"]


@dataclass(frozen=True)
class VisualGrid:
    """How one image's (or video's) visual tokens tile the picture the model saw.

    The picture was resized to `height` x `width` pixels; its tokens come `frames` x `rows` x `cols`,
    frame by frame, row-major, each covering `height / rows` x `width / cols` pixels (a video's frame
    is a group of `temporal_patch_size` input frames). A picture cut into `tiles` (rows, cols of
    tiles, InternVL) has its tokens tile after tile, row-major within each. The i-th grid of a kind
    covers the next `tokens` of that kind's placeholder tokens in the batch. An image the model sees
    as several parts (tiles and a thumbnail) has one grid per part, each named by `part`; all but
    the first have `continues` set. Placeholders that stand for no pixels (LLaVA-NeXT's newline
    features) come `row_tail` after each row of tokens and `tail` after the whole grid.
    """

    kind: str  # one of VISUAL_KINDS
    frames: int
    rows: int
    cols: int
    height: int
    width: int
    tiles: tuple[int, int] = (1, 1)
    part: str = ""
    continues: bool = False
    row_tail: int = 0
    tail: int = 0

    @property
    def tokens(self) -> int:
        return self.frames * self.rows * (self.cols + self.row_tail) + self.tail


@dataclass(frozen=True)
class ProcessorOutputs:
    """How to read a family's processor outputs for a batch of prompts, beyond the grids.

    `token_inputs` are `[batch, tokens]` (`input_ids`, `attention_mask`, and any other holds 0 at a
    text token); `visual_inputs` describe the images and videos; together they are what the model's
    forward takes. `cut_visuals(inputs, grids, kind, first, stop)` cuts the `visual_inputs` of the
    `kind` grids `[first, stop)` of the batch (in processor order; `grids`: the batch's grids of that
    kind) out, as the processor gives them for those visuals alone. `pictures(inputs, processor)` gives, per `VisualGrid` in the order
    `visual_grids` gives them, Uint8[frames, height, width, 3]: the picture the vision tower was
    given (a video's frame: the first of its temporal group), the processor's normalisation undone.
    """

    token_inputs: tuple[str, ...]
    visual_inputs: tuple[str, ...]
    cut_visuals: Callable[[Mapping[str, Any], list[VisualGrid], str, int, int], dict[str, Any]]
    pictures: Callable[[Mapping[str, Any], Any], list[Any]]

    @property
    def model_inputs(self) -> tuple[str, ...]:
        return self.token_inputs + self.visual_inputs


@dataclass(frozen=True, eq=False)  # one instance per family: compared and hashed by identity
class LmmsEvalModel:
    """lmms-eval's own model for a family, described so that ours, with `var=false`, reproduces it.

    Our model takes the VAR model args, `pretrained`, `device`, `device_map`, `dtype`, `batch_size`
    and `attn_implementation` itself; every other model arg is upstream's, listed in `upstream_args`
    with upstream's default. `state(pretrained, args)` returns the attributes upstream's `__init__`
    sets besides the model and devices (processor, tokenizer, pixels, ...), which upstream's
    `generate_until` reads. Upstream classes are named by import path: backbones never import lmms-eval.
    """

    model_id: str  # the model this project registers, e.g. "qwen2_5_vl_var"
    upstream_id: str  # lmms-eval's own, e.g. "qwen2_5_vl"
    simple_class: str | None  # import path of upstream's simple (doc_to_visual) class, if it has one
    chat_class: str | None  # import path of upstream's chat (doc_to_messages) class, if it has one
    default_pretrained: str
    upstream_args: Mapping[str, Any]
    state: Callable[[str, Mapping[str, Any]], dict[str, Any]]
    # The dtype upstream loads with on a GPU: "bfloat16" where it forces it, "auto" for the checkpoint's.
    cuda_dtype: str = "bfloat16"
    # Keyword arguments for every `from_pretrained` (config, model) from upstream's args (e.g. revision).
    hub_options: Callable[[Mapping[str, Any]], dict[str, Any]] = _no_options
    # An upstream boolean arg that selects flash attention (Qwen2-VL's `use_flash_attention_2`).
    flash_attention_flag: str | None = None
    # Upstream's generation loop takes at most this many prompts per batch (None: any).
    max_batch_size: int | None = None
    # The attribute `state` sets to the model's processor (the finder needs it for `sink_dims=auto`).
    processor_attribute: str = "processor"
    # Checks of upstream's args (all filled in) that upstream lacks; a `ValueError` names the arg.
    check_upstream_args: Callable[[Mapping[str, Any]], None] = _no_checks

    def upstream_arguments(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Upstream's args (`given`, all among `upstream_args`) with its defaults filled in, checked."""
        arguments = {**self.upstream_args, **given}
        self.check_upstream_args(arguments)
        return arguments

    @property
    def class_stem(self) -> str:
        """Upstream's class name, e.g. `Qwen2_5_VL`: ours are `<stem>_VAR` and `<stem>_VAR_Chat`."""
        return (self.simple_class or self.chat_class).rsplit(".", 1)[1]


@dataclass(frozen=True, eq=False)  # one instance per family: compared and hashed by identity
class Backbone:
    """Where VAR attaches in one family's transformers models, and how lmms-eval runs the family.

    Families that lmms-eval runs with one model (`llava_hf`: LLaVA-1.5, NeXT, OneVision; `qwen3_vl`:
    Qwen3-VL and Qwen3-VL-MoE) share one `LmmsEvalModel` instance: one model of ours serves them all,
    the checkpoint's config picking the backbone.

    `multimodal` modules own the text decoder at `text_model`; a loaded checkpoint (a
    `...ForConditionalGeneration`) wraps one as `.model`. Paths below `text_model` follow the
    Llama convention that all supported families share; a family overrides only what differs.
    """

    family: str  # the name people use, e.g. "Qwen2.5-VL"
    model_type: str  # transformers' `config.model_type`
    loader: str  # the transformers class that loads a checkpoint, e.g. "Qwen2_5_VLForConditionalGeneration"
    # Config attributes holding the ids of visual placeholder tokens (image, and video where there is one).
    visual_token_attributes: tuple[str, ...]
    # First and last linear layer of the vision-to-text projector, under the multimodal module; None
    # where the projector has no linear layer (Gemma 3: a norm and a bare matrix).
    projector: tuple[str, str] | None
    lmms_eval: LmmsEvalModel
    # (processor outputs, processor) -> one `VisualGrid` per image, then per video, in batch order.
    visual_grids: Callable[[Mapping[str, Any], Any], list[VisualGrid]]
    # Which processor outputs the forward takes, one prompt's out of a batch, the pictures seen.
    processor_outputs: ProcessorOutputs
    # Other modules whose outputs are added to the text residual stream at visual positions (e.g.
    # Qwen3-VL's deepstack mergers), as glob patterns under the multimodal module.
    visual_residual_writers: tuple[str, ...] = ()
    text_model: str = "language_model"
    layers: str = "layers"  # under the text model
    attention: str = "self_attn"  # under a decoder layer
    query: str = "self_attn.q_proj"
    key: str = "self_attn.k_proj"
    attention_output: str = "self_attn.o_proj"
    # The MLP's output projection: a linear module, or a parameter `[..., hidden, in]` (MoE experts).
    mlp_output: str = "mlp.down_proj"
    # Per-head normalisation of queries and keys before the rotary embedding (Qwen3), if any.
    query_key_norms: tuple[str, str] | None = None
    # The query projection gives each head its query and then an output gate (Qwen3.5).
    gated_query: bool = False
    # Other modules of a decoder layer writing into the residual stream (Qwen3.5's linear attention).
    layer_residual_writers: tuple[str, ...] = ()
    # Keyword names under which the multimodal module's forward receives the KV cache.
    cache_kwargs: tuple[str, ...] = ("cache", "past_key_values")
    # (width, height) -> why the family's image processor, with its defaults, would refuse an image
    # of that size (asking the processor's own code), or None when it takes it. None: it takes any.
    image_size_refusal: Callable[[int, int], str | None] | None = None
    # Head dims of the family's published checkpoints: VAR's GPU kernels are compiled for each in CI.
    head_dims: tuple[int, ...] = ()
    # The tokens that open and close each run of visual placeholders (Qwen's `<|vision_start|>` and
    # `<|vision_end|>`), part of the image as a text-only prompt drops it; None where runs have none.
    visual_delimiters: tuple[str, str] | None = None

    def multimodal_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module that owns the text decoder: `model.model` of a loaded checkpoint, or `model` itself."""
        inner = getattr(model, "model", None)
        if inner is not None and hasattr(inner, self.text_model):
            return inner
        if hasattr(model, self.text_model):
            return model
        raise ValueError(
            f"{type(model).__name__} has no `{self.text_model}`; pass the {self.family} model itself"
        )

    def text_model_of(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.multimodal_model(model).get_submodule(self.text_model)

    def decoder_layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        return self.text_model_of(model).get_submodule(self.layers)

    def attention_layers(self, model: torch.nn.Module) -> list[int]:
        """Decoder layers with softmax attention (a module at `attention`), the only ones VAR can act on."""
        return attention_layer_indices(self.text_config(model))

    def full_attention_layers(self, model: torch.nn.Module) -> list[int]:
        """Decoder layers whose queries see every earlier token: those the text config's `layer_types`
        calls "full_attention" (not sliding-window or linear attention), or all where it has none."""
        types = getattr(self.text_config(model), "layer_types", None)
        count = len(self.decoder_layers(model))
        return [index for index in range(count) if types is None or types[index] == "full_attention"]

    def attention_of(self, layer: torch.nn.Module) -> torch.nn.Module:
        """A decoder layer's attention module (the one that calls the registered attention function)."""
        return layer.get_submodule(self.attention)

    def text_config(self, model: torch.nn.Module):
        """The config the text decoder's attention reads (its `_attn_implementation` picks the kernel)."""
        return self.text_model_of(model).config

    def visual_token_ids(self, config) -> tuple[int, ...]:
        """Ids of the visual placeholder tokens, from the model's (top-level) config."""
        return tuple(getattr(config, name) for name in self.visual_token_attributes)

    def placeholder_ids(self, config) -> dict[str, int]:
        """`{"image": id, "video": id}` (video where the family has one), from the model's config."""
        return dict(zip(VISUAL_KINDS, self.visual_token_ids(config), strict=False))

    def projector_layers(self, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(first, last) linear layer of the vision-to-text projector."""
        multimodal = self.multimodal_model(model)
        first, last = self.projector
        return multimodal.get_submodule(first), multimodal.get_submodule(last)

    def visual_writers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """Every linear module whose output enters the text residual stream as visual features."""
        multimodal = self.multimodal_model(model)
        extra = [
            module
            for name, module in multimodal.named_modules()
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.visual_residual_writers)
        ]
        return extra if self.projector is None else [self.projector_layers(model)[1], *extra]

    def loader_class(self) -> type:
        """The transformers class that loads this family's checkpoints (imports its modeling file)."""
        import transformers  # here, not at the top: see the module docstring

        return getattr(transformers, self.loader)
