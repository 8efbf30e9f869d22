"""Model-arg parsing: the values lmms-eval hands over (bools, ints, floats, strings) and clear errors."""

import pytest
import torch
from lmms_eval.utils import simple_parse_args_string

from lmms_var.models.args import (
    AUTO,
    ModelArgError,
    merge_lmms_eval_options,
    parse_bool,
    parse_dtype,
    parse_intervention_options,
    parse_model_args,
    parse_positive_int,
    parse_sink_dims,
)
from tests.models.instances import LMMS_EVAL_OPTIONS

DEFAULTS = dict(
    var=True,
    sink_dims=None,
    tau=20.0,
    rho=0.5,
    summ=0.2,
    p=0.6,
    except_last_layer=True,
    diagnostics=False,
    diagnostics_path=None,
)


def options(**overrides):
    return parse_intervention_options(**{**DEFAULTS, **overrides})


def test_values_as_lmms_eval_parses_them():
    """`k=v` strings go through lmms-eval's own parser first, as on the command line."""
    args = simple_parse_args_string("sink_dims=458,var=false,p=1,tau=5,except_last_layer=False")
    assert args == {"sink_dims": 458, "var": False, "p": 1, "tau": 5, "except_last_layer": False}
    parsed = options(**args)
    assert (parsed.sink_dims, parsed.enabled, parsed.args["p"], parsed.args["tau"]) == (
        (458,),
        False,
        1.0,
        5.0,
    )
    assert parsed.args["except_last_layer"] is False
    several = simple_parse_args_string("sink_dims=458;2570")
    assert options(**several).sink_dims == (458, 2570)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("458;2570", (458, 2570)), (" 17 ; 93 ", (17, 93)), (93, (93,)), ([17, 93], (17, 93)), ("AUTO", AUTO)],
)
def test_sink_dims_forms(value, expected):
    assert parse_sink_dims(value) == expected


@pytest.mark.parametrize("value", ["abc", "458,2570", "-1", "4.5", "", True, 4.0])
def test_bad_sink_dims_name_the_argument(value):
    with pytest.raises(ModelArgError, match=r"^invalid model_args: sink_dims"):
        parse_sink_dims(value)


@pytest.mark.parametrize(
    ("name", "value"), [("p", 2), ("rho", -0.1), ("summ", 1.5), ("tau", 0), ("tau", "inf"), ("tau", "nan")]
)
def test_out_of_range_hyper_parameters_name_the_argument(name, value):
    with pytest.raises(ModelArgError, match=rf"invalid model_args: {name} must be"):
        options(**{name: value})


def test_non_numbers_and_non_bools_are_rejected():
    with pytest.raises(ModelArgError, match="p must be a number, got 'high'"):
        options(p="high")
    with pytest.raises(ModelArgError, match="var must be true or false, got 'maybe'"):
        options(var="maybe")
    assert parse_bool("var", "Yes") is True and parse_bool("var", 0) is False


def test_diagnostics_path_turns_diagnostics_on():
    assert options().diagnostics is False
    assert options(diagnostics="true").diagnostics is True
    with_path = options(diagnostics_path="/tmp/diag")
    assert (with_path.diagnostics, with_path.diagnostics_path) == (True, "/tmp/diag")


def test_config_carries_every_hyper_parameter():
    config = options(p=0.3, rho=0.4, summ=0.1, tau=5, except_last_layer=False).config((17, 93))
    assert (config.sink_dims, config.p, config.rho, config.summ, config.tau) == ((17, 93), 0.3, 0.4, 0.1, 5.0)
    assert config.except_last_layer is False


def test_dtype_defaults_follow_the_device():
    assert parse_dtype(None, "cpu") == torch.float32
    assert parse_dtype(None, "cuda") == torch.bfloat16
    assert parse_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ModelArgError, match="dtype must be one of"):
        parse_dtype("int8", "cpu")


@pytest.mark.parametrize("value", ["auto", 0, "-2", True])
def test_batch_size_must_be_a_positive_integer(value):
    with pytest.raises(ModelArgError, match="batch_size must be a positive integer"):
        parse_positive_int("batch_size", value)


@pytest.mark.parametrize(
    "arg_string",
    ["pretrained=/a/b,sink_dims=458;2570,var=false,p=0.5,tau=5", 'system_prompt="a, b",max_pixels=12544', ""],
)
def test_model_args_parse_as_lmms_eval_parses_them(arg_string):
    assert parse_model_args(arg_string) == simple_parse_args_string(arg_string)


@pytest.mark.parametrize(
    ("arg_string", "message"),
    [
        ("sink_dims=17,93", "'93' is not an arg=value pair; separate sink dims with ';': sink_dims=17;93"),
        ("p=0.5,tau", "'tau' is not an arg=value pair (after p=0.5); commas separate model args (k=v,k=v)"),
        ("=5", "'=5' is not an arg=value pair"),
        ("tau=5,tau=6", "tau is given twice (tau=5 and tau=6)"),
    ],
)
def test_pieces_that_are_not_args_are_named(arg_string, message):
    with pytest.raises(ModelArgError, match=r"^invalid model_args: ") as error:
        parse_model_args(arg_string)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("model_args", "options", "merged"),
    [
        ({"batch_size": 2}, LMMS_EVAL_OPTIONS, {"batch_size": 2}),  # the README's form
        ({}, {**LMMS_EVAL_OPTIONS, "batch_size": "4"}, {"batch_size": "4"}),  # lmms-eval's flag
        ({"batch_size": 4}, {**LMMS_EVAL_OPTIONS, "batch_size": "4"}, {"batch_size": 4}),  # both, agreeing
        ({"device": "cpu"}, {**LMMS_EVAL_OPTIONS, "device": "cpu"}, {"device": "cpu", "batch_size": 1}),
    ],
)
def test_batch_size_and_device_given_either_way(model_args, options, merged):
    assert merge_lmms_eval_options(model_args, options) == merged


@pytest.mark.parametrize(
    ("model_args", "options", "message"),
    [
        (
            {"batch_size": 2},
            {"batch_size": "4"},
            "batch_size=2 in --model_args and lmms-eval's --batch_size 4 differ",
        ),
        (
            {"device": "cpu"},
            {"device": "cuda"},
            "device=cpu in --model_args and lmms-eval's --device cuda differ",
        ),
        ({}, {"max_batch_size": 8}, "lmms-eval's --max_batch_size 8 applies to --batch_size auto"),
    ],
)
def test_conflicting_lmms_eval_options_are_refused(model_args, options, message):
    with pytest.raises(ModelArgError, match=r"^invalid model_args: ") as error:
        merge_lmms_eval_options(model_args, options)
    assert message in str(error.value)
