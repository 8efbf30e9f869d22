"""Measure a backbone's sink dimensions: channels where a few tokens are massive and all others small.

For every prompt and every decoder layer `l` in `layers` (default: `2 .. L-1`, where VAR may act),
the residual stream entering layer `l` is RMS-normalised as in spec step 1 (`r = |x / rms(x)|`). One
such (prompt, layer) pair is an *observation*. A channel `d` *fires* in an observation when

- at least one and at most `max_token_fraction` of the tokens have `r[t, d] > tau` (few massive
  tokens: the sinks), and
- the mean of `r[t, d]` over all other tokens is at most `quiet_fraction * tau` (the rest stay small).

A channel's *consistency* is the fraction of observations in which it fires. Sink channels fire in
nearly every one, from early layers on; the finder returns every channel whose consistency reaches
`min_consistency`, sorted ascending. The computation is a deterministic function of the model and the
prompts.
"""

import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lmms_var.backbones import backbone_for
from lmms_var.checks import check_layers
from lmms_var.config import DEFAULT_TAU, check_tau
from lmms_var.core import rms_normalized
from lmms_var.sink_dims.calibration import CalibrationPrompt, builtin_prompts, encode_prompt
from lmms_var.sink_dims.defaults import (
    DEFAULT_MAX_TOKEN_FRACTION,
    DEFAULT_MIN_CONSISTENCY,
    DEFAULT_QUIET_FRACTION,
)

# Channels listed in the evidence beyond the selected ones, so the margin to the next candidate shows.
EXTRA_EVIDENCE_DIMS = 4
TOP_TOKENS = 5


@dataclass(frozen=True)
class SinkDimsResult:
    """The finder's answer: the selected channels and the per-channel evidence behind them."""

    model: str
    sink_dims: tuple[int, ...]
    evidence: dict

    def to_json(self) -> dict:
        return {"model": self.model, "sink_dims": list(self.sink_dims), "evidence": self.evidence}

    def table(self) -> str:
        """A short human-readable summary: one line per reported channel."""
        ev = self.evidence
        lines = [
            f"sink dims of {self.model}: {list(self.sink_dims)} "
            f"(tau {ev['tau']:g}, layers {ev['layers'][0]}-{ev['layers'][-1]}, "
            f"{ev['num_prompts']} {ev['prompts']} prompts)",
            f"{'dim':>6} {'selected':>8} {'consistency':>11} {'strength':>8} {'background':>10}  tokens",
        ]
        for dim, row in ev["dims"].items():
            tokens = ", ".join(f"{token} x{count}" for token, count in row["tokens"].items())
            lines.append(
                f"{dim:>6} {'yes' if int(dim) in self.sink_dims else 'no':>8} {row['consistency']:>11.2f} "
                f"{row['strength']:>8.2f} {row['background']:>10.2f}  {tokens}"
            )
        return "\n".join(lines)


def model_name(model: torch.nn.Module) -> str:
    """The checkpoint a model was loaded from, or its class name for a model built in memory."""
    return getattr(model.config, "_name_or_path", "") or type(model).__name__


def check_finder_settings(*, tau: float, min_consistency: float) -> None:
    """`find_sink_dims`' thresholds, checkable before a model is loaded (the CLI does so)."""
    check_tau(tau)
    if not 0 < min_consistency <= 1:
        raise ValueError(f"min_consistency must be in (0, 1], got {min_consistency!r}")


def measured_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """The decoder layers the finder and the validator measure: `layers` checked against the model,
    or the default `2 .. num_layers - 1` (sinks form from layer 2 on)."""
    if layers is None:
        if num_layers <= 2:
            raise ValueError(f"the model has {num_layers} decoder layers; sinks are measured from layer 2 on")
        return list(range(2, num_layers))
    return check_layers(layers, num_layers)


