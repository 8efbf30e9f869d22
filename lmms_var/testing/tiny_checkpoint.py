"""Build a tiny random checkpoint of any supported family offline, optionally with planted attention sinks.

Planting makes VAR have real work on a random model: the chosen hidden channels (`sink_dims`) are
zero for every token except (a) chosen text tokens, whose embedding carries `sink_value` there, and
(b) the few visual tokens that fire one gated unit of the vision-to-text projector. No layer writes to
those channels (attention and MLP outputs, the projector's and any other visual writer's rows are
zeroed there), so the sinks persist through the residual stream, and the first key/value head of
every layer is wired to attend to them (as real sink heads do) while the other heads stay random.
One mechanism serves every family: the family's `Backbone` says where each of those modules is, and
`tiny_families` builds its tokenizer, processor and config.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin

from lmms_var.backbones import Backbone, backbone_for_config
from lmms_var.testing.images import random_images
from lmms_var.testing.tiny_families import TINY_FAMILIES, TinyFamily, TinyShape

# tau for tiny checkpoints: an RMS-normalised value can never exceed sqrt(hidden_size), so the paper's
# 20 never fires at width 128; planted sinks reach about sqrt(128 / 2) = 8.
TINY_TAU = 5.0
# Images the visual-sink gate is calibrated on (one prompt holds them all).
_CALIBRATION_IMAGES = 8


@dataclass(frozen=True)
class TinySpec:
    """Family, shape and planting of a tiny checkpoint. Defaults give a 4-layer, 128-wide GQA Qwen2.5-VL.

    `model_type` picks the family (a key of `tiny_families.TINY_FAMILIES`). `answers_letters` wires
    the output head so greedy decoding answers with one letter A-D and stops, the letter depending on
    the prompt: a random model then scores near chance on multiple-choice tasks instead of 0, so a
    demo's table has something to compare.
    """

    model_type: str = "qwen2_5_vl"
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
    visual_sink_fraction: float = 0.08
    sink_attention_logit: float = 6.0
    answers_letters: bool = False
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 64
    seed: int = 0

    @property
    def family(self) -> TinyFamily:
        if self.model_type not in TINY_FAMILIES:
            raise ValueError(
                f"TinySpec.model_type must be one of {sorted(TINY_FAMILIES)}, got {self.model_type!r}"
            )
        return TINY_FAMILIES[self.model_type]

    @property
    def shape(self) -> TinyShape:
        return TinyShape(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            vision_hidden_size=self.vision_hidden_size,
            vision_depth=self.vision_depth,
            vision_heads=self.vision_heads,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )

    @property
    def head_dim(self) -> int:
        return self.shape.head_dim


def build_tiny_processor(spec: TinySpec = TinySpec()) -> ProcessorMixin:
    """The family's tokenizer, image (and video) processors and chat template, as one processor."""
    return spec.family.processor(spec.shape)


