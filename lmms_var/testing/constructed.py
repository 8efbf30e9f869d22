"""A tiny Qwen2.5-VL whose weights are set by hand so that visual sinks hide the answer, and VAR finds it.

The random tiny checkpoints (`tiny_checkpoint`) show VAR's mechanics but not its purpose: their
answers do not depend on what the attention reads. This one is built for the mechanism VAR targets
(Kang et al., ICLR 2025): it answers `colour_squares`' question ("What colour is the square?") from
the picture, through attention, and its visual sinks pull that attention away from the answer.

- The vision tower measures each visual token's mean colour: channels `COLOUR` carry how red, green,
  blue or yellow it is (0 for the grey background), and the white background cells become *visual
  sinks*: massive (`SINK_VALUE`) in the sink dims, like real ones, and carrying a misleading
  value (`MISLEAD`, a vote for option (A)).
- The text embedding marks every token (`ALWAYS`), the answer letters (`AFTER_LETTER`, so that
  end-of-turn follows a letter) and makes `<|im_start|>` a text sink.
- In the layers VAR acts on, every head reads the picture the same way: its query is constant and its
  key logits are set per kind of token (`LOGITS`): text sinks draw most attention, visual sinks a
  share of the image's attention below `rho`, visual tokens the rest (more where coloured), other
  text almost nothing. So VAR selects these heads on the last prompt row. Values carry the colour
  (and the sinks' misleading vote) into the `ANSWER` channels, which the output head turns into the
  letter. Every other attention and MLP writes nothing.

The plain model answers (A) unless the square is big enough for its colour to outvote the sinks; VAR,
moving `1 - p` of the sinks' attention to the other visual tokens (most to the coloured ones),
recovers smaller squares. The model shows that mechanism; it says nothing of what VAR does for a
real model.
"""

import json
import math
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin

from lmms_var.attention_maps.figure import CONSTRUCTED_SPEC_FILE
from lmms_var.backbones import backbone_for_config
from lmms_var.config import VARConfig
from lmms_var.testing.colour_squares import COLOURS
from lmms_var.testing.tiny_checkpoint import TINY_TAU, TinySpec, build_tiny_processor

# The shape: the default tiny Qwen2.5-VL with 5 layers, so that VAR acts on two (2 and 3), both of
# which read the picture, and the attention maps draw both (the middle third).
SPEC = TinySpec(sink_dims=(17, 93), num_layers=5)
SINK_DIMS = SPEC.sink_dims
SINK_VALUE = 60.0
# Residual-stream channels the construction uses; all others stay 0.
ALWAYS, AFTER_LETTER, VISUAL, MISLEAD = 0, 1, 2, 7
COLOUR = (3, 4, 5, 6)  # red, green, blue, yellow: the options (A)-(D) in that order
ANSWER = (8, 9, 10, 11)
# Attention logits of the reading heads, per kind of key (other text tokens: 0).
LOGITS = {"text_sink": 7.5, "visual": 4.0, "visual_sink": 6.5, "colour": 1.5}
MISLEAD_VALUE = 10.0  # raw value of a visual sink's MISLEAD channel
MISLEAD_VOTE = 0.9  # how strongly a sink's MISLEAD channel votes for (A), per unit of a colour's vote
COLOUR_GAIN = 0.6  # raw colour channel of a token the colour fills
ANSWER_GAIN = 0.1  # residual ANSWER channels per unit of attention-weighted vote
# Output head: letters win over every other token; after a letter, end-of-turn wins.
LETTER_LOGIT, ANSWER_LOGIT, END_LOGIT = 2.0, 3.0, 6.0
# The vision tower: a constant channel that fixes each patch's norm, and the merger's GELU sharpness.
VISION_BULK = 16.0
SHARPNESS = 40.0
WHITE_THRESHOLD = 2.7  # R + G + B of a sink cell (pixels in [0, 1]) is 3
CONSTRUCTED_NOTE = (
    "CONSTRUCTED tiny model (lmms_var.testing): its visual sinks hide the answer by design; not what VAR "
    "does for a real model"
)


def var_config(**overrides) -> VARConfig:
    """The VAR settings the construction is made for (the paper's rho, summ and p; `TINY_TAU`)."""
    return VARConfig(**({"sink_dims": SINK_DIMS, "tau": TINY_TAU} | overrides))


