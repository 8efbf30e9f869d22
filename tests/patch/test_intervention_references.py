"""The eager references of ScalingVis/AdaptVis and PAI are right: identities, which rows and layers
they change, batches, the spec's formulas by hand, and the generation loops against `generate`."""

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from tests.conftest import FAMILIES
from tests.patch.conftest import BATCH, chat_text, prompt_inputs
from tests.patch.intervention_cases import (
    assert_generation_matches,
    assert_logits_match,
    assert_matches_reference,
    family_cases,
    image_batch,
    text_only_inputs,
    valid_positions,
    visual_ids,
)
from tests.patch.intervention_references import (
    ForwardEnd,
    RowRule,
    amplified,
    appended,
    attention_function,
    eager_pai_attention,
    eager_scalingvis,
    last_logits,
    pai_refine,
    reference_adaptvis_generate,
    reference_pai_generate,
    reference_scalingvis_generate,
    scaled,
)

CORE = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava")
# Every family of the matrix; those beyond the four asked for first (sliding windows, linear attention,
# tiles) run with the slow tests.
MATRIX = [family if family in CORE else pytest.param(family, marks=pytest.mark.slow) for family in FAMILIES]
NEW_TOKENS = 4


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


def eager_logits(model, inputs) -> torch.Tensor:
    """The plain model's logits with transformers' own eager attention in the text decoder."""
    text_config = model.get_submodule("model.language_model").config
    original = text_config._attn_implementation
    text_config._attn_implementation = "eager"
    try:
        return logits(model, inputs)
    finally:
        text_config._attn_implementation = original


def layer_count(model) -> int:
    return len(model.get_submodule("model.language_model").layers)


def end_ids(model) -> list[int]:
    ends = model.generation_config.eos_token_id
    return [ends] if isinstance(ends, int) else list(ends)


def greedy(model, inputs, **options):
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "return_dict_in_generate": True} | options
    return model.generate(**inputs, output_logits=True, **options)


def prompt_rows(inputs) -> list[torch.Tensor]:
    """Per prompt, Bool over its valid positions: the last one (the row ScalingVis changes)."""
    return [torch.arange(int(mask.sum())) == int(mask.sum()) - 1 for mask in inputs["attention_mask"]]


@pytest.mark.parametrize("family", MATRIX)
def test_identity_settings_give_the_plain_model(family, copies):
    """ScalingVis alpha=1 and PAI alpha=0: transformers' eager logits bit for bit, the plain (SDPA)
    model's within float error, and its greedy tokens; for images and (where the family has it) video."""
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    for inputs in family_cases(family, processor).values():
        eager, plain = eager_logits(model, inputs), logits(model, inputs)
        with eager_scalingvis(model, 1.0, inputs, ids):
            assert torch.equal(logits(model, inputs), eager)
        with eager_pai_attention(model, 0.0, 0, layer_count(model), inputs, ids):
            identity = logits(model, inputs)
        assert torch.equal(identity, eager)
        assert_logits_match(inputs, identity, plain, atol=1e-5)
    inputs = image_batch(processor)
    plain = greedy(model, inputs)
    scalingvis = reference_scalingvis_generate(
        model, inputs, alpha=1.0, visual_ids=ids, max_new_tokens=NEW_TOKENS
    )
    assert_generation_matches(inputs, plain, scalingvis, end_ids(model))
    pai = reference_pai_generate(
        model,
        inputs,
        inputs,
        alpha=0.0,
        start_layer=0,
        end_layer=layer_count(model),
        gamma=1.0,
        visual_ids=ids,
        max_new_tokens=NEW_TOKENS,
    )
    assert_generation_matches(inputs, plain, pai, end_ids(model))


@pytest.mark.parametrize("family", MATRIX)
def test_scalingvis_changes_only_the_last_prompt_row(family, copies):
    """Every earlier row keeps the plain (eager) logits bit for bit; the last row changes for each
    prompt; an alpha per prompt changes only the prompts whose alpha is not 1."""
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    for inputs in family_cases(family, processor).values():
        plain = valid_positions(inputs, eager_logits(model, inputs))
        with eager_scalingvis(model, 1.7, inputs, ids):
            scaled_rows = valid_positions(inputs, logits(model, inputs))
        with eager_scalingvis(model, torch.tensor([1.0, 0.5]), inputs, ids):
            per_prompt = valid_positions(inputs, logits(model, inputs))
        for last, before, after, mixed in zip(
            prompt_rows(inputs), plain, scaled_rows, per_prompt, strict=True
        ):
            assert torch.equal(after[~last], before[~last])
            assert (after[last] - before[last]).abs().max() > 1e-4
            assert torch.equal(mixed[~last], before[~last])
        assert torch.equal(per_prompt[0], plain[0]) and not torch.equal(per_prompt[1], plain[1])


