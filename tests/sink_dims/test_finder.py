import json

import pytest
import torch

from lmms_var.sink_dims.calibration import builtin_prompts, data_prompts
from lmms_var.sink_dims.finder import find_sink_dims, measured_layers
from lmms_var.testing import TinySpec, build_tiny_model
from lmms_var.testing.tiny_families import TINY_FAMILIES
from tests.conftest import TINY_SPEC, TINY_TAU


def test_finds_exactly_the_planted_channels_without_data(planted):
    model, processor, dims = planted
    result = find_sink_dims(model, processor, tau=TINY_TAU)
    assert result.sink_dims == tuple(sorted(dims))
    for dim in dims:
        evidence = result.evidence["dims"][str(dim)]
        assert evidence["consistency"] == 1.0
        assert evidence["strength"] > TINY_TAU > 10 * evidence["background"]
        # The planted sources: the <|im_start|> embedding and a few visual tokens.
        assert set(evidence["tokens"]) == {"<|im_start|>", "<|image_pad|>"}
        assert set(evidence["layers"]) == {"2", "3"}


def test_finds_the_planted_channels_of_every_family(family, family_model):
    result = find_sink_dims(*family_model, tau=TINY_TAU, prompts=builtin_prompts(2))
    assert result.sink_dims == TINY_SPEC.sink_dims
    facts = TINY_FAMILIES[family]
    for dim in TINY_SPEC.sink_dims:
        evidence = result.evidence["dims"][str(dim)]
        assert evidence["consistency"] == 1.0
        assert set(evidence["tokens"]) == {*facts.text_sink_tokens, facts.visual_tokens[0]}


def test_finds_the_planted_channels_on_spatial_records(tiny_model, spatial_root):
    model, processor = tiny_model
    result = find_sink_dims(
        model, processor, tau=TINY_TAU, prompts=data_prompts(spatial_root, 4), prompt_source="data"
    )
    assert result.sink_dims == (17, 93)
    assert result.evidence["prompts"] == "data" and result.evidence["num_prompts"] == 4


@pytest.fixture(scope="module")
def default_result(tiny_model):
    return find_sink_dims(*tiny_model, tau=TINY_TAU)


def test_result_is_deterministic_and_json_serialisable(tiny_model, default_result):
    first = default_result
    second = find_sink_dims(*tiny_model, tau=TINY_TAU)
    assert json.dumps(first.to_json(), sort_keys=True) == json.dumps(second.to_json(), sort_keys=True)
    assert set(first.to_json()) == {"model", "sink_dims", "evidence"}


def test_table_lists_each_reported_channel(default_result):
    table = default_result.table()
    assert "[17, 93]" in table.splitlines()[0]
    rows = [line.split() for line in table.splitlines()[2:]]
    assert [(row[0], row[1]) for row in rows] == [("17", "yes"), ("93", "yes")]


def test_chosen_layers_are_the_only_ones_observed(tiny_model):
    result = find_sink_dims(*tiny_model, tau=TINY_TAU, layers=[3])
    assert result.sink_dims == (17, 93)
    assert result.evidence["layers"] == [3]
    assert result.evidence["observations"] == result.evidence["num_prompts"]


def test_a_model_without_sinks_gets_a_clear_error():
    model, processor = build_tiny_model(TinySpec(sink_dims=None))
    with pytest.raises(ValueError, match=r"no hidden channel .* fired .* Try a lower tau"):
        find_sink_dims(model, processor, tau=TINY_TAU, prompts=builtin_prompts(2))


def test_tau_above_every_reachable_value_gets_a_clear_error(tiny_model):
    # An RMS-normalised value never exceeds sqrt(128) ~ 11.3, so nothing can be massive at 12.
    with pytest.raises(ValueError, match=r"sqrt\(hidden_size\) = 11\.3"):
        find_sink_dims(*tiny_model, tau=12.0, prompts=builtin_prompts(2))


@pytest.mark.parametrize(("layers", "expected"), [(None, [2, 3]), ([3, 0, 3], [0, 3])])
def test_measured_layers(layers, expected):
    assert measured_layers(layers, 4) == expected


@pytest.mark.parametrize("layers", [[4], [-1], []])
def test_layers_outside_the_model_are_rejected(layers):
    with pytest.raises(ValueError, match=r"^layers must be decoder layers in \[0, 4\)"):
        measured_layers(layers, 4)


def test_finder_rejects_other_model_types():
    with pytest.raises(ValueError, match="VAR supports model types"):
        find_sink_dims(torch.nn.Linear(2, 2), None, tau=TINY_TAU)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 0.0}, "^tau must be a finite number > 0"),
        ({"tau": float("inf")}, "^tau must be a finite number > 0, got inf"),
        ({"min_consistency": 1.5}, r"^min_consistency must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_named(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_sink_dims(*tiny_model, **{"tau": TINY_TAU, **kwargs})