def _normalised(values: dict[int, float], hidden_size: int, eps: float) -> dict[int, float]:
    """RMS-normalised channels of a residual state holding `values` (and zeros elsewhere)."""
    rms = math.sqrt(sum(v * v for v in values.values()) / hidden_size + eps)
    return {channel: value / rms for channel, value in values.items()}


def _token_states() -> dict[str, dict[int, float]]:
    """Raw residual states of each kind of token the reading heads tell apart."""
    sinks = dict.fromkeys(SINK_DIMS, SINK_VALUE)
    return {
        "text_sink": {ALWAYS: 1.0, **sinks},
        "visual": {ALWAYS: 1.0, VISUAL: 1.0},
        "visual_sink": {ALWAYS: 1.0, VISUAL: 1.0, MISLEAD: MISLEAD_VALUE, **sinks},
        "colour": {ALWAYS: 1.0, VISUAL: 1.0, COLOUR[0]: COLOUR_GAIN},
    }


def _key_weights(hidden_size: int, eps: float) -> dict[int, float]:
    """Key weights (on normalised channels) giving each kind of token its `LOGITS` entry."""
    states = {kind: _normalised(state, hidden_size, eps) for kind, state in _token_states().items()}
    sink = LOGITS["text_sink"] / states["text_sink"][SINK_DIMS[0]]
    visual = LOGITS["visual"] / states["visual"][VISUAL]
    # A coloured token: the visual logit plus the bonus (its colour raises its norm, so VISUAL gives less).
    coloured = states["colour"]
    colour = (LOGITS["visual"] + LOGITS["colour"] - visual * coloured[VISUAL]) / coloured[COLOUR[0]]
    # A visual sink: its sink dims give it the text sink's logit, which MISLEAD brings down to its own.
    visual_sink = states["visual_sink"]
    from_sinks = sink * visual_sink[SINK_DIMS[0]] + visual * visual_sink[VISUAL]
    mislead = (LOGITS["visual_sink"] - from_sinks) / visual_sink[MISLEAD]
    return {SINK_DIMS[0]: sink, VISUAL: visual, MISLEAD: mislead} | dict.fromkeys(COLOUR, colour)


@torch.no_grad()
def _build_vision(model: PreTrainedModel, processor: ProcessorMixin) -> None:
    """Vision tower: per visual token, its colour channels and, for white cells, the sink channels."""
    visual = model.model.visual
    for parameter in visual.parameters():
        parameter.zero_()
    for name, parameter in visual.named_parameters():
        if name.endswith(("norm1.weight", "norm2.weight", "ln_q.weight")):
            parameter.fill_(1.0)
    # Patch embedding: channels 0-2 are the patch's mean R, G, B (less the processor's mean).
    mean = processor.image_processor.image_mean
    std = processor.image_processor.image_std
    weight = visual.patch_embed.proj.weight  # [out, rgb, frames, rows, cols]
    cells = weight[0, 0].numel()
    for channel in range(3):
        weight[channel, channel] = std[channel] / cells
    # The first block's MLP adds the mean back and a constant channel, so every patch has about the same norm.
    bias = visual.blocks[0].mlp.down_proj.bias
    bias[:3] = torch.tensor(mean)
    bias[3] = VISION_BULK
    merger = visual.merger
    context = visual.config.hidden_size
    patches = merger.hidden_size // context
    first, last = merger.mlp[0], merger.mlp[2]
    # After ln_q a patch's channels are about 8 / VISION_BULK times their raw value (sqrt(64) = 8).
    scale = VISION_BULK / math.sqrt(context) / patches
    units = {  # unit -> (R, G, B) weights and bias, on the token's mean colour
        "red": ((1.0, -1.0, 0.0), 0.0),
        "green": ((-1.0, 1.0, 0.0), 0.0),
        "blue": ((-1.0, 0.0, 1.0), 0.0),
        "green_over_blue": ((0.0, 1.0, -1.0), 0.0),
        "white": ((1.0, 1.0, 1.0), -WHITE_THRESHOLD),
    }
    for unit, (rgb, offset) in enumerate(units.values()):
        for patch in range(patches):
            first.weight[unit, patch * context : patch * context + 3] = SHARPNESS * scale * torch.tensor(rgb)
        first.bias[unit] = SHARPNESS * offset
    index = {name: unit for unit, name in enumerate(units)}
    gain = COLOUR_GAIN / SHARPNESS / 0.8  # a filled token's colour difference is about 0.8
    last.weight[COLOUR[0], index["red"]] = gain
    last.weight[COLOUR[1], index["green"]] = gain
    last.weight[COLOUR[2], index["blue"]] = gain
    # Yellow: green over blue, unless green is also over red (then it is green).
    last.weight[COLOUR[3], index["green_over_blue"]] = gain
    last.weight[COLOUR[3], index["green"]] = -gain
    white = 1.0 / (SHARPNESS * (3.0 - WHITE_THRESHOLD))  # 1 on a white cell
    last.weight[list(SINK_DIMS), index["white"]] = SINK_VALUE * white
    last.weight[MISLEAD, index["white"]] = MISLEAD_VALUE * white
    last.bias[ALWAYS] = 1.0
    last.bias[VISUAL] = 1.0


