"""Check sink dimensions against attention: do the tokens they detect really receive outsized attention?

Per prompt and decoder layer `l` in `layers` (default `2 .. L-1`; layers without softmax attention,
Qwen3.5's linear-attention ones, are left out):

- *detected*: spec step 1 with the given `dims` and `tau` on the residual stream entering layer `l`.
- *outsized attention*: the layer's post-softmax attention `A[h, q, k]` (eager, float32) is compared
  with the uniform share `1 / n_q` of query `q` over the `n_q` keys its mask lets it see (`q + 1`
  for a causal query; fewer in a sliding window). Key `k` receives
  `ratio[k] = mean over heads h and queries q >= k + min_distance that see k of n_q * A[h, q, k]`
  and gets outsized attention when `ratio[k] > attention_factor`. Queries closer than `min_distance`
  are left out because attention to the last few tokens (local attention) is large in any model and
  says nothing about sinks; the last `min_distance` tokens, which no query scores, are not counted.

Over all scored (prompt, layer, token) triples, `precision = |detected & outsized| / |detected|` and
`recall = |detected & outsized| / |outsized|` (`None` when the denominator is zero).
"""

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lmms_var.backbones import backbone_for
from lmms_var.config import DEFAULT_TAU, check_tau
from lmms_var.core import find_sink_tokens
from lmms_var.sink_dims.calibration import CalibrationPrompt, builtin_prompts
from lmms_var.sink_dims.defaults import DEFAULT_ATTENTION_FACTOR, DEFAULT_MIN_DISTANCE
from lmms_var.sink_dims.finder import (
    encoded_prompts,
    layer_input_hooks,
    measured_layers,
    model_name,
)


