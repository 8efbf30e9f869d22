"""One tiny random checkpoint per supported family: its tokenizer, processor, chat template and config.

`tiny_checkpoint.build_tiny_model` builds the model from these and plants sinks the same way for every
family, driven by the family's `Backbone`. The facts tests need about a family (which tokens are
visual, which carry the planted text sink) are stated here, independently of `lmms_var.backbones`.
"""

import json
import string
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    Gemma3Config,
    Gemma3ImageProcessor,
    Gemma3Processor,
    GemmaTokenizer,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLProcessor,
    InternVLVideoProcessor,
    LlamaTokenizer,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
    PretrainedConfig,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3_5Config,
    Qwen3VLConfig,
    Qwen3VLMoeConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

# Every special token of the Qwen-VL tokenizers, in their order.
QWEN_SPECIAL_TOKENS = [
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
QWEN_EXTRA_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
]

# The Qwen-VL chat template (images and videos become vision placeholders).
QWEN_CHAT_TEMPLATE = (
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

# llava-hf/llava-1.5's processor chat template: each turn's images, then its text.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CORPUS = [
    "You are a helpful assistant.",
    "Which point is closer to the camera? Answer with the option's letter from the given choices directly.",
    "(A) the red point (B) the blue point (C) left (D) right. The answer is (B).",
    "Is the car on the left or the right of the tree? How many objects are there? above below behind",
    "Question: Options: Picture 1 2 3 4 video image first second third fourth same different yes no",
    string.ascii_letters + string.digits + string.punctuation,
]
LLAVA_CORPUS = [
    *CORPUS,
    "USER: ASSISTANT: A chat between a curious user and an artificial intelligence assistant.",
]
VOCAB_SIZE = 400

