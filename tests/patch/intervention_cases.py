"""Prompt batches per family for checking ScalingVis/AdaptVis and PAI against their eager references
(`intervention_references`), and the comparisons a fused implementation must pass."""

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from lmms_var.testing.images import random_images
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.patch.conftest import BATCH, QUESTIONS, prompt_inputs
from tests.patch.eager_reference import visual_token_ids
from tests.patch.intervention_references import (
    Generation,
    adaptvis_alpha,
    eager_pai_attention,
    eager_scalingvis,
    reference_adaptvis_generate,
    reference_pai_generate,
    reference_scalingvis_generate,
)

# Families whose tiny checkpoint takes videos (a video placeholder besides the image's).
VIDEO_FAMILIES = tuple(name for name, family in TINY_FAMILIES.items() if len(family.visual_tokens) > 1)
# Qwen's delimiters around each image's or video's placeholders: part of the span PAI's text-only prompt drops.
QWEN_DELIMITERS = ("<|vision_start|>", "<|vision_end|>")
FRAME_SIZE = (56, 84)  # (width, height) of a test video's frames


def image_batch(processor):
    """A left-padded batch of a 2-image and a 1-image prompt (`tests.patch.conftest.BATCH`)."""
    return prompt_inputs(processor, BATCH)


def video_batch(processor, seed: int = 41):
    """A left-padded batch of an image-and-video prompt and a video-only prompt of another length."""
    contents = [[{"type": "image"}, {"type": "video"}], [{"type": "video"}]]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [*content, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for content, question in zip(contents, QUESTIONS, strict=True)
    ]
    videos = [random_images(4, seed=seed + index, size=FRAME_SIZE) for index in range(2)]
    images = random_images(1, seed=seed + 2)
    return processor(text=texts, images=images, videos=videos, return_tensors="pt", padding=True)


def family_cases(family: str, processor) -> dict[str, dict]:
    """Each batch a fused implementation must match its reference on, by name, for `family`."""
    cases = {"images": image_batch(processor)}
    if family in VIDEO_FAMILIES:
        cases["video"] = video_batch(processor)
    return cases


def visual_ids(family: str, processor) -> list[int]:
    """The ids the references treat as visual keys for `family`."""
    return visual_token_ids(family, processor)


