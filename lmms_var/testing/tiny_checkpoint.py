"""Build a tiny random Qwen2.5-VL checkpoint offline, optionally with planted attention sinks.

Planting makes VAR have real work on a random model: the chosen hidden channels (`sink_dims`) are
zero for every token except (a) chosen text tokens, whose embedding carries `sink_value` there, and
(b) the few visual tokens that fire one gated unit of the vision merger. No layer writes to those
channels, so the sinks persist through the residual stream, and the first key/value head of every
layer is wired to attend to them (as real sink heads do) while the other heads stay random.
"""

import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from lmms_var.testing.images import random_images

# Every special token of Qwen2.5-VL's tokenizer, in its order.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
EXTRA_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
]

# Qwen2-VL / Qwen2.5-VL chat template (images and videos become vision placeholders).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# tau for tiny checkpoints: an RMS-normalised value can never exceed sqrt(hidden_size), so the paper's
# 20 never fires at width 128; planted sinks reach about sqrt(128 / 2) = 8.
TINY_TAU = 5.0

_CORPUS = [
    "You are a helpful assistant.",
    "Which point is closer to the camera? Answer with the option's letter from the given choices directly.",
    "(A) the red point (B) the blue point (C) left (D) right. The answer is (B).",
    "Is the car on the left or the right of the tree? How many objects are there? above below behind",
    "Question: Options: Picture 1 2 3 4 video image first second third fourth same different yes no",
    string.ascii_letters + string.digits + string.punctuation,
]