# google/gemma-3-*-it's chat template, without its checks that roles alternate: a system turn opens
# the first user turn, images become <start_of_image> (the processor expands each to its tokens).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}{%- else -%}"
    "{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TinyShape:
    """The sizes a family's tiny config needs (a view of `TinySpec`, which imports this module)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vision_hidden_size: int
    vision_depth: int
    vision_heads: int
    min_pixels: int
    max_pixels: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def text_config(self, tokenizer, **extra) -> dict:
        """The text decoder's config entries every family shares (rotary base large: see planting)."""
        return {
            "vocab_size": len(tokenizer),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "max_position_embeddings": 32768,
            "bos_token_id": tokenizer.bos_token_id or tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **extra,
        }

    def mrope_section(self) -> list[int]:
        """Qwen's multimodal rotary sections (temporal, height, width) summing to half the head dim."""
        half = self.head_dim // 2
        temporal = half // 4
        return [temporal, (half - temporal) // 2, half - temporal - (half - temporal) // 2]


@dataclass(frozen=True)
class TinyFamily:
    """How to build one family's tiny checkpoint, and what tests may know about it."""

    model_type: str
    processor: Callable[[TinyShape], ProcessorMixin]
    config: Callable[[TinyShape, object], PretrainedConfig]  # (shape, tokenizer) -> config
    text_sink_tokens: tuple[str, ...]  # tokens whose embedding carries the planted text sinks
    visual_tokens: tuple[str, ...]  # placeholders of images (and videos, where the family has them)
    end_of_answer: str  # the token that ends a generated answer
    # llava-hf's repos keep the chat template in the processor's legacy `chat_template.json`, so their
    # tokenizer has none (lmms-eval's simple llava_hf then uses its own Vicuna template).
    processor_only_chat_template: bool = False
    # The name of a folder tests save the checkpoint in, where upstream's loader reads the name.
    folder: str = ""
    # Where the projector has no gated unit to plant visual sinks in (`Backbone.projector` is None):
    # (model, sink_dims, sink_value) -> a linear layer of the vision side whose unit 0, once gated,
    # writes `sink_value`-sized values into `sink_dims` of the text stream (wired by this call).
    visual_sink_route: Callable[[torch.nn.Module, list[int], float], torch.nn.Linear] | None = None

    @property
    def folder_name(self) -> str:
        return self.folder or f"tiny_{self.model_type}"


def qwen_tokenizer(named_tokens: dict[str, str] | None = None) -> Qwen2Tokenizer:
    """A small byte-level BPE wrapped as Qwen2's tokenizer with Qwen's special tokens, plus
    `named_tokens` (attribute name -> token, as a checkpoint's `extra_special_tokens`)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=bpe,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS,
        **({"extra_special_tokens": named_tokens} if named_tokens else {}),
    )
    if named_tokens:  # named special tokens replace the unnamed ones: add those back
        tokenizer.add_special_tokens(
            {"extra_special_tokens": QWEN_SPECIAL_TOKENS}, replace_extra_special_tokens=False
        )
    tokenizer.add_tokens(QWEN_EXTRA_TOKENS)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def llama_tokenizer() -> LlamaTokenizer:
    """A small SentencePiece-style BPE (byte fallback) as Llama's tokenizer: `<s>` starts every prompt."""
    special_tokens = ["<unk>", "<s>", "</s>", *(f"<0x{value:02X}>" for value in range(256))]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE + len(special_tokens),
        special_tokens=special_tokens,
        initial_alphabet=sorted(set("".join(LLAVA_CORPUS))),
        show_progress=False,
    )
    bpe.train_from_iterator(LLAVA_CORPUS * 4, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [
        tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]
    ]
    tokenizer = LlamaTokenizer(
        vocab=model["vocab"],
        merges=merges,
        pad_token="<pad>",
        add_bos_token=True,
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.padding_side = "left"
    return tokenizer


def _qwen_ids(tokenizer) -> dict:
    tokens = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {name: tokenizer.convert_tokens_to_ids(token) for name, token in tokens.items()}


def _qwen_processor(processor_class, video_processor_class, patch_size: int) -> Callable:
    def build(shape: TinyShape) -> ProcessorMixin:
        pixels = {"min_pixels": shape.min_pixels, "max_pixels": shape.max_pixels, "patch_size": patch_size}
        return processor_class(
            image_processor=Qwen2VLImageProcessor(**pixels),
            tokenizer=qwen_tokenizer(),
            video_processor=video_processor_class(**pixels),
            chat_template=QWEN_CHAT_TEMPLATE,
        )

    return build


def _qwen2_text_config(shape: TinyShape, tokenizer) -> dict:
    """Qwen2-VL's and Qwen2.5-VL's text config: multimodal rotary sections, a large rotary base."""
    rope = {"type": "mrope", "mrope_section": shape.mrope_section()}
    return shape.text_config(tokenizer, rope_scaling=rope, rope_theta=1_000_000.0)


def _qwen2_vl_config(shape: TinyShape, tokenizer) -> Qwen2VLConfig:
    return Qwen2VLConfig(
        text_config=_qwen2_text_config(shape, tokenizer),
        vision_config={
            "depth": shape.vision_depth,
            "embed_dim": shape.vision_hidden_size,
            "hidden_size": shape.hidden_size,
            "mlp_ratio": 2,
            "num_heads": shape.vision_heads,
        },
        **_qwen_ids(tokenizer),
    )


def _qwen2_5_vl_config(shape: TinyShape, tokenizer) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=_qwen2_text_config(shape, tokenizer),
        vision_config={
            "depth": shape.vision_depth,
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_hidden_size * 2,
            "num_heads": shape.vision_heads,
            "out_hidden_size": shape.hidden_size,
            "fullatt_block_indexes": [shape.vision_depth - 1],
            "window_size": 112,
        },
        **_qwen_ids(tokenizer),
    )


def _qwen3_vl_config(shape: TinyShape, tokenizer, config_class=Qwen3VLConfig, **text) -> Qwen3VLConfig:
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0}
    rope |= {"mrope_section": shape.mrope_section(), "mrope_interleaved": True}
    return config_class(
        # Qwen3 has no attention bias; the tiny one enables it, so the planted sink heads can be wired.
        text_config=shape.text_config(
            tokenizer, head_dim=shape.head_dim, attention_bias=True, rope_parameters=rope, **text
        ),
        vision_config={
            "depth": shape.vision_depth,
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_hidden_size * 2,
            "num_heads": shape.vision_heads,
            "out_hidden_size": shape.hidden_size,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],  # one deepstack merger, adding into layer 0's output
        },
        **_qwen_ids(tokenizer),
    )


