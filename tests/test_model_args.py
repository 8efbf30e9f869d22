"""The table of model args is the one source: the models, the journal's key, run labels and `show` read it.

Four methods (VAR, ScalingVis, AdaptVis, PAI) take their own rows; ScalingVis and PAI share the name
`alpha`, with a row each.
"""

import argparse
from dataclasses import MISSING, fields

import pytest

from lmms_var.backbones import BACKBONES
from lmms_var.leaderboard import load_run
from lmms_var.leaderboard.table import run_names
from lmms_var.model_args import (
    METHOD_CONFIGS,
    METHODS,
    MODEL_ARGS,
    NOT_OUTPUT_ARGS,
    ModelArgError,
    Required,
    label_args,
    method_args,
    model_arg,
    parse_settings,
    rows_named,
)
from lmms_var.models.classes import Qwen2_5_VL_VAR_Chat
from lmms_var.models.journal import journal_settings
from lmms_var.models.var_model import VAR_MODEL_ARGS
from lmms_var.tools import show
from tests.conftest import modules_after
from tests.leaderboard.results_files import write_run

HEAVY = ("torch", "transformers", "lmms_eval", "accelerate")


def test_the_table_imports_nothing_heavy():
    loaded = modules_after("import lmms_var.model_args")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_one_row_per_arg_and_method_with_a_known_method_and_a_parsable_default():
    keys = [(row.name, row.method) for row in MODEL_ARGS]
    assert len(keys) == len(set(keys))
    for row in MODEL_ARGS:
        assert row.method in (None, *METHODS), row.name
        if not isinstance(row.default, Required):
            assert row.parsed(row.default) == row.parsed(row.parsed(row.default)), (
                row.name
            )  # parsers are idempotent
    assert model_arg("method").default == METHODS[0] == "var"
    assert METHODS == ("var", "scalingvis", "adaptvis", "pai")


def test_rows_sharing_a_name_are_methods_args_alike_but_for_default_parser_and_help():
    """`find_model_arg(name)` without a method (the journal, run labels) reads `changes_answers` and
    `label`, which rows of one name share; every run takes at most one row of each name."""
    shared = {row.name for row in MODEL_ARGS if len(rows_named(row.name)) > 1}
    assert shared == {"alpha"}
    for name in shared:
        rows = rows_named(name)
        assert None not in {row.method for row in rows}
        assert len({(row.changes_answers, row.label) for row in rows}) == 1
    for method in METHODS:
        names = [row.name for row in method_args(method)]
        assert len(names) == len(set(names)), method
    assert model_arg("alpha", "pai").default == 0.2
    assert isinstance(model_arg("alpha", "scalingvis").default, Required)


def test_no_row_shadows_an_upstream_arg():
    """An upstream arg of the same name as a row (`threshold`, `alpha`) would never reach upstream."""
    ours = {row.name for row in MODEL_ARGS}
    for backbone in BACKBONES:
        assert not ours & set(backbone.lmms_eval.upstream_args), backbone.lmms_eval.model_id


@pytest.mark.parametrize("method", METHODS)
def test_a_methods_rows_are_its_configs_fields_with_its_defaults(method):
    """A required row is a field without default; the others' defaults are the config's."""
    rows = {row.name: row.default for row in MODEL_ARGS if row.method == method}
    config = {field.name: field.default for field in fields(METHOD_CONFIGS[method])}
    assert rows.keys() == config.keys()
    assert {name for name, default in rows.items() if isinstance(default, Required)} <= {
        name for name, default in config.items() if default is MISSING
    }
    assert {name: rows[name] for name, default in config.items() if default is not MISSING} == {
        name: default for name, default in config.items() if default is not MISSING
    }


def test_the_model_takes_exactly_the_tables_args(tiny_checkpoint, no_weights):
    """Every row given at its default gets as far as loading the weights (refused by `no_weights`)."""
    assert tuple(dict.fromkeys(row.name for row in MODEL_ARGS)) == VAR_MODEL_ARGS
    given = {row.name: row.default for row in method_args("var")}
    given |= {"pretrained": str(tiny_checkpoint), "sink_dims": "17;93", "device": "cpu"}
    with pytest.raises(AssertionError, match="weights were loaded"):
        Qwen2_5_VL_VAR_Chat(**given)


def test_the_journal_key_leaves_out_exactly_the_rows_that_cannot_change_an_answer(tiny_model):
    assert (
        {row.name for row in MODEL_ARGS if not row.changes_answers}
        == NOT_OUTPUT_ARGS
        == {
            "device",
            "device_map",
            "batch_size",
            "diagnostics",
            "diagnostics_path",
            "attention_maps",
            "attention_maps_path",
            "journal",
        }
    )
    settings = parse_settings({"sink_dims": "17;93", "p": "0.3"})
    key = journal_settings(
        {**settings.values, "max_pixels": 12544}, model=tiny_model[0], config=None, model_class="X"
    )
    assert key["model_args"] == {
        **{row.name: settings[row.name] for row in method_args("var") if row.changes_answers},
        "max_pixels": 12544,
    }
    assert key["model_args"]["p"] == 0.3  # parsed: p=0.3 and p="0.3" share a key


