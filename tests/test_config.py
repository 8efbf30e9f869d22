import pytest

from lmms_var import AdaptVisConfig, PAIConfig, ScalingVisConfig, VARConfig


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


def test_intervention_defaults_are_the_authors():
    assert (AdaptVisConfig().alpha_low, AdaptVisConfig().alpha_high, AdaptVisConfig().threshold) == (
        0.5,
        1.5,
        0.4,
    )
    pai = PAIConfig()
    assert (pai.alpha, pai.start_layer, pai.end_layer, pai.gamma) == (0.2, 2, None, 1.1)
    with pytest.raises(AttributeError):
        pai.gamma = 1.0
    assert hash(ScalingVisConfig(1.5)) == hash(ScalingVisConfig(alpha=1.5))


@pytest.mark.parametrize(
    ("config_class", "kwargs", "message"),
    [
        (ScalingVisConfig, {"alpha": 0}, r"ScalingVisConfig.alpha must be a finite number > 0, got 0"),
        (ScalingVisConfig, {"alpha": float("inf")}, r"ScalingVisConfig.alpha must be a finite number > 0"),
        (ScalingVisConfig, {"alpha": float("nan")}, r"ScalingVisConfig.alpha"),
        (ScalingVisConfig, {"alpha": True}, r"ScalingVisConfig.alpha"),
        (ScalingVisConfig, {"alpha": "1.5"}, r"ScalingVisConfig.alpha"),
        (AdaptVisConfig, {"alpha_low": -0.5}, r"AdaptVisConfig.alpha_low must be a finite number > 0"),
        (AdaptVisConfig, {"alpha_high": 0.0}, r"AdaptVisConfig.alpha_high must be a finite number > 0"),
        (AdaptVisConfig, {"threshold": 1.2}, r"AdaptVisConfig.threshold must be in \[0, 1\], got 1.2"),
        (PAIConfig, {"alpha": -0.1}, r"PAIConfig.alpha must be a finite number >= 0, got -0.1"),
        (PAIConfig, {"gamma": float("inf")}, r"PAIConfig.gamma must be a finite number >= 0, got inf"),
        (PAIConfig, {"start_layer": -1}, r"PAIConfig.start_layer must be a layer index \(an integer >= 0\)"),
        (PAIConfig, {"start_layer": 2.0}, r"PAIConfig.start_layer must be a layer index"),
        (PAIConfig, {"end_layer": True}, r"PAIConfig.end_layer must be a layer index"),
        (PAIConfig, {"end_layer": 2}, r"PAIConfig.end_layer must be above start_layer \(2\), got 2"),
    ],
)
def test_invalid_intervention_values_name_the_field(config_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config_class(**kwargs)


def test_intervention_active_layers():
    assert ScalingVisConfig(2.0).active_layers(4) == range(4)
    assert AdaptVisConfig().active_layers(3) == range(3)
    assert PAIConfig().active_layers(6) == range(2, 6)
    assert PAIConfig(start_layer=0, end_layer=3).active_layers(6) == range(0, 3)
    assert PAIConfig(end_layer=6).active_layers(6) == range(2, 6)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (PAIConfig(end_layer=7), r"PAIConfig.end_layer must be at most the model's 6 layers, got 7"),
        (PAIConfig(start_layer=6), r"PAIConfig.start_layer must be below the model's 6 layers, got 6"),
    ],
)
def test_pai_layers_beyond_the_model_name_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        config.active_layers(6)
