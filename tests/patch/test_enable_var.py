"""Model-level VAR on the tiny checkpoint: exactness, isolation, restoration, errors."""

import copy

import pytest
import torch

from lmms_var import VARConfig, enable_var
from lmms_var.testing import TinySpec, build_tiny_model
from lmms_var.testing.images import random_images
from tests.conftest import TINY_SPEC, TINY_TAU
from tests.patch.conftest import QUESTIONS, chat_text, prompt_inputs
from tests.patch.eager_reference import eager_var

CONFIG = VARConfig(sink_dims=TINY_SPEC.sink_dims, tau=TINY_TAU, p=0.6, rho=0.5, summ=0.2)


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


@pytest.fixture
def model(tiny_model):
    """A private copy: tests may patch it freely."""
    return copy.deepcopy(tiny_model[0])


def valid_logits(inputs, values: torch.Tensor) -> list[torch.Tensor]:
    """Per sample, logits at its non-padding positions (left padding differs between batchings)."""
    return [values[b][inputs["attention_mask"][b].bool()] for b in range(values.shape[0])]


def test_var_changes_the_output_and_finds_planted_sinks(model, padded_batch):
    base = logits(model, padded_batch)
    with enable_var(model, CONFIG, diagnostics=True) as handle:
        patched = logits(model, padded_batch)
        report = handle.diagnostics()
    assert (patched - base).abs().max() > 1e-3
    assert [sample["text_sinks"] for sample in report] == [[3], [3]]  # one <|im_start|> per chat turn
    assert all(sample["visual_sinks"][0] > 0 for sample in report)
    assert all(sample["redistributed_rows"] > 0 and sample["moved_mass"] > 0 for sample in report)


def test_p_one_equals_the_unpatched_model(model, padded_batch):
    base = logits(model, padded_batch)
    with enable_var(model, VARConfig(CONFIG.sink_dims, tau=TINY_TAU, p=1.0)):
        assert torch.equal(logits(model, padded_batch), base)


def test_no_visual_sink_equals_the_unpatched_model(model, padded_batch):
    base = logits(model, padded_batch)
    with enable_var(model, VARConfig([3, 4], tau=TINY_TAU)):  # channels nothing is planted in
        assert torch.equal(logits(model, padded_batch), base)


def test_fused_equals_independent_eager_reference(model, padded_batch):
    with eager_var(model, CONFIG, padded_batch["input_ids"], padded_batch["attention_mask"]):
        reference = logits(model, padded_batch)
    for fused in (True, False):
        with enable_var(model, CONFIG, fused=fused):
            patched = logits(model, padded_batch)
        for mine, theirs in zip(
            valid_logits(padded_batch, patched), valid_logits(padded_batch, reference), strict=True
        ):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)