class ForcedTokens(LogitsProcessor):
    """Greedy generation made to choose `tokens` [B, N] whatever the scores: two runs feed the same rows."""

    def __init__(self, tokens: torch.Tensor, prompt_length: int):
        self.tokens, self.prompt_length = tokens, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = self.tokens[:, input_ids.shape[1] - self.prompt_length]
        return torch.full_like(scores, float("-inf")).scatter(1, chosen[:, None], 0.0)


def layer_outputs(model, inputs, tokens: torch.Tensor, context) -> list[list[torch.Tensor]]:
    """Per forward call of a cached greedy generation fed `tokens`, each decoder layer's output [B, Q, D]."""
    calls: list[list[torch.Tensor]] = []
    layers = model.get_submodule("model.language_model").layers

    def record(index):
        def hook(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if index == 0:
                calls.append([])
            calls[-1].append(hidden.detach().clone())

        return hook

    hooks = [layer.register_forward_hook(record(index)) for index, layer in enumerate(layers)]
    forced = LogitsProcessorList([ForcedTokens(tokens, inputs["input_ids"].shape[1])])
    try:
        with context:
            greedy(
                model,
                inputs,
                max_new_tokens=tokens.shape[1],
                min_new_tokens=tokens.shape[1],
                logits_processor=forced,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return calls


@pytest.mark.parametrize("family", MATRIX)
def test_pai_changes_the_last_row_of_each_forward_from_start_layer_on(family, copies):
    """With a cache: at prefill every row but the last, and every layer before `start_layer`, keep their
    output bit for bit; the last row changes from `start_layer` on; so does each decode step's row."""
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    inputs = image_batch(processor)
    tokens = torch.tensor([[5, 6], [7, 8]])
    start = 2  # Qwen3.5's first softmax-attention layer
    plain = layer_outputs(
        model, inputs, tokens, eager_pai_attention(model, 0.0, 0, layer_count(model), inputs, ids)
    )
    changed = layer_outputs(
        model, inputs, tokens, eager_pai_attention(model, 0.8, start, layer_count(model), inputs, ids)
    )
    assert len(plain) == len(changed) == tokens.shape[1]
    # Padding rows see no key: eager attention spreads them over every key, the last row's included.
    earlier = inputs["attention_mask"].bool()[:, :-1]
    for call, (before, after) in enumerate(zip(plain, changed, strict=True)):
        for layer, (ours, theirs) in enumerate(zip(before, after, strict=True)):
            if call == 0:
                assert torch.equal(ours[:, :-1][earlier], theirs[:, :-1][earlier]), (
                    f"layer {layer}: an earlier row"
                )
            last_changed = (ours[:, -1] - theirs[:, -1]).abs().amax(dim=-1)
            if layer < start:
                assert not last_changed.any(), f"call {call}, layer {layer}: before start_layer"
            else:
                assert (last_changed > 1e-6).all(), f"call {call}, layer {layer}: not amplified"


@pytest.mark.parametrize("family", CORE)
def test_pai_end_layer_is_exclusive(family, copies):
    """Layers start..end-1 only: (1, 2) and (1, 4) agree up to layer 1's output and part at layer 2's."""
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    inputs = image_batch(processor)
    tokens = torch.tensor([[5], [7]])
    one = layer_outputs(model, inputs, tokens, eager_pai_attention(model, 0.8, 1, 2, inputs, ids))[0]
    three = layer_outputs(model, inputs, tokens, eager_pai_attention(model, 0.8, 1, 4, inputs, ids))[0]
    none = layer_outputs(model, inputs, tokens, eager_pai_attention(model, 0.8, 1, 1, inputs, ids))[0]
    assert torch.equal(one[1], three[1]) and not torch.equal(one[1], none[1])
    assert not torch.equal(one[2][:, -1], three[2][:, -1])


@pytest.mark.parametrize("family", MATRIX)
def test_a_batch_equals_its_prompts_one_by_one(family, copies):
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    batch = prompt_inputs(processor, BATCH)
    singles = [prompt_inputs(processor, [spec], seed=5 + index) for index, spec in enumerate(BATCH)]
    for reference in (
        lambda inputs: eager_scalingvis(model, 1.7, inputs, ids),
        lambda inputs: eager_pai_attention(model, 0.8, 1, 4, inputs, ids),
    ):
        with reference(batch):
            batched = valid_positions(batch, logits(model, batch))
        for one, single in zip(batched, singles, strict=True):
            with reference(single):
                torch.testing.assert_close(one, logits(model, single)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_pai_generation_of_a_batch_equals_its_prompts_one_by_one(family, copies):
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    options = {"alpha": 0.8, "start_layer": 1, "end_layer": 4, "gamma": 1.1, "visual_ids": ids}

    def generate(inputs):
        text_only = text_only_inputs(inputs, processor, family)
        return reference_pai_generate(model, inputs, text_only, max_new_tokens=NEW_TOKENS, **options)

    batched = generate(prompt_inputs(processor, BATCH))
    for index, spec in enumerate(BATCH):
        alone = generate(prompt_inputs(processor, [spec], seed=5 + index))
        assert torch.equal(batched.tokens[index], alone.tokens[0])
        finite = torch.isfinite(alone.scores[:, 0])
        assert torch.equal(torch.isfinite(batched.scores[:, index]), finite)
        torch.testing.assert_close(
            batched.scores[:, index][finite], alone.scores[:, 0][finite], atol=1e-5, rtol=0
        )


def synthetic_call(decode: bool, window: int | None = None, seed: int = 0) -> dict:
    """One attention call of 2 prompts (the second left-padded by 3), 4 query heads on 2 key/value heads:
    the prompt (10 positions, visual 3..6) at prefill, or the 2nd generated token's row at decode. With a
    sliding `window` a row sees its last `window` positions, and a decode step gets only those keys (as
    from a sliding-window cache): the last prompt row's window leaves visual key 3 masked."""
    generator = torch.Generator().manual_seed(seed)
    prompt, end = 10, 12 if decode else 10
    queries = 1 if decode else prompt
    keys = min(end, window or end) if decode else end
    visual = torch.zeros(2, prompt, dtype=torch.bool)
    visual[:, 3:7] = True
    positions = torch.arange(end - keys, end)
    rows = torch.arange(end - queries, end)
    visible = (positions[None, None, :] <= rows[None, :, None]) & (positions >= torch.tensor([[0], [3]]))[
        :, None
    ]
    if window is not None:
        visible &= positions[None, None, :] > rows[None, :, None] - window
    mask = torch.zeros(2, 1, queries, keys).masked_fill(~visible[:, None], torch.finfo(torch.float32).min)
    return {
        "query": torch.randn(2, 4, queries, 8, generator=generator),
        "key": torch.randn(2, 2, keys, 8, generator=generator) * 2,
        "value": torch.randn(2, 2, keys, 8, generator=generator),
        "mask": mask,
        "visual": visual,
        "end": end,
        "rows": rows,
        "positions": positions,
    }


def by_the_spec(call: dict, new_score, changed_rows) -> torch.Tensor:
    """softmax(s') V [B, Q, H, d] head by head and row by row, s' from the spec's formula `new_score`."""
    batch, heads, queries, head_dim = call["query"].shape
    output = torch.zeros(batch, queries, heads, head_dim)
    visual = torch.nn.functional.pad(call["visual"], (0, call["end"] - call["visual"].shape[1]))
    for b in range(batch):
        for h in range(heads):
            key, value = call["key"][b, h // 2], call["value"][b, h // 2]  # GQA: 2 query heads per key head
            for q in range(queries):
                row = [
                    float(call["query"][b, h, q] @ key[k]) / math.sqrt(head_dim) for k in range(key.shape[0])
                ]
                row = [s + float(call["mask"][b, 0, q, k]) for k, s in enumerate(row)]
                if int(call["rows"][q]) in changed_rows:
                    row = [
                        new_score(s, b)
                        if visual[b, call["positions"][k]] and call["mask"][b, 0, q, k] == 0
                        else s
                        for k, s in enumerate(row)
                    ]
                output[b, q, h] = torch.softmax(torch.tensor(row), dim=0) @ value
    return output


CHANGES = {
    "scalingvis": (scaled, torch.tensor([1.5, 0.5]), lambda s, b: [1.5, 0.5][b] * s, False),
    "pai": (amplified, torch.tensor([0.4, 0.4]), lambda s, b: s + 0.4 * abs(s), True),
    # alpha >= 1 would lift a masked key's score to >= 0: only visible keys change.
    "pai_large": (amplified, torch.tensor([1.5, 1.5]), lambda s, b: s + 1.5 * abs(s), True),
}


@pytest.mark.parametrize("method", CHANGES)
@pytest.mark.parametrize(("decode", "window"), [(False, None), (False, 6), (True, None), (True, 6)])
def test_the_attention_function_follows_the_spec_formula(method, decode, window):
    change, alpha, new_score, generated_rows = CHANGES[method]
    call = synthetic_call(decode, window)
    # ScalingVis changes the last prompt row (9), PAI also every generated row (10, 11).
    changed_rows = range(9, 12) if generated_rows else range(9, 10)
    for layers, expected_rows in ((range(0, 4), changed_rows), (range(1, 4), ())):
        rule = RowRule(change, alpha, layers, generated_rows)
        function = attention_function(rule, call["visual"], ForwardEnd(call["end"]))
        output, _ = function(
            SimpleNamespace(layer_idx=0), call["query"], call["key"], call["value"], call["mask"], 8**-0.5
        )
        torch.testing.assert_close(output, by_the_spec(call, new_score, expected_rows), atol=1e-5, rtol=0)
    if decode and not generated_rows:  # ScalingVis leaves decode rows alone: nothing to tell apart
        return
    assert not torch.allclose(output, by_the_spec(call, new_score, changed_rows), atol=1e-3)


def test_pai_refine_by_hand():
    """gamma * (lp_c - lp_t) + lp_t, and -inf where p_c < 0.1 max p_c (0.04 < 0.05 <= 0.07 here)."""
    main = torch.tensor([[0.5, 0.3, 0.04, 0.09, 0.07]]).log()
    text_only = torch.tensor([[0.1, 0.5, 0.2, 0.1, 0.1]]).log()
    expected = [1.1 * math.log(0.5 / 0.1) + math.log(0.1), 1.1 * math.log(0.3 / 0.5) + math.log(0.5)]
    expected += [
        float("-inf"),
        1.1 * math.log(0.09 / 0.1) + math.log(0.1),
        1.1 * math.log(0.07 / 0.1) + math.log(0.1),
    ]
    torch.testing.assert_close(pai_refine(main, text_only, 1.1), torch.tensor([expected]))
    # Logits, not log-probabilities: shifting either stream changes nothing.
    torch.testing.assert_close(pai_refine(main + 3, text_only - 2, 1.1), torch.tensor([expected]))


@pytest.mark.parametrize("family", MATRIX)
def test_the_loops_equal_cached_generation_under_the_references(family, copies):
    """The references' whole-sequence greedy loops equal `generate` (with its cache) under the same
    context: tokens and every step's logits. So ScalingVis's decode rows stay plain, PAI's are amplified
    the same way whichever of the two runs them, and a sliding-window cache's keys (Gemma 3) are placed. PAI with gamma=1 is its amplification alone."""
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    inputs = image_batch(processor)
    expected = reference_scalingvis_generate(
        model, inputs, alpha=1.7, visual_ids=ids, max_new_tokens=NEW_TOKENS
    )
    with eager_scalingvis(model, 1.7, inputs, ids):
        assert_generation_matches(inputs, greedy(model, inputs), expected, end_ids(model))
    pai = {"alpha": 0.8, "start_layer": 1, "end_layer": 4, "visual_ids": ids, "max_new_tokens": NEW_TOKENS}
    text_only = text_only_inputs(inputs, processor, family)
    expected = reference_pai_generate(model, inputs, text_only, gamma=1.0, **pai)
    with eager_pai_attention(model, 0.8, 1, 4, inputs, ids):
        assert_generation_matches(inputs, greedy(model, inputs), expected, end_ids(model))
    refined = reference_pai_generate(model, inputs, text_only, gamma=1.5, **pai)
    torch.testing.assert_close(refined.logits[0], expected.logits[0], atol=1e-5, rtol=0)
    assert not torch.equal(refined.scores[0], expected.scores[0])


@pytest.mark.parametrize("family", CORE)
def test_adaptvis_chooses_alpha_per_prompt_from_the_plain_confidence(family, copies):
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    inputs = image_batch(processor)
    plain = torch.softmax(logits(model, inputs)[:, -1], dim=-1).max(dim=-1).values
    assert plain[0] != plain[1]
    threshold = float(plain.mean())
    adaptvis = reference_adaptvis_generate(
        model,
        inputs,
        alpha_low=0.5,
        alpha_high=1.5,
        threshold=threshold,
        visual_ids=ids,
        max_new_tokens=NEW_TOKENS,
    )
    torch.testing.assert_close(adaptvis.confidence, plain, atol=1e-6, rtol=0)
    assert adaptvis.alpha.tolist() == [
        0.5 if confidence < threshold else 1.5 for confidence in plain.tolist()
    ]
    for index, alpha in enumerate(adaptvis.alpha.tolist()):
        alone = reference_scalingvis_generate(
            model, inputs, alpha=alpha, visual_ids=ids, max_new_tokens=NEW_TOKENS
        )
        assert torch.equal(adaptvis.generation.tokens[index], alone.tokens[index])
        assert torch.equal(adaptvis.generation.logits[:, index], alone.logits[:, index])


class TextOnlyRefine(LogitsProcessor):
    """A stand-in for a fused PAI's refine: the text-only stream re-run whole at each step, plainly."""

    def __init__(self, model, text_only, prompt_length: int, gamma: float, plain_attention: str):
        self.model, self.text_only, self.prompt_length = model, text_only, prompt_length
        self.gamma, self.plain_attention = gamma, plain_attention

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        text_config = self.model.get_submodule("model.language_model").config
        amplified_attention, text_config._attn_implementation = (
            text_config._attn_implementation,
            self.plain_attention,
        )
        try:
            text_only = last_logits(self.model, appended(self.text_only, input_ids[:, self.prompt_length :]))
        finally:
            text_config._attn_implementation = amplified_attention
        return pai_refine(scores, text_only, self.gamma)


@contextmanager
def stand_in_pai(model, config, inputs, text_only, ids):
    """What a fused PAI must do, built from the reference's parts: amplification, and the refine as a
    logits processor of `generate`."""
    plain_attention = model.get_submodule("model.language_model").config._attn_implementation
    refine = TextOnlyRefine(model, text_only, inputs["input_ids"].shape[1], config.gamma, plain_attention)
    generate = model.generate
    model.generate = lambda **options: generate(**options, logits_processor=LogitsProcessorList([refine]))
    try:
        with eager_pai_attention(model, config.alpha, config.start_layer, config.end_layer, inputs, ids):
            yield
    finally:
        del model.generate


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_assert_matches_reference_passes_a_right_method_and_fails_a_wrong_one(family, copies):
    model, processor = copies(family)
    ids = visual_ids(family, processor)
    inputs = image_batch(processor)
    text_only = text_only_inputs(inputs, processor, family)
    scalingvis = SimpleNamespace(alpha=1.7)
    adaptvis = SimpleNamespace(alpha_low=0.5, alpha_high=1.5, threshold=0.0)  # every prompt confident
    pai = SimpleNamespace(alpha=0.8, start_layer=1, end_layer=None, gamma=1.5)
    pai_all_layers = SimpleNamespace(alpha=0.8, start_layer=1, end_layer=layer_count(model), gamma=1.5)
    cases = [  # (config, a right implementation, a wrong one)
        (
            scalingvis,
            lambda: eager_scalingvis(model, 1.7, inputs, ids),
            lambda: eager_scalingvis(model, 1.6, inputs, ids),
        ),
        (
            adaptvis,
            lambda: eager_scalingvis(model, 1.5, inputs, ids),
            lambda: eager_scalingvis(model, 0.5, inputs, ids),
        ),
        (
            pai,
            lambda: stand_in_pai(model, pai_all_layers, inputs, text_only, ids),
            lambda: eager_pai_attention(model, 0.8, 1, layer_count(model), inputs, ids),  # no refine
        ),
    ]
    for config, right, wrong in cases:
        assert_matches_reference(model, config, inputs, ids, right, text_only_inputs=text_only)
        with pytest.raises(AssertionError):
            assert_matches_reference(model, config, inputs, ids, wrong, text_only_inputs=text_only)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_qwen_text_only_inputs_are_the_prompts_without_their_images(family, tiny_models):
    """Dropping each image's placeholders and delimiters gives what the chat template gives with no image."""
    processor = tiny_models(family)[1]
    texts = [chat_text(processor, 0, question) for _, question in BATCH]
    expected = processor.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    built = text_only_inputs(image_batch(processor), processor, family)
    assert torch.equal(built["input_ids"], expected["input_ids"])
    assert torch.equal(built["attention_mask"], expected["attention_mask"])
