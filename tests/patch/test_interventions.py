"""ScalingVis, AdaptVis and PAI through `enable_intervention` against their independent eager
references (`intervention_references.py`), on every family: prefill logits, generated tokens, raw
logits and PAI's refined scores; identities exact; bad use refused before anything runs."""

import pytest
import torch

from lmms_var import AdaptVisConfig, PAIConfig, ScalingVisConfig, VARConfig, enable_intervention
from lmms_var.backbones import PlaceholderTokens, backbone_for, text_only_inputs
from tests.conftest import FAMILIES, REPOSITORY, TINY_SPEC
from tests.patch.intervention_cases import assert_matches_reference, family_cases, visual_ids

CORE = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava")
CONFIGS = {
    "scalingvis": ScalingVisConfig(alpha=1.8),
    "scalingvis flattening": ScalingVisConfig(alpha=0.5),
    # A threshold between the tiny models' confidences would depend on their random weights: each bound
    # sends every prompt one way, and the per-prompt choice is checked below with a threshold in between.
    "adaptvis, confident": AdaptVisConfig(alpha_low=0.5, alpha_high=1.8, threshold=0.0),
    "adaptvis, unsure": AdaptVisConfig(alpha_low=0.5, alpha_high=1.8, threshold=1.0),
    "pai": PAIConfig(alpha=0.5, start_layer=1, gamma=1.3),
    "pai, attention only": PAIConfig(alpha=0.5, start_layer=1, gamma=1.0),
}


def library_text_only(model, processor, inputs) -> dict:
    """The text-only prompt PAI's refine runs (its construction is tested in tests/backbones)."""
    tokens = PlaceholderTokens.of(backbone_for(model), model.config, processor.tokenizer)
    input_ids, attention_mask = text_only_inputs(tokens, inputs["input_ids"], inputs["attention_mask"])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# The random tiny Gemma 3 flattened by alpha=0.5 generates its own image placeholder token, which the
# reference's loop (the whole sequence rerun each step) cannot feed back: those pairs are left out.
# Every family of the matrix; those beyond the four backbones named first run with the slow tests.
CASES = [
    pytest.param(family, method, marks=() if family in CORE else pytest.mark.slow)
    for family in FAMILIES
    for method in CONFIGS
    if (family, method) not in (("gemma3", "scalingvis flattening"), ("gemma3", "adaptvis, unsure"))
]


@pytest.mark.parametrize(("family", "method"), CASES)
def test_fused_equals_the_eager_reference(copies, family, method):
    """Several images and a left-padded batch (and video where the family has it), GQA, the model's own
    SDPA kernel: prefill logits within 1e-4 in float32, then every generated token."""
    model, processor = copies(family)
    text = model.config.get_text_config()
    assert text.num_key_value_heads < text.num_attention_heads, "the tiny models share key/value heads (GQA)"
    config = CONFIGS[method]
    for inputs in family_cases(family, processor).values():
        assert_matches_reference(
            model,
            config,
            inputs,
            visual_ids(family, processor),
            lambda config=config: enable_intervention(model, config, tokenizer=processor.tokenizer),
            text_only_inputs=library_text_only(model, processor, inputs),
        )