@dataclass(frozen=True)
class TinySpec:
    """Shape and planting of a tiny checkpoint. Defaults give a 4-layer, 128-wide GQA model.

    `answers_letters` wires the output head so greedy decoding answers with one letter A-D and
    stops, the letter depending on the prompt: a random model then scores near chance on
    multiple-choice tasks instead of 0, so a demo's table has something to compare.
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    sink_dims: tuple[int, ...] | None = (17, 93)
    sink_value: float = 60.0
    text_sink_tokens: tuple[str, ...] = ("<|im_start|>",)
    visual_sink_fraction: float = 0.08
    sink_attention_logit: float = 6.0
    answers_letters: bool = False
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 64
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def build_tokenizer(vocab_size: int = 400) -> Qwen2Tokenizer:
    """Train a small byte-level BPE and wrap it as Qwen2's tokenizer with Qwen's special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=bpe,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
    )
    tokenizer.add_tokens(EXTRA_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_processor(spec: TinySpec = TinySpec()) -> Qwen2_5_VLProcessor:
    """Tokenizer, Qwen2-VL image and video processors and the chat template, as one processor."""
    tokenizer = build_tokenizer()
    pixels = {"min_pixels": spec.min_pixels, "max_pixels": spec.max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )


def _config(spec: TinySpec, tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    half = spec.head_dim // 2
    temporal = half // 4
    mrope_section = [temporal, (half - temporal) // 2, half - temporal - (half - temporal) // 2]
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in _TOKEN_NAMES.items()}
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "max_position_embeddings": 32768,
            "rope_scaling": {"type": "mrope", "mrope_section": mrope_section},
            "rope_theta": 1_000_000.0,
            "bos_token_id": ids["pad"],
            "eos_token_id": ids["eos"],
            "pad_token_id": ids["pad"],
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_hidden_size * 2,
            "num_heads": spec.vision_heads,
            "out_hidden_size": spec.hidden_size,
            "fullatt_block_indexes": [spec.vision_depth - 1],
            "window_size": 112,
        },
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        bos_token_id=ids["pad"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )


_TOKEN_NAMES = {
    "pad": "<|endoftext|>",
    "eos": "<|im_end|>",
    "image": "<|image_pad|>",
    "video": "<|video_pad|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
}


def build_tiny_model(
    spec: TinySpec = TinySpec(), processor: Qwen2_5_VLProcessor | None = None, device: str = "cpu"
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A random float32 model in eval mode (and its processor), sinks planted when `spec.sink_dims`.

    `device` builds it there directly (a 3B-shaped benchmark model is slow to initialise on a CPU).
    """
    processor = processor or build_tiny_processor(spec)
    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(_config(spec, processor.tokenizer)).eval()
    if spec.sink_dims:
        _plant_sinks(model, processor, spec)
    if spec.answers_letters:
        _plant_letter_answers(model, processor, spec)
    return model, processor


@torch.no_grad()
def _plant_sinks(
    model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor, spec: TinySpec
) -> None:
    dims = list(spec.sink_dims)
    if max(dims) >= spec.hidden_size:
        raise ValueError(f"TinySpec.sink_dims {dims} must be < hidden_size {spec.hidden_size}")
    text_model = model.model.language_model
    # Nothing but the planted sources writes to the sink channels.
    text_model.embed_tokens.weight[:, dims] = 0.0
    for layer in text_model.layers:
        layer.self_attn.o_proj.weight[dims, :] = 0.0
        layer.mlp.down_proj.weight[dims, :] = 0.0
    for token in spec.text_sink_tokens:
        text_model.embed_tokens.weight[processor.tokenizer.convert_tokens_to_ids(token), dims] = (
            spec.sink_value
        )
    _plant_visual_sinks(model, processor, spec)
    _wire_sink_heads(model, spec)


def _plant_visual_sinks(
    model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor, spec: TinySpec
) -> None:
    """Gate merger unit 0 so that only the top `visual_sink_fraction` of visual tokens fire it."""
    first, _, last = model.model.visual.merger.mlp
    dims = list(spec.sink_dims)
    last.weight[dims, :] = 0.0
    last.bias[dims] = 0.0
    captured: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda _m, _i, out: captured.append(out[:, 0].clone()))
    inputs = processor.image_processor(images=random_images(8, seed=spec.seed + 1), return_tensors="pt")
    device = first.weight.device
    model.model.visual(inputs["pixel_values"].to(device), grid_thw=inputs["image_grid_thw"].to(device))
    hook.remove()
    pre_activation = torch.cat(captured)
    threshold = torch.quantile(pre_activation, 1.0 - spec.visual_sink_fraction)
    spread = pre_activation.std().clamp(min=1e-6)
    gain = 20.0 / spread
    first.weight[0] *= gain
    first.bias[0] = (first.bias[0] - threshold) * gain
    # A token 1 spread above the threshold reaches about sink_value / 2; most firing tokens exceed it.
    last.weight[dims, 0] = spec.sink_value / 40.0


def _wire_sink_heads(model: Qwen2_5_VLForConditionalGeneration, spec: TinySpec) -> None:
    """Make the first key/value head's query heads attend strongly to sink tokens.

    The wiring lives in the lowest rotary frequency, which barely rotates over a few thousand
    positions, so the attraction does not depend on distance.
    """
    head_dim = spec.head_dim
    low_freq = [head_dim // 2 - 1, head_dim - 1]
    group = spec.num_heads // spec.num_kv_heads
    # A sink's normalised state is about sqrt(hidden / len(dims)) in each sink dim.
    sink_norm = (spec.hidden_size / len(spec.sink_dims)) ** 0.5
    strength = (spec.sink_attention_logit * head_dim**0.5 / (sink_norm * len(spec.sink_dims))) ** 0.5
    for layer in model.model.language_model.layers:
        attn = layer.self_attn
        for dim in low_freq:
            attn.k_proj.weight[dim, :] = 0.0
            attn.k_proj.weight[dim, list(spec.sink_dims)] = strength
            attn.k_proj.bias[dim] = 0.0
            for head in range(group):
                attn.q_proj.bias[head * head_dim + dim] = strength / len(low_freq)
                attn.q_proj.weight[head * head_dim + dim, :] = 0.0


# Channels the letter-answer wiring owns: "always on" and "the previous token was a letter".
_ANSWER_CHANNELS = (0, 1)
_ANSWER_MARK = 0.1  # their value when on: small, so they barely shift the final norm


@torch.no_grad()
def _plant_letter_answers(
    model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor, spec: TinySpec
) -> None:
    """Letters A-D get a large logit everywhere; after a letter, end-of-turn gets a larger one.

    Which letter wins follows the two main directions in which the answer position's final state
    varies across calibration prompts (A/B: +/- the first, C/D: +/- the second), so it depends on
    the image rather than being the same letter for every prompt.
    """
    channels = list(_ANSWER_CHANNELS)
    if set(channels) & set(spec.sink_dims or ()):
        raise ValueError(f"TinySpec.sink_dims must avoid channels {channels} with answers_letters")
    tokenizer = processor.tokenizer
    letters = [tokenizer.convert_tokens_to_ids(letter) for letter in "ABCD"]
    always, after_letter = channels
    text_model = model.model.language_model
    for layer in text_model.layers:  # as for sinks: no layer writes these channels
        layer.self_attn.o_proj.weight[channels, :] = 0.0
        layer.mlp.down_proj.weight[channels, :] = 0.0
    merger_out = model.model.visual.merger.mlp[2]
    merger_out.weight[channels, :] = 0.0
    merger_out.bias[channels] = torch.tensor([_ANSWER_MARK, 0.0])
    text_model.embed_tokens.weight[:, channels] = torch.tensor([_ANSWER_MARK, 0.0])
    text_model.embed_tokens.weight[letters, after_letter] = _ANSWER_MARK
    states = _answer_states(model, processor, spec)
    mark = states[:, always].mean()  # the normalised "always" channel at the answer position
    states[:, channels] = 0.0
    head = model.lm_head.weight
    head[letters] = _principal_letter_rows(states)
    head[:, channels] = 0.0
    head[letters, always] = 10.0 / mark
    head[tokenizer.convert_tokens_to_ids("<|im_end|>"), after_letter] = 30.0 / mark


def _answer_states(
    model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor, spec: TinySpec
) -> torch.Tensor:
    """Float[N, hidden]: final (normalised) states at the answer position of N calibration prompts."""
    question = "Which one is it?\n(A) first\n(B) second\n(C) third\n(D) fourth"
    content = [{"type": "image"}, {"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    states = []
    for image in random_images(12, seed=spec.seed + 2):
        inputs = processor(text=[text], images=[image], return_tensors="pt").to(model.device)
        states.append(model.model(**inputs).last_hidden_state[0, -1].float())
    return torch.stack(states)


def _principal_letter_rows(states: torch.Tensor) -> torch.Tensor:
    """Float[4, hidden]: +/- the top two principal directions, blind to the states' shared part."""
    mean = states.mean(dim=0)
    _, singular, directions = torch.linalg.svd(states - mean, full_matrices=False)
    unit_mean = mean / mean.norm()
    top = directions[:2] - (directions[:2] @ unit_mean)[:, None] * unit_mean
    top = top * (3.0 * len(states) ** 0.5 / singular[:2, None])  # a typical projection: a few logits
    return torch.cat([top[0:1], -top[0:1], top[1:2], -top[1:2]])


def save_tiny_checkpoint(path: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write model, processor and `tiny_spec.json` to `path` with `save_pretrained`; returns the path."""
    path = Path(path)
    model, processor = build_tiny_model(spec)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "tiny_spec.json").write_text(json.dumps(spec.__dict__, indent=2))
    return path