def test_eager_base_kernel_gives_the_same_result(model, padded_batch):
    with enable_var(model, CONFIG):
        with_sdpa = logits(model, padded_batch)
    model.set_attn_implementation("eager")
    with enable_var(model, CONFIG) as handle:
        assert handle.state.base_implementation == "eager"
        with_eager = logits(model, padded_batch)
    for a, b in zip(
        valid_logits(padded_batch, with_sdpa), valid_logits(padded_batch, with_eager), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_batch_equals_prompts_one_by_one(model, tiny_model, padded_batch):
    processor = tiny_model[1]
    with enable_var(model, CONFIG):
        batched = valid_logits(padded_batch, logits(model, padded_batch))
        singles = [
            logits(model, prompt_inputs(processor, [spec], seed=5 + index))[0]
            for index, spec in enumerate([(2, QUESTIONS[0]), (1, QUESTIONS[1])])
        ]
    for one, alone in zip(batched, singles, strict=True):
        torch.testing.assert_close(one, alone, atol=1e-4, rtol=0)


def test_no_state_leaks_between_prompts(model, tiny_model):
    processor = tiny_model[1]
    prompt_a = prompt_inputs(processor, [(2, QUESTIONS[0])], seed=11)
    prompt_b = prompt_inputs(processor, [(1, QUESTIONS[1])], seed=12)
    with enable_var(model, CONFIG):
        alone = logits(model, prompt_b)
        model.generate(**prompt_a, max_new_tokens=3, do_sample=False)
        after_a = logits(model, prompt_b)
    assert torch.equal(after_a, alone)


def test_two_patched_models_do_not_interfere(tiny_model):
    first = copy.deepcopy(tiny_model[0])
    second, processor = build_tiny_model(TinySpec(seed=3))
    inputs_1 = prompt_inputs(processor, [(1, QUESTIONS[0])], seed=21)
    inputs_2 = prompt_inputs(processor, [(2, QUESTIONS[1])], seed=22)
    with enable_var(first, CONFIG):
        solo_1 = logits(first, inputs_1)
    with enable_var(second, VARConfig(CONFIG.sink_dims, tau=TINY_TAU, p=0.1)):
        solo_2 = logits(second, inputs_2)
    with enable_var(first, CONFIG), enable_var(second, VARConfig(CONFIG.sink_dims, tau=TINY_TAU, p=0.1)):
        out_1 = logits(first, inputs_1)
        out_2 = logits(second, inputs_2)
        again_1 = logits(first, inputs_1)
    assert torch.equal(out_1, solo_1) and torch.equal(again_1, solo_1)
    assert torch.equal(out_2, solo_2)


def test_remove_restores_the_model(model, padded_batch):
    base = logits(model, padded_batch)
    text_config = model.model.language_model.config
    implementation = text_config._attn_implementation
    handle = enable_var(model, CONFIG)
    assert text_config._attn_implementation != implementation
    handle.remove()
    handle.remove()  # idempotent
    assert text_config._attn_implementation == implementation
    assert not any(layer._forward_pre_hooks for layer in model.model.language_model.layers)
    assert not model.model._forward_pre_hooks
    assert torch.equal(logits(model, padded_batch), base)
    enable_var(model, CONFIG).remove()  # can be enabled again


def test_generation_fused_equals_eager(model, padded_batch):
    runs = []
    for fused in (True, False):
        with enable_var(model, CONFIG, fused=fused):
            out = model.generate(
                **padded_batch,
                max_new_tokens=6,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
        runs.append(out)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for fused_step, eager_step in zip(runs[0].logits, runs[1].logits, strict=True):
        torch.testing.assert_close(fused_step, eager_step, atol=1e-4, rtol=0)


def test_decode_rows_are_redistributed(model, padded_batch):
    """A decode step's row is eligible: diagnostics grow with every generated token."""
    with enable_var(model, CONFIG, diagnostics=True) as handle:
        logits(model, padded_batch)
        prefill_rows = [sample["redistributed_rows"] for sample in handle.diagnostics()]
        model.generate(**padded_batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        generated_rows = [sample["redistributed_rows"] for sample in handle.diagnostics()]
    assert all(after > before for after, before in zip(generated_rows, prefill_rows, strict=True))


def test_a_prompt_without_images_keeps_the_unpatched_logits_at_every_step(model, tiny_model):
    """Its rows are never VAR's: in a batch with an image prompt, at prefill and at every decode
    step, they keep the base kernel's exact output while the image prompt is redistributed."""
    inputs = prompt_inputs(tiny_model[1], [(1, QUESTIONS[0]), (0, QUESTIONS[1])])
    options = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False}
    options |= {"output_logits": True, "return_dict_in_generate": True}
    base = model.generate(**inputs, **options)
    with enable_var(model, CONFIG, diagnostics=True) as handle:
        patched = model.generate(**inputs, **options)
        with_image, without_image = handle.diagnostics()
    assert with_image["redistributed_rows"] > 0 and without_image["redistributed_rows"] == 0
    for base_step, patched_step in zip(base.logits, patched.logits, strict=True):
        assert torch.equal(patched_step[1], base_step[1])
        assert not torch.equal(patched_step[0], base_step[0])


def test_video_tokens_are_visual(model, tiny_model):
    processor = tiny_model[1]
    frames = [random_images(4, seed=31)]
    inputs = processor(
        text=[chat_text(processor, 1, QUESTIONS[1], video=True)], videos=frames, return_tensors="pt"
    )
    with eager_var(model, CONFIG, inputs["input_ids"], inputs["attention_mask"]):
        reference = logits(model, inputs)
    with enable_var(model, CONFIG, diagnostics=True) as handle:
        patched = logits(model, inputs)
        report = handle.diagnostics()[0]
    assert report["visual_tokens"] == int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert report["visual_sinks"][0] > 0
    torch.testing.assert_close(patched, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(model, padded_batch, dtype):
    model = model.to(dtype)
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in padded_batch.items()}
    with eager_var(model, CONFIG, inputs["input_ids"], inputs["attention_mask"]):
        reference = logits(model, inputs).float()
    with enable_var(model, CONFIG, diagnostics=True) as handle:
        patched = logits(model, inputs).float()
        assert all(sample["redistributed_rows"] > 0 for sample in handle.diagnostics())
    for a, b in zip(valid_logits(padded_batch, patched), valid_logits(padded_batch, reference), strict=True):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=0)


def test_sink_dim_beyond_hidden_size_is_rejected(model):
    with pytest.raises(ValueError, match=r"sink_dims \[128\] are >= the model's hidden size 128"):
        enable_var(model, VARConfig([17, 128]))


def test_unsupported_model_family_is_rejected():
    with pytest.raises(ValueError, match="VAR supports model types"):
        enable_var(torch.nn.Linear(2, 2), CONFIG)


def test_enabling_twice_is_an_error(model):
    with enable_var(model, CONFIG), pytest.raises(RuntimeError, match="already enabled"):
        enable_var(model, CONFIG)


def test_inputs_embeds_only_is_a_clear_error(model, padded_batch):
    embeds = model.get_input_embeddings()(padded_batch["input_ids"])
    with enable_var(model, CONFIG), pytest.raises(ValueError, match="needs `input_ids`"):
        model(inputs_embeds=embeds, attention_mask=padded_batch["attention_mask"])