def test_run_labels_list_the_label_rows_of_the_runs_method(tmp_path):
    listed = [name for name in label_args("var") if name != "var"]
    assert listed == ["method", "p", "rho", "tau", "summ", "sink_dims", "except_last_layer"]
    var_args = "p=0.5,rho=0.4,tau=5,summ=0.1,sink_dims=1;2,except_last_layer=false"
    specs = [
        f"{var_args},diagnostics=true,journal=off,device=cuda",  # NEVER rows differ: never shown
        "var=false,p=0.5,device=cpu",  # VAR off: its args change nothing
        "method=scalingvis,alpha=0.5,device=cpu",
        "method=pai,gamma=1,device=cpu",
    ]
    runs = []
    for index, args in enumerate(specs):
        write_run(tmp_path / f"run{index}", "qwen2_5_vl_var", args, {"t": {"acc": 0.5}})
        runs.append(load_run(tmp_path / f"run{index}"))
    assert run_names(runs) == [
        "qwen2_5_vl_var var=true p=0.5 rho=0.4 tau=5 summ=0.1 sink_dims=1;2 except_last_layer=false device=cuda",
        "qwen2_5_vl_var var=false device=cpu",
        "qwen2_5_vl_var var=true method=scalingvis alpha=0.5 device=cpu",
        "qwen2_5_vl_var var=true method=pai gamma=1 device=cpu",
    ]
    assert label_args("pai") == ("var", "method", "alpha", "start_layer", "end_layer", "gamma")


def test_shows_options_take_help_and_default_from_the_table():
    parser = argparse.ArgumentParser()
    show.register(parser.add_subparsers())
    actions = {
        action.dest: action for action in parser._subparsers._group_actions[0].choices["show"]._actions
    }
    for name in ("tau", "p", "rho", "summ"):
        row = model_arg(name)
        assert actions[name].default == row.default
        assert actions[name].help == f"{row.help} (default {row.default:g})"


def test_an_arg_of_another_method_is_named_with_its_method(tiny_checkpoint, no_weights):
    with pytest.raises(
        ModelArgError, match=r"^invalid model_args: p belongs to method=var, not method=scalingvis$"
    ):
        parse_settings({"method": "scalingvis", "alpha": 1.5, "p": 0.5})
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), alpha=0.5)
    assert str(error.value) == (
        "qwen2_5_vl_var: invalid model_args: alpha belongs to method=scalingvis or method=pai, not method=var"
    )
    with pytest.raises(ModelArgError, match=r"gamma belongs to method=pai, not method=adaptvis$"):
        parse_settings({"method": "adaptvis", "gamma": 1.1})
    settings = parse_settings({"method": "ScalingVis", "alpha": "0.5"})
    assert settings.method == "scalingvis" and settings["alpha"] == 0.5
    assert "p" not in settings.values and settings["var"] is True
    assert "alpha" not in parse_settings({}).values
    assert parse_settings({"method": "pai"})["alpha"] == 0.2  # PAI's own default


def test_scalingvis_needs_its_alpha_unless_var_is_off():
    with pytest.raises(ModelArgError) as error:
        parse_settings({"method": "scalingvis"})
    assert str(error.value) == (
        "invalid model_args: method=scalingvis: alpha is required: give alpha=N, e.g. one of the authors' "
        "grid 0.5, 0.8, 1.2, 1.5, 2.0"
    )
    assert parse_settings({"method": "scalingvis", "var": False})["alpha"] is None


def test_an_unknown_method_is_named():
    with pytest.raises(
        ModelArgError, match=r"method must be one of \['var', 'scalingvis', 'adaptvis', 'pai'\], got 'dola'"
    ):
        parse_settings({"method": "dola"})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"method": "scalingvis", "alpha": 0},
            "method=scalingvis: alpha must be a finite number > 0, got 0.0",
        ),
        ({"method": "adaptvis", "threshold": 1.5}, "method=adaptvis: threshold must be in [0, 1], got 1.5"),
        (
            {"method": "adaptvis", "alpha_low": "low"},
            "method=adaptvis: alpha_low must be a number, got 'low'",
        ),
        ({"method": "pai", "alpha": -0.1}, "method=pai: alpha must be a finite number >= 0, got -0.1"),
        ({"method": "pai", "gamma": "inf"}, "method=pai: gamma must be a finite number >= 0, got inf"),
        (
            {"method": "pai", "start_layer": -1},
            "method=pai: start_layer must be a layer index (an integer >= 0), got -1",
        ),
        (
            {"method": "pai", "end_layer": 2.5},
            "method=pai: end_layer must be a layer index (an integer >= 0), got 2.5",
        ),
    ],
)
def test_a_methods_bad_values_name_the_arg_and_the_method(given, message):
    with pytest.raises(ModelArgError) as error:
        parse_settings(given)
    assert str(error.value) == f"invalid model_args: {message}"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("p", 2, "p must be in [0, 1], got 2.0"),
        ("rho", "-0.5", "rho must be in [0, 1], got -0.5"),
        ("tau", "inf", "tau must be a finite number > 0, got inf"),
        ("attention_maps", -1, "attention_maps must be a positive integer, got -1"),
        ("dtype", "int4", "dtype must be one of ['auto', 'bf16', "),
    ],
)
def test_errors_name_the_model_arg(name, value, message):
    with pytest.raises(ModelArgError) as error:
        parse_settings({name: value})
    assert str(error.value).startswith(f"invalid model_args: {message}")