@torch.no_grad()
def _build_text(model: PreTrainedModel, processor: ProcessorMixin) -> None:
    """Embedding, reading heads in VAR's layers, output head; everything else writes nothing."""
    config = model.config.text_config
    text = model.model.language_model
    for parameter in [*text.parameters(), model.lm_head.weight]:
        parameter.zero_()
    for name, parameter in text.named_parameters():
        if name.endswith("norm.weight"):
            parameter.fill_(1.0)
    tokenizer = processor.tokenizer
    token = tokenizer.convert_tokens_to_ids
    letters = [token(letter) for letter in "ABCD"[: len(COLOURS)]]
    embedding = text.embed_tokens.weight
    embedding[:, ALWAYS] = 1.0
    embedding[letters, AFTER_LETTER] = 1.0
    embedding[token("<|im_start|>"), list(SINK_DIMS)] = SINK_VALUE

    head_dim = SPEC.head_dim
    # Query and key meet in the lowest rotary frequency, which barely turns over a prompt: the logits
    # do not depend on distance.
    wired = head_dim // 2 - 1
    keys = _key_weights(config.hidden_size, config.rms_norm_eps)
    reading = var_config().active_layers(SPEC.num_layers)
    per_head = ANSWER_GAIN / (SPEC.num_heads * len(reading))  # the heads of the reading layers add up
    for layer in reading:
        attention = text.layers[layer].self_attn
        for kv_head in range(SPEC.num_kv_heads):
            for channel, weight in keys.items():
                attention.k_proj.weight[kv_head * head_dim + wired, channel] = weight * head_dim**0.5
            for j, channel in enumerate(COLOUR):
                attention.v_proj.weight[kv_head * head_dim + j, channel] = 1.0
            attention.v_proj.weight[kv_head * head_dim + 0, MISLEAD] = MISLEAD_VOTE
        for head in range(SPEC.num_heads):
            attention.q_proj.bias[head * head_dim + wired] = 1.0
            for j, channel in enumerate(ANSWER):
                attention.o_proj.weight[channel, head * head_dim + j] = per_head
    # Output head, on the final normalised state (ALWAYS is about sqrt(hidden_size) there).
    unit = config.hidden_size**-0.5
    for letter, channel in zip(letters, ANSWER, strict=True):
        model.lm_head.weight[letter, ALWAYS] = LETTER_LOGIT * unit
        model.lm_head.weight[letter, channel] = ANSWER_LOGIT / ANSWER_GAIN * unit
    model.lm_head.weight[token(SPEC.family.end_of_answer), AFTER_LETTER] = END_LOGIT * unit


def build_constructed_model() -> tuple[PreTrainedModel, ProcessorMixin]:
    """The constructed float32 model in eval mode, and its processor (built in about a second)."""
    processor = build_tiny_processor(SPEC)
    config = SPEC.family.config(SPEC.shape, processor.tokenizer)
    model = backbone_for_config(config).loader_class()(config).eval()
    _build_vision(model, processor)
    _build_text(model, processor)
    return model, processor


def save_constructed_checkpoint(path: str | Path) -> Path:
    """Write the constructed model and processor with `save_pretrained`, and what it is; returns the path."""
    path = Path(path)
    model, processor = build_constructed_model()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    facts = {
        "note": CONSTRUCTED_NOTE,
        "sink_dims": list(SINK_DIMS),
        "tau": TINY_TAU,
        "colours": list(COLOURS),
    }
    (path / CONSTRUCTED_SPEC_FILE).write_text(json.dumps(facts, indent=2))
    return path