@dataclass(frozen=True)
class ValidationResult:
    """Precision and recall of detected sinks against outsized attention, in total and per layer."""

    model: str
    sink_dims: tuple[int, ...]
    precision: float | None
    recall: float | None
    per_layer: dict[int, dict[str, int]]
    settings: dict

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "sink_dims": list(self.sink_dims),
            "precision": self.precision,
            "recall": self.recall,
            "per_layer": {str(layer): counts for layer, counts in self.per_layer.items()},
            "settings": self.settings,
        }

    def table(self) -> str:
        lines = [
            f"sink dims {list(self.sink_dims)} of {self.model} at tau {self.settings['tau']:g}: "
            f"precision {_ratio(self.precision)}, recall {_ratio(self.recall)} "
            f"(outsized = mean attention > {self.settings['attention_factor']:g}x the uniform share)",
            f"{'layer':>6} {'detected':>9} {'outsized':>9} {'both':>6} {'scored':>7}",
        ]
        for layer, counts in self.per_layer.items():
            lines.append(
                f"{layer:>6} {counts['detected']:>9} {counts['outsized']:>9} {counts['both']:>6} "
                f"{counts['scored']:>7}"
            )
        return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def outsized_attention(
    attention: torch.Tensor, attention_factor: float, min_distance: int, visible: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(outsized, scored), both Bool[K], for one sample's attention `[H, Q, K]` with `Q == K`.

    `visible` Bool[Q, K] is what the mask lets each query see (None: causal). See the module
    docstring for the definition; `scored` marks keys with at least one counted query.
    """
    keys = attention.shape[-1]
    if attention.dim() != 3 or attention.shape[-2] != keys:
        raise ValueError(
            f"attention must be a prefill's [heads, Q, K] with Q == K, got {tuple(attention.shape)}"
        )
    position = torch.arange(keys, device=attention.device)
    if visible is None:
        visible = position[:, None] >= position[None, :]
    counted = visible & (position[:, None] >= position[None, :] + min_distance)  # [Q, K]
    weighted = attention.float().mean(dim=0) * visible.sum(dim=1, keepdim=True)  # share relative to uniform
    num_queries = counted.sum(dim=0)
    ratio = (weighted * counted).sum(dim=0) / num_queries.clamp(min=1)
    scored = num_queries > 0
    return (ratio > attention_factor) & scored, scored


def _visible(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Bool[Q, K] of one prompt's 4-D eager mask (bool, or additive: blocked far below zero); None
    for no mask (causal)."""
    if mask is None:
        return None
    mask = mask[0, 0]
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


@contextmanager
def _eager_attention(text_config) -> Iterator[None]:
    """Run the text decoder with eager attention, the kernel that returns attention weights."""
    previous = text_config._attn_implementation
    text_config._attn_implementation = "eager"
    try:
        yield
    finally:
        text_config._attn_implementation = previous


def validate_sink_dims(
    model: torch.nn.Module,
    processor,
    dims: Sequence[int],
    *,
    tau: float = DEFAULT_TAU,
    prompts: Sequence[CalibrationPrompt] | None = None,
    prompt_source: str = "builtin",
    layers: Sequence[int] | None = None,
    attention_factor: float = DEFAULT_ATTENTION_FACTOR,
    min_distance: int = DEFAULT_MIN_DISTANCE,
    progress: bool = False,
) -> ValidationResult:
    """Compare the sinks `dims` and `tau` detect with the tokens receiving outsized attention."""
    dims = tuple(dims)
    backbone = backbone_for(model)
    text_config = backbone.text_config(model)
    check_dims(dims, text_config.hidden_size)
    check_validation_settings(tau=tau, attention_factor=attention_factor, min_distance=min_distance)
    prompts = builtin_prompts() if prompts is None else list(prompts)
    modules = backbone.decoder_layers(model)
    layers = [
        layer for layer in measured_layers(layers, len(modules)) if layer in backbone.attention_layers(model)
    ]
    counts = {layer: dict.fromkeys(("detected", "outsized", "both", "scored"), 0) for layer in layers}
    detected: dict[int, torch.Tensor] = {}

    def detect(layer: int, hidden_states: torch.Tensor) -> None:
        detected[layer] = find_sink_tokens(hidden_states, dims, tau)[0]

    def compare(layer: int, attention: torch.Tensor, mask: torch.Tensor | None) -> None:
        outsized, scored = outsized_attention(attention[0], attention_factor, min_distance, _visible(mask))
        sinks = detected.pop(layer) & scored
        for name, mask in (("detected", sinks), ("outsized", outsized), ("both", sinks & outsized)):
            counts[layer][name] += int(mask.sum())
        counts[layer]["scored"] += int(scored.sum())

    hooks = [
        backbone.attention_of(modules[layer]).register_forward_hook(
            lambda _module, _args, kwargs, output, layer=layer: compare(
                layer, output[1], kwargs.get("attention_mask")
            ),
            with_kwargs=True,
        )
        for layer in layers
    ]
    try:
        with layer_input_hooks(model, layers, detect), _eager_attention(text_config), torch.no_grad():
            for inputs in encoded_prompts(
                model, processor, prompts, progress=progress, desc="validate-sink-dims"
            ):
                model(**inputs, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()

    total = {
        name: sum(layer_counts[name] for layer_counts in counts.values())
        for name in ("detected", "outsized", "both")
    }
    settings = {
        "tau": tau,
        "layers": layers,
        "prompts": prompt_source,
        "num_prompts": len(prompts),
        "attention_factor": attention_factor,
        "min_distance": min_distance,
        "outsized_attention": (
            "key k of a layer gets outsized attention when the mean over heads h and queries "
            f"q >= k + {min_distance} that see k of n_q * A[h, q, k] exceeds {attention_factor:g} "
            "(n_q: the keys q sees, 1 / n_q its uniform share); the last tokens, with no such query, "
            "are not scored"
        ),
        **total,
    }
    return ValidationResult(
        model=model_name(model),
        sink_dims=dims,
        precision=total["both"] / total["detected"] if total["detected"] else None,
        recall=total["both"] / total["outsized"] if total["outsized"] else None,
        per_layer=counts,
        settings=settings,
    )


def check_validation_settings(*, tau: float, attention_factor: float, min_distance: int) -> None:
    """`validate_sink_dims`' settings, checkable before a model is loaded (the CLI does so)."""
    check_tau(tau)
    if isinstance(attention_factor, bool) or not isinstance(attention_factor, int | float):
        raise ValueError(f"attention_factor must be a number, got {attention_factor!r}")
    if not 0 < attention_factor < math.inf:
        raise ValueError(
            f"attention_factor must be a finite multiple > 0 of the uniform attention share, got {attention_factor!r}"
        )
    if isinstance(min_distance, bool) or not isinstance(min_distance, int) or min_distance < 0:
        raise ValueError(
            f"min_distance must be an integer >= 0 (queries at least this far after a key), got {min_distance!r}"
        )


def check_dims(dims: Sequence[int], hidden_size: int) -> None:
    """Sink dims must be distinct hidden-state channels of the model: `0 <= d < hidden_size`."""
    if not dims:
        raise ValueError("dims must name at least one hidden-state channel")
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < hidden_size]
    if bad:
        raise ValueError(
            f"dims {bad} are beyond the model's hidden size {hidden_size}: "
            f"sink dims must be channels in [0, {hidden_size})"
        )
