"""Model-level VAR on the tiny checkpoints: exactness, isolation, restoration, errors.

Tests taking `family` run for every family of the test matrix (`tests.conftest.FAMILIES`); the
others use the tiny Qwen2.5-VL.
"""

import copy

import pytest
import torch

from lmms_var import VARConfig, enable_var
from lmms_var.testing import TinySpec, build_tiny_model
from lmms_var.testing.images import random_images
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.conftest import TINY_SPEC, TINY_TAU
from tests.patch.conftest import BATCH, QUESTIONS, chat_text, prompt_inputs
from tests.patch.eager_reference import eager_var, visual_token_ids

CONFIG = VARConfig(sink_dims=TINY_SPEC.sink_dims, tau=TINY_TAU, p=0.6, rho=0.5, summ=0.2)


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


@pytest.fixture
def family_copy(family_model):
    """A private copy of each family's tiny model."""
    return copy.deepcopy(family_model[0])


def text_model(model):
    """Where every family of the matrix keeps its text decoder (independent of `lmms_var.backbones`)."""
    return model.get_submodule("model.language_model")


def reference(model, config: VARConfig, family: str, processor, inputs):
    """The independent eager VAR for `inputs` of a model of `family`."""
    return eager_var(model, config, inputs, visual_token_ids(family, processor))


def valid_logits(inputs, values: torch.Tensor) -> list[torch.Tensor]:
    """Per sample, logits at its non-padding positions (left padding differs between batchings)."""
    return [values[b][inputs["attention_mask"][b].bool()] for b in range(values.shape[0])]


def test_var_changes_the_output_and_finds_planted_sinks(family, family_copy, family_model, family_batch):
    base = logits(family_copy, family_batch)
    with enable_var(family_copy, CONFIG, diagnostics=True) as handle:
        patched = logits(family_copy, family_batch)
        report = handle.diagnostics()
    assert (patched - base).abs().max() > 1e-3
    # Every planted text token is a sink (Qwen: one <|im_start|> per chat turn; LLaVA: <s>), no other.
    tokenizer = family_model[1].tokenizer
    planted = torch.tensor(tokenizer.convert_tokens_to_ids(list(TINY_FAMILIES[family].text_sink_tokens)))
    per_sample = torch.isin(family_batch["input_ids"], planted).sum(dim=1).tolist()
    assert [sample["text_sinks"] for sample in report] == [[count] for count in per_sample]
    assert all(sample["visual_sinks"][0] > 0 for sample in report)
    assert all(sample["redistributed_rows"] > 0 and sample["moved_mass"] > 0 for sample in report)


def test_p_one_equals_the_unpatched_model(family_copy, family_batch):
    base = logits(family_copy, family_batch)
    with enable_var(family_copy, VARConfig(CONFIG.sink_dims, tau=TINY_TAU, p=1.0)):
        assert torch.equal(logits(family_copy, family_batch), base)


def test_no_visual_sink_equals_the_unpatched_model(model, padded_batch):
    base = logits(model, padded_batch)
    with enable_var(model, VARConfig([3, 4], tau=TINY_TAU)):  # channels nothing is planted in
        assert torch.equal(logits(model, padded_batch), base)


def test_fused_equals_independent_eager_reference(family, family_copy, family_model, family_batch):
    with reference(family_copy, CONFIG, family, family_model[1], family_batch):
        expected = logits(family_copy, family_batch)
    for fused in (True, False):
        with enable_var(family_copy, CONFIG, fused=fused):
            patched = logits(family_copy, family_batch)
        for mine, theirs in zip(
            valid_logits(family_batch, patched), valid_logits(family_batch, expected), strict=True
        ):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)


def test_eager_base_kernel_gives_the_same_result(model, padded_batch):
    with enable_var(model, CONFIG):
        with_sdpa = logits(model, padded_batch)
    model.set_attn_implementation("eager")
    with enable_var(model, CONFIG) as handle:
        assert handle.state.settings.base_implementation == "eager"
        with_eager = logits(model, padded_batch)
    for a, b in zip(
        valid_logits(padded_batch, with_sdpa), valid_logits(padded_batch, with_eager), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_batch_equals_prompts_one_by_one(family_copy, family_model, family_batch):
    processor = family_model[1]
    with enable_var(family_copy, CONFIG):
        batched = valid_logits(family_batch, logits(family_copy, family_batch))
        singles = [
            logits(family_copy, prompt_inputs(processor, [spec], seed=5 + index))[0]
            for index, spec in enumerate(BATCH)
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


def test_remove_restores_the_model(family_copy, family_batch):
    model = family_copy
    base = logits(model, family_batch)
    text_config = text_model(model).config
    implementation = text_config._attn_implementation
    handle = enable_var(model, CONFIG)
    assert text_config._attn_implementation != implementation
    handle.remove()
    handle.remove()  # idempotent
    assert text_config._attn_implementation == implementation
    assert not any(layer._forward_pre_hooks for layer in text_model(model).layers)
    assert not model.model._forward_pre_hooks
    assert not any(hasattr(module, "_lmms_var_state") for module in text_model(model).modules())
    assert torch.equal(logits(model, family_batch), base)
    enable_var(model, CONFIG).remove()  # can be enabled again


def test_generation_equals_independent_eager_reference(family, family_copy, family_model, family_batch):
    """Generated tokens and every step's logits, fused and slow path, against the reference's."""
    options = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
    options |= {"output_logits": True, "return_dict_in_generate": True}
    with reference(family_copy, CONFIG, family, family_model[1], family_batch):
        expected = family_copy.generate(**family_batch, **options)
    for fused in (True, False):
        with enable_var(family_copy, CONFIG, fused=fused):
            generated = family_copy.generate(**family_batch, **options)
        assert torch.equal(generated.sequences, expected.sequences)
        for step, expected_step in zip(generated.logits, expected.logits, strict=True):
            torch.testing.assert_close(step, expected_step, atol=1e-4, rtol=0)


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
    with reference(model, CONFIG, TINY_SPEC.model_type, processor, inputs):
        expected = logits(model, inputs)
    with enable_var(model, CONFIG, diagnostics=True) as handle:
        patched = logits(model, inputs)
        report = handle.diagnostics()[0]
    assert report["visual_tokens"] == int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert report["visual_sinks"][0] > 0
    torch.testing.assert_close(patched, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(model, tiny_model, padded_batch, dtype):
    model = model.to(dtype)
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in padded_batch.items()}
    with reference(model, CONFIG, TINY_SPEC.model_type, tiny_model[1], inputs):
        expected = logits(model, inputs).float()
    with enable_var(model, CONFIG, diagnostics=True) as handle:
        patched = logits(model, inputs).float()
        assert all(sample["redistributed_rows"] > 0 for sample in handle.diagnostics())
    for a, b in zip(valid_logits(padded_batch, patched), valid_logits(padded_batch, expected), strict=True):
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


def test_flash_attention_with_sliding_windows_is_refused(tiny_models):
    """Flash attention gets Gemma 3's window as an argument, not in the mask VAR reads: refused."""
    model = copy.deepcopy(tiny_models("gemma3")[0])
    model.config.get_text_config()._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(
        ValueError, match="flash_attention_2 hides sliding windows from VAR; use sdpa or eager"
    ):
        enable_var(model, CONFIG)