def _qwen3_5_config(shape: TinyShape, tokenizer) -> Qwen3_5Config:
    """Linear attention in layers 0, 1 and 3 (Qwen3.5 has it in three of four), softmax attention in
    layer 2, the one VAR acts on in a 4-layer model."""
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "partial_rotary_factor": 0.25}
    rope |= {"mrope_section": [2, 1, 1], "mrope_interleaved": True}  # a quarter of a 32-dim head
    linear = {
        "linear_num_key_heads": 4,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
    }
    return Qwen3_5Config(
        text_config=shape.text_config(
            tokenizer,
            head_dim=shape.head_dim,
            attention_bias=True,  # as Qwen3-VL's: for the planted sink heads
            rope_parameters=rope,
            layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
            **linear,
        ),
        vision_config={
            "depth": shape.vision_depth,
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_hidden_size * 2,
            "num_heads": shape.vision_heads,
            "out_hidden_size": shape.hidden_size,
            "num_position_embeddings": 64,
        },
        **_qwen_ids(tokenizer),
    )


def _qwen3_vl_moe_config(shape: TinyShape, tokenizer) -> Qwen3VLMoeConfig:
    """Qwen3-VL's, every MLP a mixture of 4 small experts, 2 per token (untied head, as Qwen3-VL's)."""
    experts = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": shape.intermediate_size}
    return _qwen3_vl_config(shape, tokenizer, Qwen3VLMoeConfig, tie_word_embeddings=False, **experts)


def gemma_tokenizer() -> GemmaTokenizer:
    """A small BPE (byte fallback, spaces as "▁") as Gemma's tokenizer with Gemma 3's special tokens."""
    special_tokens = [
        *("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
        *("<start_of_image>", "<end_of_image>", "<image_soft_token>"),
        *(f"<0x{value:02X}>" for value in range(256)),
    ]
    corpus = [*LLAVA_CORPUS, "user model system"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE + len(special_tokens),
        special_tokens=special_tokens,
        initial_alphabet=sorted(set("".join(corpus).replace(" ", "▁"))),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus * 4, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [
        tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]
    ]
    images = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tokenizer = GemmaTokenizer(
        vocab=model["vocab"],
        merges=merges,
        eos_token="<end_of_turn>",  # the real one's generation config stops there too
        add_bos_token=True,
        extra_special_tokens=images,
    )
    tokenizer.add_tokens(["<start_of_turn>", "<end_of_turn>"], special_tokens=True)
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


# Gemma 3's vision side: GEMMA3_IMAGE_SIDE-pixel squares, GEMMA3_PATCH-pixel patches, one token each.
GEMMA3_IMAGE_SIDE = 28
GEMMA3_PATCH = 7
# The vision tower's residual channels of the planted visual-sink gate: its output, a position signal.
GEMMA3_GATE_CHANNELS = (0, 1)


def _gemma3_processor(_shape: TinyShape) -> Gemma3Processor:
    side = {"height": GEMMA3_IMAGE_SIDE, "width": GEMMA3_IMAGE_SIDE}
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size=side),
        tokenizer=gemma_tokenizer(),
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=(GEMMA3_IMAGE_SIDE // GEMMA3_PATCH) ** 2,
    )


def _gemma3_config(shape: TinyShape, tokenizer) -> Gemma3Config:
    """Sliding-window layers (a window shorter than the test prompts) between global ones; an untied
    head, so the letter answers can be planted without touching the embedding."""
    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    text = shape.text_config(
        tokenizer,
        head_dim=shape.head_dim,
        query_pre_attn_scalar=shape.head_dim,
        attention_bias=True,  # Gemma has none; the planted sink heads need it
        rope_parameters=rope,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"] * (shape.num_layers // 2),
        tie_word_embeddings=False,
    )
    return Gemma3Config(
        text_config=text,
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_hidden_size * 2,
            "num_hidden_layers": shape.vision_depth,
            "num_attention_heads": shape.vision_heads,
            "image_size": GEMMA3_IMAGE_SIDE,
            "patch_size": GEMMA3_PATCH,
            "vision_use_head": False,
        },
        mm_tokens_per_image=(GEMMA3_IMAGE_SIDE // GEMMA3_PATCH) ** 2,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id,
        tie_word_embeddings=False,
    )


