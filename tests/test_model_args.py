"""The table of model args is the one source: the models, the journal's key, run labels and `show` read it.

A second method is planted by `second_method` (one row and one name, as the next issue adds them), so the
rules for a method's args are checked before a second method exists.
"""

import argparse
from dataclasses import MISSING, fields

import pytest

from lmms_var import model_args
from lmms_var.config import VARConfig
from lmms_var.leaderboard import load_run
from lmms_var.leaderboard.table import run_names
from lmms_var.model_args import (
    MODEL_ARGS,
    NOT_OUTPUT_ARGS,
    Label,
    ModelArg,
    ModelArgError,
    label_args,
    model_arg,
    parse_float,
    parse_settings,
)
from lmms_var.models.classes import Qwen2_5_VL_VAR_Chat
from lmms_var.models.journal import journal_settings
from lmms_var.models.var_model import VAR_MODEL_ARGS
from lmms_var.tools import show
from tests.conftest import modules_after
from tests.leaderboard.results_files import write_run

HEAVY = ("torch", "transformers", "lmms_eval", "accelerate")


@pytest.fixture
def second_method(monkeypatch) -> ModelArg:
    """`method=scalingvis` with one arg of its own, `alpha`, listed in run labels."""
    row = ModelArg("alpha", 1.0, parse_float, "attention scale", method="scalingvis", label=Label.LISTED)
    monkeypatch.setattr(model_args, "METHODS", (*model_args.METHODS, "scalingvis"))
    monkeypatch.setattr(model_args, "MODEL_ARGS", (*MODEL_ARGS, row))
    return row


def test_the_table_imports_nothing_heavy():
    loaded = modules_after("import lmms_var.model_args")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_one_row_per_arg_with_a_known_method_and_a_parsable_default():
    names = [row.name for row in MODEL_ARGS]
    assert len(names) == len(set(names))
    for row in MODEL_ARGS:
        assert row.method in (None, *model_args.METHODS), row.name
        assert row.parsed(row.default) == row.parsed(row.parsed(row.default)), (
            row.name
        )  # parsers are idempotent
    assert model_arg("method").default == model_args.METHODS[0] == "var"


def test_var_rows_are_var_configs_fields_with_its_defaults():
    rows = {row.name: row.default for row in MODEL_ARGS if row.method == "var"}
    config = {field.name: field.default for field in fields(VARConfig)}
    assert rows.keys() == config.keys()
    assert {name: rows[name] for name, default in config.items() if default is not MISSING} == {
        name: default for name, default in config.items() if default is not MISSING
    }


def test_the_model_takes_exactly_the_tables_args(tiny_checkpoint, no_weights):
    """Every row given at its default gets as far as loading the weights (refused by `no_weights`)."""
    assert tuple(row.name for row in MODEL_ARGS) == VAR_MODEL_ARGS
    given = {row.name: row.default for row in MODEL_ARGS}
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
        {**settings.values, "max_pixels": 12544}, model=tiny_model[0], var_config=None, model_class="X"
    )
    assert key["model_args"] == {
        **{row.name: settings[row.name] for row in MODEL_ARGS if row.changes_answers},
        "max_pixels": 12544,
    }
    assert key["model_args"]["p"] == 0.3  # parsed: p=0.3 and p="0.3" share a key


def test_run_labels_list_the_label_rows_of_the_runs_method(tmp_path, second_method):
    listed = [name for name in label_args("var") if name != "var"]
    assert listed == ["method", "p", "rho", "tau", "summ", "sink_dims", "except_last_layer"]
    var_args = "p=0.5,rho=0.4,tau=5,summ=0.1,sink_dims=1;2,except_last_layer=false"
    specs = [
        f"{var_args},diagnostics=true,journal=off,device=cuda",  # NEVER rows differ: never shown
        "var=false,p=0.5,device=cpu",  # VAR off: its args change nothing
        "method=scalingvis,alpha=0.5,device=cpu",
    ]
    runs = []
    for index, args in enumerate(specs):
        write_run(tmp_path / f"run{index}", "qwen2_5_vl_var", args, {"t": {"acc": 0.5}})
        runs.append(load_run(tmp_path / f"run{index}"))
    assert run_names(runs) == [
        "qwen2_5_vl_var var=true p=0.5 rho=0.4 tau=5 summ=0.1 sink_dims=1;2 except_last_layer=false device=cuda",
        "qwen2_5_vl_var var=false device=cpu",
        "qwen2_5_vl_var var=true method=scalingvis alpha=0.5 device=cpu",
    ]


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


def test_an_arg_of_another_method_is_named_with_its_method(second_method, tiny_checkpoint, no_weights):
    with pytest.raises(
        ModelArgError, match=r"^invalid model_args: p belongs to method=var, not method=scalingvis$"
    ):
        parse_settings({"method": "scalingvis", "p": 0.5})
    with pytest.raises(ModelArgError) as error:
        Qwen2_5_VL_VAR_Chat(pretrained=str(tiny_checkpoint), alpha=0.5)
    assert str(error.value) == (
        "qwen2_5_vl_var: invalid model_args: alpha belongs to method=scalingvis, not method=var"
    )
    settings = parse_settings({"method": "ScalingVis", "alpha": "0.5"})
    assert settings.method == "scalingvis" and settings["alpha"] == 0.5
    assert "p" not in settings.values and settings["var"] is True
    assert "alpha" not in parse_settings({}).values


def test_an_unknown_method_is_named():
    with pytest.raises(ModelArgError, match=r"method must be one of \['var'\], got 'pai'"):
        parse_settings({"method": "pai"})


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
