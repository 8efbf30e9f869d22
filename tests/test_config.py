import pytest

from lmms_var import VARConfig


def test_defaults_are_the_papers():
    config = VARConfig(sink_dims=[458, 2570])
    assert (config.tau, config.rho, config.summ, config.p, config.except_last_layer) == (
        20.0,
        0.5,
        0.2,
        0.6,
        True,
    )
    assert config.sink_dims == (458, 2570)
    assert VARConfig(sink_dims=7).sink_dims == (7,)


def test_frozen_and_hashable():
    config = VARConfig(sink_dims=[1])
    with pytest.raises(AttributeError):
        config.p = 0.1
    assert hash(config) == hash(VARConfig(sink_dims=(1,)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("p", 1.5, r"VARConfig.p must be in \[0, 1\], got 1.5"),
        ("p", -0.1, r"VARConfig.p"),
        ("rho", 2, r"VARConfig.rho must be in \[0, 1\]"),
        ("summ", -1, r"VARConfig.summ"),
        ("tau", 0, r"VARConfig.tau must be a finite number > 0, got 0"),
        ("tau", float("inf"), r"VARConfig.tau must be a finite number > 0, got inf"),
        ("tau", float("nan"), r"VARConfig.tau must be a finite number > 0, got nan"),
        ("tau", "20", r"VARConfig.tau"),
        ("sink_dims", [], r"VARConfig.sink_dims must list at least one"),
        ("sink_dims", [3, -2], r"VARConfig.sink_dims must be non-negative integers"),
        ("sink_dims", ["a"], r"VARConfig.sink_dims"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    kwargs = {"sink_dims": [1], field: value}
    with pytest.raises(ValueError, match=message):
        VARConfig(**kwargs)


@pytest.mark.parametrize(
    ("layers", "except_last", "expected"), [(6, True, [2, 3, 4]), (6, False, [2, 3, 4, 5])]
)
def test_active_layers(layers, except_last, expected):
    assert list(VARConfig([1], except_last_layer=except_last).active_layers(layers)) == expected
