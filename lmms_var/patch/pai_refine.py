"""PAI's image-centric logit refine (INTERVENTIONS_SPEC.md section 2), as a transformers `LogitsProcessor`.

A second stream reads the same prompts with their images removed (`text_only_inputs`), with its own
KV cache, fed the token the main stream chose at each step, without the intervention. With `lp_c` the
main stream's log-probabilities and `lp_t` the text-only stream's:

    out = gamma * (lp_c - lp_t) + lp_t,   tokens with p_c < 0.1 * max p_c get -inf

`gamma = 1` turns the refine off: `pai_refine` then gives no processor (a `PAIRefine` at 1 would only
drop the unlikely tokens, which changes sampling, never a greedy choice).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

import torch
from transformers import LogitsProcessor

from lmms_var.backbones import PlaceholderTokens, backbone_for, text_only_inputs
from lmms_var.config import PAIConfig

# Tokens whose main-stream probability is below this fraction of the most likely one's are dropped.
PLAUSIBILITY = 0.1


class TextOnlyStream:
    """The text-only prompts' next-token log-probabilities, one step per call, with their own cache.

    The first call prefills the prompts; each later one feeds the tokens just chosen (the main stream's
    last column), the attention mask growing by one. Positions follow generate's: count of the
    prompt's tokens so far, padding excluded. Every forward runs inside `plain()` (the intervention's
    `suspended()`: the text-only stream is the plain model's).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        plain: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.model, self.input_ids, self.attention_mask, self.plain = model, input_ids, attention_mask, plain
        self.cache = None
        # transformers renamed the cache's keyword and output field from `past_key_values` to `cache`.
        self._cache_name = (
            "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        )

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @torch.no_grad()
    def log_probs(self, chosen: torch.Tensor | None) -> torch.Tensor:
        """Float32[batch, vocab]: the next token's log-probabilities after the prompt (`chosen` None, the
        first call) or after `chosen` (Long[batch], the tokens the main stream just chose)."""
        if self.cache is None:
            input_ids, mask = self.input_ids, self.attention_mask
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        else:
            input_ids = chosen[:, None].to(self.input_ids.device)
            mask = torch.cat([self.attention_mask, self.attention_mask.new_ones((self.batch_size, 1))], dim=1)
            positions = mask.long().sum(-1, keepdim=True) - 1
        with self.plain():
            output = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **({self._cache_name: self.cache} if self.cache is not None else {}),
            )
        self.attention_mask, self.cache = mask, getattr(output, self._cache_name)
        return torch.log_softmax(output.logits[:, -1].float(), dim=-1)


class PAIRefine(LogitsProcessor):
    """The refine for one `generate` call (greedy or sampling, one sequence per prompt): a fresh one per
    call, since its stream's cache follows that call's tokens."""

    def __init__(self, stream: TextOnlyStream, gamma: float) -> None:
        self.stream, self.gamma = stream, gamma
        self._length: int | None = None  # the main stream's length at the last call

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != self.stream.batch_size:
            raise ValueError(
                f"PAIRefine: {input_ids.shape[0]} sequences for {self.stream.batch_size} prompts; PAI's refine "
                "follows one sequence per prompt (num_beams=1, num_return_sequences=1)"
            )
        if self._length is not None and input_ids.shape[1] != self._length + 1:
            raise ValueError("PAIRefine serves one generate call; build a new one for each call")
        chosen = None if self._length is None else input_ids[:, -1]
        self._length = input_ids.shape[1]
        text = self.stream.log_probs(chosen).to(scores.device)
        image = torch.log_softmax(scores.float(), dim=-1)
        refined = self.gamma * (image - text) + text
        cutoff = image.max(dim=-1, keepdim=True).values + math.log(PLAUSIBILITY)
        return refined.masked_fill(image < cutoff, -math.inf).to(scores.dtype)


def pai_refine(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    tokenizer,
    config: PAIConfig,
    plain: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> PAIRefine | None:
    """The refine for one `model.generate(**inputs)` call, None where `config.gamma` is 1 (no refine).

    `inputs` are the processor's outputs (the main stream's); `tokenizer` knows the family's image
    delimiters and its pad; `plain()` suspends the intervention for the text-only stream.
    """
    if config.gamma == 1:
        return None
    tokens = PlaceholderTokens.of(backbone_for(model), model.config, tokenizer)
    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    text_ids, text_mask = text_only_inputs(tokens, input_ids, attention_mask)
    return PAIRefine(TextOnlyStream(model, text_ids, text_mask, plain), config.gamma)