def test_adaptvis_chooses_alpha_per_prompt(copies):
    """A threshold between the two prompts' confidences: each prompt gets its own alpha, as the
    reference chooses it, and the batch equals each prompt run with ScalingVis(its alpha)."""
    model, processor = copies(TINY_SPEC.model_type)
    inputs = family_cases(TINY_SPEC.model_type, processor)["images"]
    with torch.no_grad():
        confidence = torch.softmax(model(**inputs).logits[:, -1].float(), dim=-1).max(dim=-1).values
    threshold = float(confidence.mean())
    assert confidence.min() < threshold < confidence.max()
    config = AdaptVisConfig(alpha_low=0.5, alpha_high=1.8, threshold=threshold)
    with torch.no_grad(), enable_intervention(model, config):
        adaptive = model(**inputs).logits[:, -1]
    for b, alpha in enumerate(torch.where(confidence < threshold, 0.5, 1.8).tolist()):
        with torch.no_grad(), enable_intervention(model, ScalingVisConfig(alpha)):
            scaled = model(**inputs).logits[b, -1]
        torch.testing.assert_close(adaptive[b], scaled, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config",
    [ScalingVisConfig(alpha=1.0), AdaptVisConfig(1.0, 1.0, 0.5), PAIConfig(alpha=0.0, gamma=1.0)],
    ids=["scalingvis alpha=1", "adaptvis both alphas 1", "pai alpha=0 gamma=1"],
)
def test_identities_equal_the_plain_model_exactly(copies, config):
    model, processor = copies(TINY_SPEC.model_type)
    inputs = family_cases(TINY_SPEC.model_type, processor)["images"]
    options = {
        "max_new_tokens": 4,
        "do_sample": False,
        "return_dict_in_generate": True,
        "output_logits": True,
    }
    with torch.no_grad():
        plain_logits, plain = model(**inputs).logits, model.generate(**inputs, **options)
        with enable_intervention(model, config, tokenizer=processor.tokenizer):
            logits, generated = model(**inputs).logits, model.generate(**inputs, **options)
    assert torch.equal(logits, plain_logits)
    assert torch.equal(generated.sequences, plain.sequences)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(generated.logits, plain.logits, strict=True))


def test_pai_moves_attention_to_the_image_and_remove_restores(copies):
    """Diagnostics count the changed rows (the last of each forward, in PAI's layers) and the image
    mass gained (`s + alpha |s| >= s`); `remove()` gives the plain model back."""
    model, processor = copies(TINY_SPEC.model_type)
    inputs = family_cases(TINY_SPEC.model_type, processor)["images"]
    with torch.no_grad():
        plain = model(**inputs).logits
        handle = enable_intervention(model, PAIConfig(alpha=0.5, gamma=1.0), diagnostics=True)
        model(**inputs)
        report = handle.diagnostics()
        handle.remove()
        after = model(**inputs).logits
    layers = len(model.model.language_model.layers)
    heads = model.config.get_text_config().num_attention_heads
    assert [sample["layers"] for sample in report] == [list(range(2, layers))] * len(report)
    assert all(sample["redistributed_rows"] == (layers - 2) * heads for sample in report)
    assert all(sample["moved_mass"] > 0 for sample in report)
    assert torch.equal(after, plain)


def test_bad_use_is_refused_naming_the_argument(copies):
    model, _ = copies(TINY_SPEC.model_type)
    with pytest.raises(TypeError, match="config must be one of VARConfig, ScalingVisConfig"):
        enable_intervention(model, {"alpha": 1.5})
    with pytest.raises(ValueError, match=r"^tokenizer: PAI's logit refine"):
        enable_intervention(model, PAIConfig(gamma=1.1))
    with pytest.raises(ValueError, match=r"fused=False is VAR's eager reference; ScalingVis has none"):
        enable_intervention(model, ScalingVisConfig(1.5), fused=False)
    with pytest.raises(ValueError, match=r"PAIConfig\.end_layer"):
        enable_intervention(model, PAIConfig(alpha=0.2, end_layer=99, gamma=1.0))
    with (
        enable_intervention(model, ScalingVisConfig(1.5)),
        pytest.raises(RuntimeError, match="already enabled"),
    ):
        enable_intervention(model, VARConfig(sink_dims=TINY_SPEC.sink_dims))
    assert not hasattr(model, "generate") or "generate" not in vars(model)


def test_the_readme_example_runs(copies):
    """The README's Python example of the alternatives, run on the tiny model as written."""
    readme = (REPOSITORY / "README.md").read_text()
    start = readme.index("```python\nfrom lmms_var import AdaptVisConfig") + len("```python\n")
    model, processor = copies(TINY_SPEC.model_type)
    inputs = dict(family_cases(TINY_SPEC.model_type, processor)["images"], max_new_tokens=2)
    namespace = {"model": model, "processor": processor, "inputs": inputs}
    exec(readme[start : readme.index("```", start)], namespace)
    assert "generate" not in vars(model) and not hasattr(
        model.model.language_model.layers[0].self_attn, "_lmms_var_state"
    )
