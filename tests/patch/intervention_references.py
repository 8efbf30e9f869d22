"""Eager ScalingVis/AdaptVis and PAI written from INTERVENTIONS_SPEC.md alone, independent of
`lmms_var.patch` and `lmms_var.backbones`: what the fused implementations are checked against.

Every softmax-attention layer materialises its scores `s = q k^T * scaling + mask` in float32 (the
arithmetic of transformers' eager attention, so an identity change gives its logits bit for bit), a
rule picks which rows and visual keys change, and the row's softmax is taken over the changed scores.
Rows are picked by absolute position, so one rule serves a cached `generate` (prefill, then one row per
step) and a whole-sequence forward alike: ScalingVis changes the last prompt row (position P-1 of the
left-padded prompt), PAI every row from P-1 on (each is the last row of the call that computes it when
a cache is used). The generation loops below are plain greedy loops that re-run the whole sequence at
every step (no cache, nothing of `generate`), so they are independent of the cache and of transformers'
generation machinery. What they know of a family (its visual placeholder ids) is given by the caller;
every family in the test matrix keeps its text decoder at `model.model.language_model`.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "test_eager_intervention"
PAI_CUTOFF = 0.1  # PAI drops tokens whose main-stream probability is below this share of the top one

ScoreChange = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores, alpha [B,1,1,1]) -> scores


def scaled(scores: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """ScalingVis: s' = alpha * s."""
    return scores * alpha


def amplified(scores: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """PAI: s' = s + alpha * |s|."""
    return scores + alpha * scores.abs()


@dataclass(frozen=True)
class RowRule:
    """Which rows of which layers change, and how the scores of their visible visual keys change."""

    change: ScoreChange
    alpha: torch.Tensor  # Float[B]: one value per prompt
    layers: range  # decoder layer indices
    generated_rows: bool  # the rows after the prompt change too (PAI), not only the last prompt row


@dataclass
class ForwardEnd:
    """Where the forward running now ends: positions seen so far, its new ones included."""

    end: int = 0


def attention_function(rule: RowRule, visual: torch.Tensor, forward: ForwardEnd):
    """An attention function applying `rule`; `visual` Bool[B, P] marks the prompt's visual keys."""
    prompt_length = visual.shape[1]
    last_row = prompt_length - 1
    alpha = rule.alpha.to(visual.device)[:, None, None, None]

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1).float(), value.repeat_interleave(groups, 1).float()
        scores = torch.matmul(query.float(), key.transpose(2, 3)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None:
            scores = scores + attention_mask.float()
        if module.layer_idx in rule.layers:
            queries, keys = scores.shape[-2:]
            row_positions = torch.arange(forward.end - queries, forward.end, device=scores.device)
            picked = row_positions >= last_row if rule.generated_rows else row_positions == last_row
            # Generated positions are never visual; a sliding-window cache hands over the last keys only.
            seen = torch.nn.functional.pad(visual, (0, forward.end - prompt_length))[:, forward.end - keys :]
            where = picked[None, None, :, None] & seen[:, None, None, :]
            if attention_mask is not None:  # a masked key stays masked: the spec changes visible keys
                where = where & (attention_mask == 0)
            scores = torch.where(where, rule.change(scores, alpha), scores)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32)
        output = torch.matmul(weights, value).to(query.dtype)
        return output.transpose(1, 2).contiguous(), weights.to(query.dtype)

    return attention


