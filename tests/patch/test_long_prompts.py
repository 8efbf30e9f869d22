"""Prompt shapes where VAR's rows are most of the prompt: long text after an image, text between
images, padded batches of both, with the prefill's blocks small enough to split rows and keys."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmms_var import enable_intervention
from lmms_var.testing.images import random_images
from tests.conftest import TINY_SPEC
from tests.patch.test_enable_var import CONFIG, logits, reference, valid_logits

LONG_TEXT = " ".join(["Which point is closer to the camera? (A) the red point (B) the blue point."] * 12)
# Small blocks: tens of rows per block at prefill (the blocks' edges are tested in test_prefill.py).
SMALL_BLOCKS = 5120


def inputs_for(processor, contents: list[list[str]], seed: int = 5) -> dict:
    """One left-padded batch; each prompt is a list of parts, "<image>" or text, in order."""
    texts, images = [], []
    for index, parts in enumerate(contents):
        content = [
            {"type": "image"} if part == "<image>" else {"type": "text", "text": part} for part in parts
        ]
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True))
        images += random_images(parts.count("<image>"), seed=seed + index)
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True))


PROMPTS = {
    "long text after the image": [["<image>", LONG_TEXT]],
    "text between images": [["<image>", LONG_TEXT[:300], "<image>", "How many objects are there?"]],
    "padded batch of both": [
        ["<image>", LONG_TEXT],
        ["<image>", "Compare them.", "<image>", "Which is closer?"],
    ],
}


@pytest.mark.parametrize(
    ("prompt", "base", "block_elements"),
    [(prompt, base, None) for prompt in PROMPTS for base in ("sdpa", "eager")]
    + [("padded batch of both", "sdpa", SMALL_BLOCKS), ("text between images", "eager", SMALL_BLOCKS)],
)
def test_fused_equals_the_eager_reference(model, tiny_model, prompt, base, block_elements):
    inputs = inputs_for(tiny_model[1], PROMPTS[prompt])
    model.set_attn_implementation(base)
    with reference(model, CONFIG, TINY_SPEC.model_type, tiny_model[1], inputs):
        expected = logits(model, inputs)
    blocks = {} if block_elements is None else {"block_elements": block_elements}
    with enable_intervention(model, CONFIG, diagnostics=True, **blocks) as handle:
        patched = logits(model, inputs)
        rows = handle.state.forward.rows.shape[1]
        assert all(sample["redistributed_rows"] > 0 for sample in handle.diagnostics())
    assert rows > 100, "VAR's rows are most of the prompt"
    for mine, theirs in zip(valid_logits(inputs, patched), valid_logits(inputs, expected), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)


def test_generation_with_small_blocks_equals_eager_var(model, tiny_model):
    inputs = inputs_for(tiny_model[1], PROMPTS["padded batch of both"])
    options = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    options |= {"output_logits": True, "return_dict_in_generate": True}
    runs = []
    for fused in (True, False):
        with enable_intervention(model, CONFIG, fused=fused, block_elements=SMALL_BLOCKS):
            runs.append(model.generate(**inputs, **options))
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for fused_step, eager_step in zip(runs[0].logits, runs[1].logits, strict=True):
        torch.testing.assert_close(fused_step, eager_step, atol=1e-4, rtol=0)


def test_without_a_normaliser_from_the_kernel_var_computes_it(model, tiny_model, monkeypatch):
    """SDPA's math backend keeps no log-sum-exp: VAR's own pass over every key gives the same result."""
    from lmms_var.patch import prefill

    inputs = inputs_for(tiny_model[1], PROMPTS["padded batch of both"])
    with reference(model, CONFIG, TINY_SPEC.model_type, tiny_model[1], inputs):
        expected = logits(model, inputs)
    passes = []
    own_pass = prefill._log_sum_exp
    monkeypatch.setattr(prefill, "_log_sum_exp", lambda *args: passes.append(1) or own_pass(*args))
    with sdpa_kernel([SDPBackend.MATH]), enable_intervention(model, CONFIG, block_elements=SMALL_BLOCKS):
        patched = logits(model, inputs)
    assert passes, "VAR computed the normaliser itself"
    for mine, theirs in zip(valid_logits(inputs, patched), valid_logits(inputs, expected), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
