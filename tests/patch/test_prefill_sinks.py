"""`VARHandle.prefill_sinks()`: per prompt of the last prefill, its visual tokens and visual sinks.

The lmms-eval models read it once, after the first batch, to warn when VAR found no visual sink."""

import torch

from lmms_var import VARConfig, enable_var
from lmms_var.patch import PromptSinks
from tests.conftest import TINY_SPEC, TINY_TAU
from tests.patch.eager_reference import visual_token_ids


def visual_tokens(processor, inputs) -> list[int]:
    ids = torch.tensor(visual_token_ids(TINY_SPEC.model_type, processor))
    return torch.isin(inputs["input_ids"], ids).sum(dim=1).tolist()


def test_counts_each_prompts_visual_sinks_over_layers_and_keeps_them_while_decoding(
    model, tiny_model, padded_batch
):
    config = VARConfig(TINY_SPEC.sink_dims, tau=TINY_TAU)
    with enable_var(model, config, diagnostics=True) as handle:
        assert handle.prefill_sinks() == []  # nothing run yet
        with torch.no_grad():
            model(**padded_batch)
        after_prefill = handle.prefill_sinks()
        per_layer = handle.diagnostics()
        with torch.no_grad():
            model.generate(**padded_batch, max_new_tokens=3, do_sample=False)
        after_generate = handle.prefill_sinks()
    tokens = visual_tokens(tiny_model[1], padded_batch)
    assert after_prefill == [
        PromptSinks(visual_tokens=count, visual_sinks=sum(record["visual_sinks"]))
        for count, record in zip(tokens, per_layer, strict=True)
    ]
    assert all(prompt.visual_sinks > 0 for prompt in after_prefill)
    assert after_generate == after_prefill  # decode steps neither add nor reset them


def test_dims_that_never_fire_find_no_visual_sink(model, tiny_model, padded_batch):
    with enable_var(model, VARConfig([3, 4], tau=TINY_TAU)) as handle, torch.no_grad():
        model(**padded_batch)
        prompts = handle.prefill_sinks()
    assert [prompt.visual_sinks for prompt in prompts] == [0, 0]
    assert [prompt.visual_tokens for prompt in prompts] == visual_tokens(tiny_model[1], padded_batch)
