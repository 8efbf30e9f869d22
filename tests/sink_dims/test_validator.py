import pytest
import torch

from lmms_var.sink_dims.calibration import builtin_prompts
from lmms_var.sink_dims.validator import outsized_attention, validate_sink_dims
from tests.conftest import TINY_TAU
from tests.sink_dims.conftest import OTHER_SPEC


def test_planted_dims_have_high_precision_and_recall(planted):
    model, processor, dims = planted
    result = validate_sink_dims(model, processor, dims, tau=TINY_TAU)
    assert result.precision >= 0.9 and result.recall >= 0.9
    assert set(result.per_layer) == {2, 3}
    for counts in result.per_layer.values():
        assert 0 < counts["both"] <= min(counts["detected"], counts["outsized"]) <= counts["scored"]


def test_dims_nothing_is_planted_in_detect_nothing(tiny_model):
    result = validate_sink_dims(*tiny_model, OTHER_SPEC.sink_dims, tau=TINY_TAU, prompts=builtin_prompts(3))
    assert result.precision is None  # no sink detected: precision is undefined, not perfect
    assert result.recall == 0.0
    assert result.settings["outsized"] > 0


def test_wrong_dims_that_flag_many_tokens_score_low(tiny_model):
    # At tau=1, ordinary channels flag many ordinary tokens, none of which draw outsized attention.
    result = validate_sink_dims(*tiny_model, (3, 50), tau=1.0, prompts=builtin_prompts(3))
    assert result.settings["detected"] > 50
    assert result.precision < 0.1 and result.recall < 0.1


def test_report_explains_outsized_attention_and_the_model_is_restored(tiny_model):
    model, processor = tiny_model
    before = model.config.get_text_config()._attn_implementation
    result = validate_sink_dims(
        model, processor, (17, 93), tau=TINY_TAU, layers=[2], prompts=builtin_prompts(3)
    )
    assert model.config.get_text_config()._attn_implementation == before
    report = result.to_json()
    assert set(report) == {"model", "sink_dims", "precision", "recall", "per_layer", "settings"}
    assert list(report["per_layer"]) == ["2"]
    assert report["settings"]["num_prompts"] == 3
    assert "uniform share" in report["settings"]["outsized_attention"]
    assert "precision 1.000, recall 1.000" in result.table()


@pytest.mark.parametrize("dims", [(17, 128), (-1,), ()])
def test_dims_outside_the_hidden_size_are_rejected(tiny_model, dims):
    with pytest.raises(ValueError, match=r"^dims "):
        validate_sink_dims(*tiny_model, dims, tau=TINY_TAU)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tau": float("inf")}, "tau must be a finite number > 0, got inf"),
        (
            {"attention_factor": -1.0},
            "attention_factor must be a finite multiple > 0 of the uniform attention",
        ),
        ({"attention_factor": "2"}, "attention_factor must be a number, got '2'"),
        (
            {"min_distance": -5},
            r"min_distance must be an integer >= 0 \(queries at least this far after a key\)",
        ),
    ],
)
def test_bad_settings_are_named_before_any_prompt_runs(tiny_model, settings, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        validate_sink_dims(*tiny_model, (17, 93), **{"tau": TINY_TAU, **settings})


def _uniform_causal(keys: int) -> torch.Tensor:
    return torch.tril(torch.ones(keys, keys)) / torch.arange(1, keys + 1)[:, None]


def test_outsized_attention_ignores_uniform_attention_and_flags_a_sink():
    keys = 10
    uniform = _uniform_causal(keys)[None].repeat(2, 1, 1)
    outsized, scored = outsized_attention(uniform, attention_factor=2.0, min_distance=4)
    assert not outsized.any()
    assert scored.tolist() == [True] * 6 + [False] * 4  # the last 4 keys have no query 4 or more after them
    # Head 0 sends half of every row to key 1; head-mean ratio at key 1 is then well above 2.
    sink = uniform.clone()
    sink[0, 1:, :] *= 0.5
    sink[0, 1:, 1] += 0.5
    outsized, _ = outsized_attention(sink, attention_factor=2.0, min_distance=4)
    assert outsized.nonzero().flatten().tolist() == [1]


def test_outsized_attention_ignores_local_attention():
    keys = 12
    local = torch.zeros(1, keys, keys)
    local[0, torch.arange(keys), torch.arange(keys)] = 0.5  # every query looks at itself...
    local[0, :, 0] += 0.5  # ...and at the first token
    with_local, _ = outsized_attention(local, attention_factor=2.0, min_distance=0)
    assert with_local[0] and with_local[-1]  # the last key is seen by one query only: itself
    without_local, _ = outsized_attention(local, attention_factor=2.0, min_distance=1)
    assert without_local.nonzero().flatten().tolist() == [0]


def test_outsized_attention_needs_a_prefill_square():
    with pytest.raises(ValueError, match=r"Q == K"):
        outsized_attention(torch.ones(2, 1, 5), attention_factor=2.0, min_distance=4)