@contextmanager
def eager_intervention(model, rule: RowRule, inputs, visual_ids: list[int]) -> Iterator[None]:
    """Run `model` with `rule` on this one prompt batch (forwards of the prompt, the prompt followed by
    generated tokens, or a `generate`)."""
    input_ids = inputs["input_ids"]
    visual = torch.isin(input_ids, torch.tensor(list(visual_ids), device=input_ids.device))
    text_model = model.get_submodule("model.language_model")
    forward = ForwardEnd()

    def track_positions(_module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        new = embeds if embeds is not None else kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        forward.end = (cache.get_seq_length() if cache is not None else 0) + new.shape[1]

    AttentionInterface.register(NAME, attention_function(rule, visual, forward))
    AttentionMaskInterface.register(NAME, eager_mask)
    hook = text_model.register_forward_pre_hook(track_positions, with_kwargs=True)
    text_config = text_model.config
    original = text_config._attn_implementation
    text_config._attn_implementation = NAME
    try:
        yield
    finally:
        text_config._attn_implementation = original
        hook.remove()


def _per_prompt(alpha: float | torch.Tensor, inputs) -> torch.Tensor:
    return torch.as_tensor(alpha, dtype=torch.float32).expand(inputs["input_ids"].shape[0])


def scalingvis_rule(alpha: float | torch.Tensor, inputs) -> RowRule:
    """ScalingVis with `alpha` (a float, or Float[B] per prompt): every layer, the last prompt row."""
    return RowRule(scaled, _per_prompt(alpha, inputs), range(2**31), generated_rows=False)


def pai_rule(alpha: float, start_layer: int, end_layer: int, inputs) -> RowRule:
    """PAI's amplification: layers start_layer..end_layer-1, the last prompt row and every generated row."""
    return RowRule(amplified, _per_prompt(alpha, inputs), range(start_layer, end_layer), generated_rows=True)


def eager_scalingvis(model, alpha: float | torch.Tensor, inputs, visual_ids: list[int]):
    """ScalingVis(alpha) on this prompt batch; `alpha` a float or Float[B] (AdaptVis's per-prompt choice)."""
    return eager_intervention(model, scalingvis_rule(alpha, inputs), inputs, visual_ids)


def eager_pai_attention(model, alpha: float, start_layer: int, end_layer: int, inputs, visual_ids: list[int]):
    """PAI's attention amplification on this prompt batch (no logit refine: that is `reference_pai_generate`)."""
    return eager_intervention(model, pai_rule(alpha, start_layer, end_layer, inputs), inputs, visual_ids)


@dataclass(frozen=True)
class Generation:
    """What a reference greedy loop chose, and from what."""

    tokens: torch.Tensor  # Long[B, N]: the generated tokens (N = max_new_tokens; no stop at end of text)
    logits: torch.Tensor  # Float[N, B, V]: the (main stream's) raw logits of each step, as `output_logits`
    scores: torch.Tensor  # Float[N, B, V]: what each step's argmax was taken over, as `output_scores`


def appended(inputs, tokens: torch.Tensor) -> dict:
    """`inputs` with `tokens` Long[B, n] appended to every prompt: the attention mask grows with ones and
    every other per-position tensor (token type ids) with zeros, text's type."""
    batch, length = inputs["input_ids"].shape
    grown = dict(inputs)
    for name, value in inputs.items():
        if name == "input_ids":
            grown[name] = torch.cat([value, tokens.to(value)], dim=1)
        elif torch.is_tensor(value) and value.dim() == 2 and value.shape == (batch, length):
            fill = 1 if name == "attention_mask" else 0
            grown[name] = torch.cat([value, torch.full_like(tokens, fill).to(value)], dim=1)
    return grown


@torch.no_grad()
def last_logits(model, inputs) -> torch.Tensor:
    """Float32[B, V]: the logits of each prompt's last position, from one whole forward without a cache."""
    return model(**inputs, use_cache=False).logits[:, -1].float()


def _greedy(
    step: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], batch: int, max_new_tokens: int
) -> Generation:
    """A greedy loop: `step(tokens so far)` -> (logits, scores) of the next position."""
    tokens = torch.zeros(batch, 0, dtype=torch.long)
    logits, scores = [], []
    for _ in range(max_new_tokens):
        raw, score = step(tokens)
        logits.append(raw)
        scores.append(score)
        tokens = torch.cat([tokens, score.argmax(dim=-1, keepdim=True).cpu()], dim=1)
    return Generation(tokens, torch.stack(logits), torch.stack(scores))


@dataclass(frozen=True)
class AdaptVisReference:
    """AdaptVis's choice per prompt and the generation under it."""

    confidence: torch.Tensor  # Float[B]: the plain model's top first-token probability (not rounded)
    alpha: torch.Tensor  # Float[B]: alpha_low where confidence < threshold, else alpha_high
    generation: Generation


def adaptvis_alpha(
    model, inputs, *, alpha_low: float, alpha_high: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, alpha) per prompt, from the plain model's first-token distribution."""
    confidence = torch.softmax(last_logits(model, inputs), dim=-1).max(dim=-1).values.cpu()
    return confidence, torch.where(confidence < threshold, alpha_low, alpha_high).float()


def reference_scalingvis_generate(
    model, inputs, *, alpha: float | torch.Tensor, visual_ids: list[int], max_new_tokens: int
) -> Generation:
    """Greedy generation under ScalingVis(alpha), `alpha` a float or Float[B]."""

    def step(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = last_logits(model, appended(inputs, tokens))
        return logits, logits

    with eager_scalingvis(model, alpha, inputs, visual_ids):
        return _greedy(step, inputs["input_ids"].shape[0], max_new_tokens)


def reference_adaptvis_generate(
    model,
    inputs,
    *,
    alpha_low: float,
    alpha_high: float,
    threshold: float,
    visual_ids: list[int],
    max_new_tokens: int,
) -> AdaptVisReference:
    """AdaptVis: alpha per prompt from the plain model's confidence, then greedy ScalingVis(alpha)."""
    confidence, alpha = adaptvis_alpha(
        model, inputs, alpha_low=alpha_low, alpha_high=alpha_high, threshold=threshold
    )
    generation = reference_scalingvis_generate(
        model, inputs, alpha=alpha, visual_ids=visual_ids, max_new_tokens=max_new_tokens
    )
    return AdaptVisReference(confidence, alpha, generation)


def pai_refine(main: torch.Tensor, text_only: torch.Tensor, gamma: float) -> torch.Tensor:
    """PAI's image-centric refine of one step's logits [B, V]: gamma * (lp_c - lp_t) + lp_t, and -inf
    where the main stream's probability is below PAI_CUTOFF times its largest."""
    main, text_only = main.float(), text_only.float()
    probabilities = torch.softmax(main, dim=-1)
    log_main, log_text = torch.log_softmax(main, dim=-1), torch.log_softmax(text_only, dim=-1)
    refined = gamma * (log_main - log_text) + log_text
    unlikely = probabilities < PAI_CUTOFF * probabilities.max(dim=-1, keepdim=True).values
    return refined.masked_fill(unlikely, float("-inf"))


def reference_pai_generate(
    model,
    inputs,
    text_only_inputs,
    *,
    alpha: float,
    start_layer: int,
    end_layer: int,
    gamma: float,
    visual_ids: list[int],
    max_new_tokens: int,
) -> Generation:
    """PAI: a main stream amplified, a text-only stream plain, both fed each step's refined argmax."""

    def step(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with eager_pai_attention(model, alpha, start_layer, end_layer, inputs, visual_ids):
            main = last_logits(model, appended(inputs, tokens))
        text_only = last_logits(model, appended(text_only_inputs, tokens))
        return main, pai_refine(main, text_only, gamma)

    return _greedy(step, inputs["input_ids"].shape[0], max_new_tokens)