def text_only_by_hand(inputs, drop_ids: list[int], pad_id: int) -> dict:
    """`inputs` without the tokens in `drop_ids` (each image's whole span), left-padded again with
    `pad_id`: the text-only prompt of PAI's refine, built here independently of the library's."""
    kept = [
        ids[mask.bool() & ~torch.isin(ids, torch.tensor(drop_ids, device=ids.device))]
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
    ]
    length = max(len(ids) for ids in kept)
    device = inputs["input_ids"].device
    input_ids = torch.full((len(kept), length), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(kept), length), dtype=torch.long, device=device)
    for row, ids in enumerate(kept):
        input_ids[row, length - len(ids) :] = ids
        attention_mask[row, length - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def text_only_inputs(inputs, processor, family: str) -> dict:
    """PAI's text-only prompt by hand: the visual placeholders dropped, and for Qwen families their
    delimiters (other families' delimiters are not known here: build theirs otherwise)."""
    drop = visual_ids(family, processor)
    if family.startswith("qwen"):
        drop += processor.tokenizer.convert_tokens_to_ids(list(QWEN_DELIMITERS))
    return text_only_by_hand(inputs, drop, processor.tokenizer.pad_token_id)


def valid_positions(inputs, values: torch.Tensor) -> list[torch.Tensor]:
    """Per prompt, `values` [B, Q, ...] at its non-padding positions (left padding differs between batchings)."""
    return [values[b][inputs["attention_mask"][b].bool()] for b in range(values.shape[0])]


def assert_logits_match(inputs, actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4) -> None:
    """Prefill logits [B, Q, V] of a fused implementation equal the reference's at every non-padding position."""
    for b, (mine, theirs) in enumerate(
        zip(valid_positions(inputs, actual), valid_positions(inputs, expected), strict=True)
    ):
        torch.testing.assert_close(
            mine.float(), theirs.float(), atol=atol, rtol=0, msg=lambda m, b=b: f"prompt {b}: {m}"
        )


def until_end(tokens: torch.Tensor, end_ids: list[int]) -> list[list[int]]:
    """Each row of `tokens` [B, N] up to and including its first end-of-text token."""
    rows = []
    for row in tokens.tolist():
        ends = [index for index, token in enumerate(row) if token in end_ids]
        rows.append(row[: ends[0] + 1] if ends else row)
    return rows


def assert_generation_matches(
    inputs, output, reference: Generation, end_ids: list[int], atol: float = 1e-4, scores: bool = True
) -> None:
    """A `generate(..., return_dict_in_generate=True, output_logits=True[, output_scores=True])` output
    chose the reference's tokens, each prompt up to its first end-of-text token, from the same logits
    (and, where it has them and `scores`, the same processed scores: PAI's refine)."""
    generated = output.sequences[:, inputs["input_ids"].shape[1] :]
    expected = until_end(reference.tokens, end_ids)
    assert until_end(generated, end_ids) == [row[: generated.shape[1]] for row in expected]
    for name in ("logits", "scores") if scores else ("logits",):
        steps = getattr(output, name, None)
        if steps is None:
            continue
        for b, row in enumerate(expected):
            for step in range(min(len(row), len(steps))):
                mine, theirs = steps[step][b].float(), getattr(reference, name)[step, b]
                finite = torch.isfinite(theirs)
                assert torch.equal(torch.isfinite(mine), finite), (
                    f"{name}: prompt {b}, step {step}: -inf differ"
                )
                torch.testing.assert_close(mine[finite], theirs[finite], atol=atol, rtol=0)


def _pai_layers(model, config) -> tuple[int, int]:
    """(start_layer, end_layer) of a PAI config; an end of None means every layer."""
    layers = len(model.get_submodule("model.language_model").layers)
    return config.start_layer, layers if config.end_layer is None else config.end_layer


def _method(config) -> str:
    """Which method a config object states, read from its fields (the reference knows no config class)."""
    if hasattr(config, "gamma"):
        return "pai"
    return "adaptvis" if hasattr(config, "alpha_low") else "scalingvis"


def reference_attention(model, config, inputs, visual_ids: list[int]):
    """The reference's attention part of `config` (ScalingVis, AdaptVis or PAI) on this prompt batch, as
    a context manager: AdaptVis's alpha per prompt is chosen from the plain model first."""
    method = _method(config)
    if method == "pai":
        return eager_pai_attention(model, config.alpha, *_pai_layers(model, config), inputs, visual_ids)
    if method == "adaptvis":
        _, alpha = adaptvis_alpha(
            model,
            inputs,
            alpha_low=config.alpha_low,
            alpha_high=config.alpha_high,
            threshold=config.threshold,
        )
        return eager_scalingvis(model, alpha, inputs, visual_ids)
    return eager_scalingvis(model, config.alpha, inputs, visual_ids)


def reference_generation(
    model, config, inputs, visual_ids: list[int], max_new_tokens: int, text_only_inputs=None
) -> Generation:
    """The reference's greedy generation under `config`; PAI needs its text-only prompt."""
    method = _method(config)
    if method == "pai":
        if text_only_inputs is None:
            raise ValueError("text_only_inputs: PAI's reference needs the text-only prompt batch")
        start, end = _pai_layers(model, config)
        options = {"alpha": config.alpha, "start_layer": start, "end_layer": end, "gamma": config.gamma}
        return reference_pai_generate(
            model, inputs, text_only_inputs, visual_ids=visual_ids, max_new_tokens=max_new_tokens, **options
        )
    if method == "adaptvis":
        options = {
            "alpha_low": config.alpha_low,
            "alpha_high": config.alpha_high,
            "threshold": config.threshold,
        }
        return reference_adaptvis_generate(
            model, inputs, visual_ids=visual_ids, max_new_tokens=max_new_tokens, **options
        ).generation
    return reference_scalingvis_generate(
        model, inputs, alpha=config.alpha, visual_ids=visual_ids, max_new_tokens=max_new_tokens
    )


def end_of_text_ids(model) -> list[int]:
    ends = model.generation_config.eos_token_id
    return [ends] if isinstance(ends, int) else list(ends)


@torch.no_grad()
def assert_matches_reference(
    model,
    config,
    inputs,
    visual_ids: list[int],
    attach: Callable[[], AbstractContextManager],
    *,
    text_only_inputs=None,
    max_new_tokens: int = 4,
    atol: float = 1e-4,
) -> None:
    """With `attach()` (e.g. `lambda: enable_intervention(model, config)`) a plain forward gives the
    reference's prefill logits within `atol` at every non-padding position, and greedy `generate` its
    tokens, raw logits and (PAI's refine) processed scores. `config` is read by its fields (alpha;
    alpha_low, alpha_high, threshold; alpha, start_layer, end_layer, gamma). `model` must be plain when
    called. AdaptVis's prefill logits are ScalingVis's with the alpha chosen from the plain model."""
    with reference_attention(model, config, inputs, visual_ids):
        expected_logits = model(**inputs).logits
    expected = reference_generation(model, config, inputs, visual_ids, max_new_tokens, text_only_inputs)
    options = {"max_new_tokens": max_new_tokens, "do_sample": False, "return_dict_in_generate": True}
    with attach():
        actual_logits = model(**inputs).logits
        output = model.generate(**inputs, output_logits=True, output_scores=True, **options)
    assert_logits_match(inputs, actual_logits, expected_logits, atol=atol)
    # PAI's gamma=1 turns the refine off: the processed scores may then be the raw logits (same argmax).
    refined = _method(config) != "pai" or config.gamma != 1
    assert_generation_matches(inputs, output, expected, end_of_text_ids(model), atol=atol, scores=refined)