@torch.no_grad()
def _gemma3_visual_sink_route(model: torch.nn.Module, dims: list[int], sink_value: float) -> torch.nn.Linear:
    """Gemma 3's projector is a norm and a bare matrix: the gate is the vision tower's last MLP unit 0.

    Two vision residual channels are reserved (zeroed in every writer): the gate's output channel,
    which after the final layer norm and the projector's RMS norm is about sqrt(width) where the unit
    fires and near 0 elsewhere, and which the projector alone maps into `dims`; and a position channel
    the unit reads besides its random weights. A tower this small varies more between pictures than
    between their patches, so without it whole pictures would fire; with it, mostly the same few
    positions of each picture do.
    """
    vision = model.model.vision_tower
    output, position = GEMMA3_GATE_CHANNELS
    embeddings = vision.embeddings
    writers = [embeddings.patch_embedding]
    for layer in vision.encoder.layers:
        writers += [layer.self_attn.out_proj, layer.mlp.fc2]
    for writer in writers:
        writer.weight[[output, position]] = 0.0
        writer.bias[[output, position]] = 0.0
    embeddings.position_embedding.weight[:, output] = 0.0
    embeddings.position_embedding.weight[:, position].normal_(std=3.0)
    gate = vision.encoder.layers[-1].mlp
    gate.fc1.weight[0, position] = 1.0
    gate.fc2.weight[output, 0] = 10.0
    vision.post_layernorm.bias[output] = 0.0
    projection = model.model.multi_modal_projector.mm_input_projection_weight  # [vision, text]
    # transformers initialises it to zeros (a checkpoint brings its own): random, each visual token's
    # state about as loud as its normalised features.
    projection.normal_(std=projection.shape[0] ** -0.5)
    projection[:, dims] = 0.0
    # The channel's baseline (minus the token's mean over its std, from the layer norm) reaches about 1
    # where the gate is shut: at half of sink_value / sqrt(width) per unit it stays below tau.
    projection[output, dims] = sink_value / (2 * vision.config.hidden_size**0.5)
    return gate.fc1


# LLaVA's vision side: square crops of LLAVA_IMAGE_SIDE pixels cut into LLAVA_PATCH-pixel patches.
LLAVA_IMAGE_SIDE = 56
LLAVA_PATCH = 7


def _llava_processor(_shape: TinyShape) -> LlavaProcessor:
    side = {"height": LLAVA_IMAGE_SIDE, "width": LLAVA_IMAGE_SIDE}
    return LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": LLAVA_IMAGE_SIDE}, crop_size=side),
        tokenizer=llama_tokenizer(),
        patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's class token, which the "default" strategy drops
    )


def _llava_config(shape: TinyShape, tokenizer) -> LlavaConfig:
    text = shape.text_config(
        tokenizer,
        model_type="llama",
        # Llama has no attention bias; the tiny one enables it, so the planted sink heads can be wired.
        attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    )
    return LlavaConfig(
        text_config=text,
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_hidden_size * 2,
            "num_hidden_layers": shape.vision_depth,
            "num_attention_heads": shape.vision_heads,
            "image_size": LLAVA_IMAGE_SIDE,
            "patch_size": LLAVA_PATCH,
            "projection_dim": shape.vision_hidden_size,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(LLAVA_IMAGE_SIDE // LLAVA_PATCH) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )


# InternVL's vision side: INTERNVL_TILE-pixel tiles (448 in InternVL) in INTERNVL_PATCH-pixel patches,
# 2 x 2 patches per token after the pixel shuffle: 4 x 4 tokens per tile (16 x 16 in InternVL).
INTERNVL_TILE = 56
INTERNVL_PATCH = 7
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
# InternVL-hf's chat template is Qwen's with `<IMG_CONTEXT>\n` per image and `<video>\n` per video.
INTERNVL_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace(
    "<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n"
).replace("<|vision_start|><|video_pad|><|vision_end|>", "<video>\n")


def _internvl_processor(_shape: TinyShape) -> InternVLProcessor:
    tile = {"height": INTERNVL_TILE, "width": INTERNVL_TILE}
    tokenizer = qwen_tokenizer(INTERNVL_TOKENS)
    tokenizer.chat_template = INTERNVL_CHAT_TEMPLATE
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=tile, crop_to_patches=True, max_patches=12),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=tile),
        image_seq_length=(INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )


def _qwen2_decoder_config(shape: TinyShape, tokenizer) -> dict:
    """A Qwen2 decoder, as InternVL3 and LLaVA-OneVision use (Qwen2 has query/key biases, where the
    sink heads are wired)."""
    return shape.text_config(
        tokenizer,
        model_type="qwen2",
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=False,
    )


def _internvl_config(shape: TinyShape, tokenizer) -> InternVLConfig:
    text = _qwen2_decoder_config(shape, tokenizer)
    return InternVLConfig(
        text_config=text,
        vision_config={
            "hidden_size": shape.vision_hidden_size,
            "intermediate_size": shape.vision_hidden_size * 2,
            "num_hidden_layers": shape.vision_depth,
            "num_attention_heads": shape.vision_heads,
            "image_size": [INTERNVL_TILE, INTERNVL_TILE],
            "patch_size": [INTERNVL_PATCH, INTERNVL_PATCH],
        },
        image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_TOKENS["context_image_token"]),
        image_seq_length=(INTERNVL_TILE // INTERNVL_PATCH // 2) ** 2,
        tie_word_embeddings=False,
    )


# LLaVA-NeXT's and LLaVA-OneVision's vision side: ANYRES_SIDE-pixel tiles (336 / 384 in the real ones)
# in LLAVA_PATCH-pixel patches, one token each; the picture is resized onto the pinpoint (in pixels,
# height x width) that keeps most of it, padded, and cut into tiles.
ANYRES_SIDE = 28
ANYRES_PINPOINTS = [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]
ANYRES_TOKENS = {"image_token": "<image>", "video_token": "<video>"}
# llava-hf's OneVision chat template: Qwen's, with `<image>\n` per image and `<video>\n` per video.
ONEVISION_CHAT_TEMPLATE = INTERNVL_CHAT_TEMPLATE.replace("<IMG_CONTEXT>", "<image>")


def _anyres_vision(shape: TinyShape, model_type: str) -> dict:
    return {
        "model_type": model_type,
        "hidden_size": shape.vision_hidden_size,
        "intermediate_size": shape.vision_hidden_size * 2,
        "num_hidden_layers": shape.vision_depth,
        "num_attention_heads": shape.vision_heads,
        "image_size": ANYRES_SIDE,
        "patch_size": LLAVA_PATCH,
    }


def _llava_next_processor(_shape: TinyShape) -> LlavaNextProcessor:
    side = {"height": ANYRES_SIDE, "width": ANYRES_SIDE}
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": ANYRES_SIDE}, crop_size=side, image_grid_pinpoints=ANYRES_PINPOINTS
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=llama_tokenizer(),
        patch_size=LLAVA_PATCH,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's class token, which the "default" strategy drops
    )