@contextmanager
def layer_input_hooks(
    model: torch.nn.Module, layers: Sequence[int], on_input: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """Call `on_input(layer, hidden_states)` with the residual stream entering each of `layers`."""
    modules = backbone_for(model).decoder_layers(model)
    handles = []
    for index in layers:

        def hook(_module, args, kwargs, index=index):
            on_input(index, kwargs.get("hidden_states", args[0] if args else None))

        handles.append(modules[index].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def encoded_prompts(
    model: torch.nn.Module, processor, prompts: Sequence[CalibrationPrompt], *, progress: bool, desc: str
) -> Iterator[dict]:
    """Each prompt's model inputs (batch of one) on the model's device, with a progress bar if asked."""
    device = next(model.parameters()).device
    for prompt in tqdm(prompts, desc=desc, unit="prompt", disable=not progress, file=sys.stderr):
        yield {name: value.to(device) for name, value in encode_prompt(processor, prompt).items()}


class _ChannelStats:
    """Running per-channel counts over observations (all tensors have one entry per channel, on the CPU)."""

    def __init__(self, hidden_size: int, layers: Sequence[int], settings: dict) -> None:
        self.settings = settings
        self.observations = 0
        self.fired = torch.zeros(hidden_size, dtype=torch.long)
        self.fired_per_layer = {layer: torch.zeros(hidden_size, dtype=torch.long) for layer in layers}
        self.strength_sum = torch.zeros(hidden_size, dtype=torch.float64)
        self.background_sum = torch.zeros(hidden_size, dtype=torch.float64)
        self.tokens: dict[int, Counter] = {}
        self.prompt_tokens: list[str] = []  # the tokens of the prompt being run

    @torch.no_grad()
    def add(self, layer: int, hidden_states: torch.Tensor) -> None:
        """One observation, reduced on the model's device so only per-channel vectors are kept."""
        r = rms_normalized(hidden_states[0])
        tau = self.settings["tau"]
        massive = r > tau
        count = massive.sum(dim=0)
        few = (count >= 1) & (count <= max(1, int(self.settings["max_token_fraction"] * r.shape[0])))
        others = r.masked_fill(massive, 0.0).sum(dim=0) / (r.shape[0] - count).clamp(min=1)
        fires = few & (others <= self.settings["quiet_fraction"] * tau)
        strength = r.masked_fill(~massive, 0.0).sum(dim=0) / count.clamp(min=1)
        fires, strength, others = fires.cpu(), strength.cpu(), others.cpu()
        self.observations += 1
        self.fired += fires
        self.fired_per_layer[layer] += fires
        self.strength_sum += torch.where(fires, strength, 0.0).double()
        self.background_sum += torch.where(fires, others, 0.0).double()
        for dim in fires.nonzero().flatten().tolist():
            positions = massive[:, dim].nonzero().flatten().tolist()
            self.tokens.setdefault(dim, Counter()).update(self.prompt_tokens[p] for p in positions)

    def evidence(self, dim: int, prompts_per_layer: int) -> dict:
        fired = max(int(self.fired[dim]), 1)
        return {
            "consistency": round(int(self.fired[dim]) / self.observations, 4),
            "strength": round(float(self.strength_sum[dim]) / fired, 4),
            "background": round(float(self.background_sum[dim]) / fired, 4),
            "layers": {
                str(layer): round(int(counts[dim]) / prompts_per_layer, 4)
                for layer, counts in self.fired_per_layer.items()
            },
            "tokens": dict(self.tokens.get(dim, Counter()).most_common(TOP_TOKENS)),
        }


def find_sink_dims(
    model: torch.nn.Module,
    processor,
    *,
    tau: float = DEFAULT_TAU,
    prompts: Sequence[CalibrationPrompt] | None = None,
    prompt_source: str = "builtin",
    layers: Sequence[int] | None = None,
    min_consistency: float = DEFAULT_MIN_CONSISTENCY,
    max_token_fraction: float = DEFAULT_MAX_TOKEN_FRACTION,
    quiet_fraction: float = DEFAULT_QUIET_FRACTION,
    progress: bool = False,
) -> SinkDimsResult:
    """Rank hidden channels by how consistently they carry sinks (module docstring); select the top ones.

    `prompts` default to the built-in calibration prompts; `prompt_source` names them in the evidence.
    Raises `ValueError` when no channel reaches `min_consistency` (e.g. `tau` too high for the model).
    """
    check_finder_settings(tau=tau, min_consistency=min_consistency)
    prompts = builtin_prompts() if prompts is None else list(prompts)
    backbone = backbone_for(model)
    layers = measured_layers(layers, len(backbone.decoder_layers(model)))
    hidden_size = backbone.text_config(model).hidden_size
    settings = {"tau": tau, "max_token_fraction": max_token_fraction, "quiet_fraction": quiet_fraction}
    stats = _ChannelStats(hidden_size, layers, settings)
    with layer_input_hooks(model, layers, stats.add), torch.no_grad():
        for inputs in encoded_prompts(model, processor, prompts, progress=progress, desc="find-sink-dims"):
            stats.prompt_tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
            model(**inputs, use_cache=False)

    consistency = stats.fired.double() / stats.observations
    strength = stats.strength_sum / stats.fired.clamp(min=1)
    ranked = sorted(range(hidden_size), key=lambda d: (-float(consistency[d]), -float(strength[d]), d))
    selected = [d for d in ranked if consistency[d] >= min_consistency]
    if not selected:
        best = ranked[0]
        raise ValueError(
            f"no hidden channel of {model_name(model)} fired (a few tokens above tau={tau:g}, the rest small) "
            f"in at least {min_consistency:.0%} of {stats.observations} prompt-layer pairs; the best, channel "
            f"{best}, fired in {float(consistency[best]):.0%}. Try a lower tau (an RMS-normalised value "
            f"cannot exceed sqrt(hidden_size) = {hidden_size**0.5:.1f})"
        )
    reported = [d for d in ranked[: len(selected) + EXTRA_EVIDENCE_DIMS] if stats.fired[d] > 0]
    evidence = {
        "tau": tau,
        "layers": layers,
        "prompts": prompt_source,
        "num_prompts": len(prompts),
        "observations": stats.observations,
        "min_consistency": min_consistency,
        "max_token_fraction": max_token_fraction,
        "quiet_fraction": quiet_fraction,
        "dims": {str(d): stats.evidence(d, len(prompts)) for d in reported},
    }
    return SinkDimsResult(model_name(model), tuple(sorted(selected)), evidence)
