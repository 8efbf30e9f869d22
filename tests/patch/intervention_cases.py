"""Prompt batches per family for checking ScalingVis/AdaptVis and PAI against their eager references
(`intervention_references`), and the comparisons a fused implementation must pass."""

import torch

from lmms_var.testing.images import random_images
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.patch.conftest import BATCH, QUESTIONS, prompt_inputs
from tests.patch.eager_reference import visual_token_ids
from tests.patch.intervention_references import Generation

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
        ids[mask.bool() & ~torch.isin(ids, torch.tensor(drop_ids))]
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)
    ]
    length = max(len(ids) for ids in kept)
    input_ids = torch.full((len(kept), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(kept), length), dtype=torch.long)
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
    inputs, output, reference: Generation, end_ids: list[int], atol: float = 1e-4
) -> None:
    """A `generate(..., return_dict_in_generate=True, output_logits=True[, output_scores=True])` output
    chose the reference's tokens, each prompt up to its first end-of-text token, from the same logits
    (and, where it has them, the same processed scores: PAI's refine)."""
    generated = output.sequences[:, inputs["input_ids"].shape[1] :]
    expected = until_end(reference.tokens, end_ids)
    assert until_end(generated, end_ids) == [row[: generated.shape[1]] for row in expected]
    for name in ("logits", "scores"):
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