def _llava_next_config(shape: TinyShape, tokenizer) -> LlavaNextConfig:
    config = _llava_config(shape, tokenizer)
    # 48 wide, not the shape's 64: with those random weights the planted gate happens to fire on no
    # token of one test image (the shared mechanism gates a fraction of all calibration tokens).
    width = {"hidden_size": 48, "intermediate_size": 96, "projection_dim": 48}
    return LlavaNextConfig(
        text_config=config.text_config,
        vision_config=_anyres_vision(shape, "clip_vision_model") | width,
        image_token_index=config.image_token_id,
        image_grid_pinpoints=ANYRES_PINPOINTS,
        image_seq_length=(ANYRES_SIDE // LLAVA_PATCH) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )


def _llava_onevision_processor(_shape: TinyShape) -> LlavaOnevisionProcessor:
    side = {"height": ANYRES_SIDE, "width": ANYRES_SIDE}
    tokenizer = qwen_tokenizer(ANYRES_TOKENS)
    tokenizer.chat_template = ONEVISION_CHAT_TEMPLATE
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=side, image_grid_pinpoints=ANYRES_PINPOINTS),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=side),
        num_image_tokens=(ANYRES_SIDE // LLAVA_PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )


def _llava_onevision_config(shape: TinyShape, tokenizer) -> LlavaOnevisionConfig:
    text = _qwen2_decoder_config(shape, tokenizer)
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=_anyres_vision(shape, "siglip_vision_model"),
        image_token_index=tokenizer.convert_tokens_to_ids(ANYRES_TOKENS["image_token"]),
        video_token_index=tokenizer.convert_tokens_to_ids(ANYRES_TOKENS["video_token"]),
        image_grid_pinpoints=ANYRES_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
    )


_QWEN = {
    "text_sink_tokens": ("<|im_start|>",),
    "visual_tokens": ("<|image_pad|>", "<|video_pad|>"),
    "end_of_answer": "<|im_end|>",
}
TINY_FAMILIES: dict[str, TinyFamily] = {
    family.model_type: family
    for family in (
        TinyFamily(
            "qwen2_vl",
            _qwen_processor(Qwen2VLProcessor, Qwen2VLVideoProcessor, patch_size=14),
            _qwen2_vl_config,
            **_QWEN,
        ),
        TinyFamily(
            "qwen2_5_vl",
            _qwen_processor(Qwen2_5_VLProcessor, Qwen2VLVideoProcessor, patch_size=14),
            _qwen2_5_vl_config,
            **_QWEN,
        ),
        TinyFamily(
            "qwen3_vl",
            _qwen_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, patch_size=16),
            _qwen3_vl_config,
            **_QWEN,
        ),
        TinyFamily(
            "qwen3_vl_moe",
            _qwen_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, patch_size=16),
            _qwen3_vl_moe_config,
            **_QWEN,
            # lmms-eval's qwen3_vl loads the MoE class only for a checkpoint named like Qwen3-VL-30B-A3B.
            folder="tiny_qwen3_vl_moe_A1B",
        ),
        TinyFamily(
            "qwen3_5",
            _qwen_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, patch_size=16),
            _qwen3_5_config,
            **_QWEN,
        ),
        TinyFamily(
            "gemma3",
            _gemma3_processor,
            _gemma3_config,
            text_sink_tokens=("<bos>",),
            visual_tokens=("<image_soft_token>",),
            end_of_answer="<end_of_turn>",
            visual_sink_route=_gemma3_visual_sink_route,
        ),
        TinyFamily(
            "llava",
            _llava_processor,
            _llava_config,
            text_sink_tokens=("<s>",),
            visual_tokens=("<image>",),
            end_of_answer="</s>",
            processor_only_chat_template=True,
        ),
        TinyFamily(
            "internvl",
            _internvl_processor,
            _internvl_config,
            text_sink_tokens=("<|im_start|>",),
            visual_tokens=(INTERNVL_TOKENS["context_image_token"],),
            end_of_answer="<|im_end|>",
        ),
        TinyFamily(
            "llava_next",
            _llava_next_processor,
            _llava_next_config,
            text_sink_tokens=("<s>",),
            visual_tokens=("<image>",),
            end_of_answer="</s>",
            processor_only_chat_template=True,
        ),
        TinyFamily(
            "llava_onevision",
            _llava_onevision_processor,
            _llava_onevision_config,
            text_sink_tokens=("<|im_start|>",),
            visual_tokens=tuple(ANYRES_TOKENS.values()),
            end_of_answer="<|im_end|>",
        ),
    )
}
