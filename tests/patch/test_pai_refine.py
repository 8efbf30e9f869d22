"""PAI's logit refine against a two-stream reference built from `generate` alone, on every family's
left-padded batch."""

import contextlib
import math

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from lmms_var.backbones import PlaceholderTokens, backbone_for, text_only_inputs
from lmms_var.config import PAIConfig
from lmms_var.patch.pai_refine import PAIRefine, TextOnlyStream, pai_refine

STEPS = 6
# No `min_new_tokens`: its processor would run before the refine and hide the end of answer from it.
GREEDY = {"do_sample": False, "max_new_tokens": STEPS}


class Force(LogitsProcessor):
    """Makes `generate` choose the given tokens, step after step."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens, self.step = tokens, 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -math.inf)
        forced.scatter_(1, self.tokens[:, self.step, None], 0.0)
        self.step += 1
        return forced


def text_only(model, processor, inputs):
    tokens = PlaceholderTokens.of(backbone_for(model), model.config, processor.tokenizer)
    return text_only_inputs(tokens, inputs["input_ids"], inputs["attention_mask"])


def raw_logits(model, inputs, tokens: torch.Tensor) -> list[torch.Tensor]:
    """The plain model's logits at each step of `generate` when it is made to choose `tokens`."""
    forced = model.generate(
        **inputs,
        **GREEDY,
        logits_processor=LogitsProcessorList([Force(tokens)]),
        output_logits=True,
        return_dict_in_generate=True,
    )
    return [step.float() for step in forced.logits]


class Entered:
    """A context manager factory counting how often it is entered (stands for `handle.suspended`)."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def __call__(self):
        self.count += 1
        yield


def test_gamma_one_chooses_the_plain_models_tokens(family_model, family_batch):
    model, processor = family_model
    plain = model.generate(**family_batch, **GREEDY)
    stream = TextOnlyStream(model, *text_only(model, processor, family_batch))
    refined = model.generate(
        **family_batch, **GREEDY, logits_processor=LogitsProcessorList([PAIRefine(stream, 1.0)])
    )
    assert torch.equal(refined, plain)


def check_against_two_streams(model, processor, batch) -> torch.Tensor:
    """gamma 1.1: each step's refined scores are the formula over the main stream's logits and those of
    the text-only prompt run through `generate` on its own, both made to follow the chosen tokens.
    Returns the refined scores, step after step."""
    entered = Entered()
    refine = pai_refine(model, batch, processor.tokenizer, PAIConfig(gamma=1.1), plain=entered)
    run = model.generate(
        **batch,
        **GREEDY,
        logits_processor=LogitsProcessorList([refine]),
        output_scores=True,
        return_dict_in_generate=True,
    )
    chosen = run.sequences[:, batch["input_ids"].shape[1] :]
    assert entered.count == chosen.shape[1]  # every forward of the text-only stream ran plain

    text_ids, text_mask = text_only(model, processor, batch)
    main = raw_logits(model, batch, chosen)
    text = raw_logits(model, {"input_ids": text_ids, "attention_mask": text_mask}, chosen)
    ended = torch.isin(chosen, torch.tensor(model.generation_config.eos_token_id))
    # Whether each prompt's answer was still going at each step (then generate chose the argmax).
    going = torch.cat([torch.ones_like(ended[:, :1]), ~ended[:, :-1]], dim=1).cummin(dim=1).values
    for step, (scores, image_logits, text_logits) in enumerate(zip(run.scores, main, text, strict=True)):
        image, text_only_lp = image_logits.log_softmax(-1), text_logits.log_softmax(-1)
        expected = 1.1 * (image - text_only_lp) + text_only_lp
        expected[image < image.max(-1, keepdim=True).values + math.log(0.1)] = -math.inf
        assert torch.equal(scores.isinf(), expected.isinf()), step
        torch.testing.assert_close(scores[~scores.isinf()], expected[~expected.isinf()], atol=1e-4, rtol=0)
        assert torch.equal(scores.argmax(-1)[going[:, step]], chosen[going[:, step], step])
    return torch.stack(run.scores)


def test_matches_two_streams_by_hand(family_model, family_batch):
    check_against_two_streams(*family_model, family_batch)


def test_unlikely_tokens_are_dropped(model, tiny_model, padded_batch):
    """A random tiny model's next-token distribution is nearly flat; a sharpened output layer gives
    tokens below a tenth of the most likely one's probability, which the refine drops."""
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    scores = check_against_two_streams(model, tiny_model[1], padded_batch)
    dropped = scores.isinf().float().mean()
    assert 0.5 < dropped < 1.0


def test_the_refine_changes_what_is_chosen(tiny_model, padded_batch):
    """A strong refine on the tiny Qwen2.5-VL picks other tokens than the plain model (the test above
    would pass for a refine that changed nothing only if its reference were wrong too)."""
    model, processor = tiny_model
    plain = model.generate(**padded_batch, **GREEDY)
    refine = pai_refine(model, padded_batch, processor.tokenizer, PAIConfig(gamma=3.0))
    refined = model.generate(**padded_batch, **GREEDY, logits_processor=LogitsProcessorList([refine]))
    assert not torch.equal(refined, plain)


def test_gamma_one_builds_no_processor(tiny_model, padded_batch):
    model, processor = tiny_model
    assert pai_refine(model, padded_batch, processor.tokenizer, PAIConfig(gamma=1.0)) is None


def test_one_sequence_per_prompt_and_one_call(tiny_model, padded_batch):
    model, processor = tiny_model
    refine = pai_refine(model, padded_batch, processor.tokenizer, PAIConfig())
    with pytest.raises(ValueError, match=r"PAIRefine: 4 sequences for 2 prompts; .*num_beams=1"):
        model.generate(**padded_batch, **GREEDY, num_beams=2, logits_processor=LogitsProcessorList([refine]))
    refine = pai_refine(model, padded_batch, processor.tokenizer, PAIConfig())
    model.generate(**padded_batch, **GREEDY, logits_processor=LogitsProcessorList([refine]))
    with pytest.raises(ValueError, match="PAIRefine serves one generate call"):
        model.generate(**padded_batch, **GREEDY, logits_processor=LogitsProcessorList([refine]))