def build_tiny_model(
    spec: TinySpec = TinySpec(), processor: ProcessorMixin | None = None, device: str = "cpu"
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random float32 model in eval mode (and its processor), sinks planted when `spec.sink_dims`.

    `device` builds it there directly (a 3B-shaped benchmark model is slow to initialise on a CPU).
    """
    processor = processor or build_tiny_processor(spec)
    config = spec.family.config(spec.shape, processor.tokenizer)
    backbone = backbone_for_config(config)
    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = backbone.loader_class()(config).eval()
    if spec.sink_dims:
        _plant_sinks(model, backbone, processor, spec)
    if spec.answers_letters:
        _plant_letter_answers(model, backbone, processor, spec)
    return model, processor


def _image_prompt(processor: ProcessorMixin, images: list, question: str, device: torch.device) -> dict:
    """Inputs of one user turn (the images, then the question) in the family's chat template."""
    content = [*({"type": "image"} for _ in images), {"type": "text", "text": question}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[text], images=images, return_tensors="pt").to(device)


@torch.no_grad()
def _reserve_channels(model: PreTrainedModel, backbone: Backbone, channels: list[int]) -> None:
    """Make `channels` of the residual stream written only by the embedding: zero them in every other
    writer (attention and MLP outputs of every layer, every visual writer), weights and biases."""
    paths = (backbone.attention_output, backbone.mlp_output, *backbone.layer_residual_writers)
    writers = [
        _writer(layer, path)
        for layer in backbone.decoder_layers(model)
        for path in paths
        if _has(layer, path)  # linear-attention layers (Qwen3.5) have no softmax attention, and back
    ]
    for weight, bias in [*writers, *((w.weight, w.bias) for w in backbone.visual_writers(model))]:
        weight[..., channels, :] = 0.0  # [out, in], or [experts, out, in]
        if bias is not None:
            bias[channels] = 0.0


def _has(layer: torch.nn.Module, path: str) -> bool:
    owner = path.rsplit(".", 1)[0]
    return owner == path or any(name == owner for name, _ in layer.named_modules())


def _writer(layer: torch.nn.Module, path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a linear module at `path`, or (the parameter, None) for MoE experts' weights."""
    try:
        module = layer.get_submodule(path)
    except AttributeError:
        return layer.get_parameter(path), None
    return module.weight, module.bias


@torch.no_grad()
def _plant_sinks(
    model: PreTrainedModel, backbone: Backbone, processor: ProcessorMixin, spec: TinySpec
) -> None:
    dims = list(spec.sink_dims)
    if max(dims) >= spec.hidden_size:
        raise ValueError(f"TinySpec.sink_dims {dims} must be < hidden_size {spec.hidden_size}")
    embedding = backbone.text_model_of(model).get_input_embeddings()
    embedding.weight[:, dims] = 0.0
    _reserve_channels(model, backbone, dims)
    for token in spec.family.text_sink_tokens:
        embedding.weight[processor.tokenizer.convert_tokens_to_ids(token), dims] = spec.sink_value
    _plant_visual_sinks(model, backbone, processor, spec)
    _wire_sink_heads(model, backbone, spec)


def _plant_visual_sinks(
    model: PreTrainedModel, backbone: Backbone, processor: ProcessorMixin, spec: TinySpec
) -> None:
    """Gate projector unit 0 so that only the top `visual_sink_fraction` of visual tokens fire it
    (or the unit the family's `visual_sink_route` wires into the sink dims, where it has one)."""
    route = spec.family.visual_sink_route
    if route is None:
        first, last = backbone.projector_layers(model)
        last.weight[list(spec.sink_dims), 0] = spec.sink_value / 40.0
    else:
        first = route(model, list(spec.sink_dims), spec.sink_value)
    captured: list[torch.Tensor] = []
    hook = first.register_forward_hook(
        lambda _m, _i, out: captured.append(out.reshape(-1, out.shape[-1])[:, 0])
    )
    images = random_images(_CALIBRATION_IMAGES, seed=spec.seed + 1)
    model(**_image_prompt(processor, images, "Describe the pictures.", first.weight.device))
    hook.remove()
    pre_activation = torch.cat(captured)
    threshold = torch.quantile(pre_activation.float(), 1.0 - spec.visual_sink_fraction)
    spread = pre_activation.std().clamp(min=1e-6)
    gain = 20.0 / spread
    first.weight[0] *= gain
    # A token 1 spread above the threshold reaches about sink_value / 2; most firing tokens exceed it.
    first.bias[0] = (first.bias[0] - threshold) * gain


def _wire_sink_heads(model: PreTrainedModel, backbone: Backbone, spec: TinySpec) -> None:
    """Make the first key/value head's query heads attend strongly to sink tokens.

    The wiring lives in the lowest rotary frequency, which barely rotates over a few thousand
    positions, so the attraction does not depend on distance. A query's wired dims come from its
    bias (the tiny configs enable attention biases where the family has none). Where queries and
    keys are normalised per head (Qwen3), the wired dims dominate a sink's key and every query of the
    wired heads, so the attraction is set by the norms' weights there instead.
    """
    head_dim = spec.head_dim
    low_freq = [head_dim // 2 - 1, head_dim - 1]
    group = spec.num_heads // spec.num_kv_heads
    dims = list(spec.sink_dims)
    # A sink's normalised state is about sqrt(hidden / len(dims)) in each sink dim.
    sink_norm = (spec.hidden_size / len(dims)) ** 0.5
    strength = (spec.sink_attention_logit * head_dim**0.5 / (sink_norm * len(dims))) ** 0.5
    query_bias = strength / len(low_freq)
    if backbone.query_key_norms:
        query_bias *= 10.0  # dominate the random part of every wired query before normalisation
    # Each head's rows of the query projection (query, then its output gate where the family gates).
    head_rows = head_dim * (2 if backbone.gated_query else 1)
    layers = backbone.decoder_layers(model)
    for layer in (layers[index] for index in backbone.attention_layers(model)):
        query, key = layer.get_submodule(backbone.query), layer.get_submodule(backbone.key)
        if query.bias is None or key.bias is None:
            raise ValueError(
                f"{backbone.family}'s tiny config must enable attention biases to wire sink heads"
            )
        for dim in low_freq:
            key.weight[dim, :] = 0.0
            key.weight[dim, dims] = strength
            key.bias[dim] = 0.0
            for head in range(group):
                query.bias[head * head_rows + dim] = query_bias
                query.weight[head * head_rows + dim, :] = 0.0
        if backbone.query_key_norms:
            # Normalised, a wired dim holds about sqrt(head_dim / 2) of a sink's key and of a wired
            # query: the logit is scale^2 * sqrt(head_dim) over the two dims.
            scale = (spec.sink_attention_logit / head_dim**0.5) ** 0.5
            for path in backbone.query_key_norms:
                _set_norm_scale(layer.get_submodule(path), low_freq, scale)


def _set_norm_scale(norm: torch.nn.Module, dims: list[int], scale: float) -> None:
    """Make an RMS norm scale `dims` by `scale`, whether it multiplies by its weight or (Gemma) by 1 + weight."""
    norm.weight[dims] = 0.0
    at_zero = norm(torch.ones(norm.weight.shape, device=norm.weight.device))[dims]  # 0 or 1
    norm.weight[dims] = scale - at_zero


# Channels the letter-answer wiring owns: "always on" and "the previous token was a letter".
_ANSWER_CHANNELS = (0, 1)
_ANSWER_MARK = 0.1  # their value when on: small, so they barely shift the final norm


@torch.no_grad()
def _plant_letter_answers(
    model: PreTrainedModel, backbone: Backbone, processor: ProcessorMixin, spec: TinySpec
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
    _reserve_channels(model, backbone, channels)  # as for sinks: only the planted sources write these
    if backbone.projector is not None:  # visual tokens carry the mark too, where the projector has a bias
        backbone.projector_layers(model)[1].bias[channels] = torch.tensor([_ANSWER_MARK, 0.0])
    embedding = backbone.text_model_of(model).get_input_embeddings()
    embedding.weight[:, channels] = torch.tensor([_ANSWER_MARK, 0.0])
    embedding.weight[letters, after_letter] = _ANSWER_MARK
    states = _answer_states(model, backbone, processor, spec)
    mark = states[:, always].mean()  # the normalised "always" channel at the answer position
    states[:, channels] = 0.0
    head = model.lm_head.weight
    head[letters] = _principal_letter_rows(states)
    head[:, channels] = 0.0
    head[letters, always] = 10.0 / mark
    head[tokenizer.convert_tokens_to_ids(spec.family.end_of_answer), after_letter] = 30.0 / mark


def _answer_states(
    model: PreTrainedModel, backbone: Backbone, processor: ProcessorMixin, spec: TinySpec
) -> torch.Tensor:
    """Float[N, hidden]: final (normalised) states at the answer position of N calibration prompts."""
    question = "Which one is it?\n(A) first\n(B) second\n(C) third\n(D) fourth"
    multimodal = backbone.multimodal_model(model)
    states = []
    for image in random_images(12, seed=spec.seed + 2):
        inputs = _image_prompt(processor, [image], question, model.device)
        states.append(multimodal(**inputs).last_hidden_state[0, -1].float())
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
    if spec.family.processor_only_chat_template:
        template = path / "chat_template.jinja"  # read by the tokenizer too
        (path / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}))
        template.unlink()
    (path / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return path
