"""The sweep configs under configs/: lmms-eval's --config format, the grid the README promises, and they run."""

from pathlib import Path

import pytest
import yaml

from lmms_var.leaderboard import build_leaderboard, load_run, model_args_as_text
from lmms_var.model_args import parse_settings
from lmms_var.tasks import TASKS_PATH
from lmms_var.testing.demo import run_lmms_eval
from lmms_var.testing.spatial_data import write_spatial_root

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SWEEPS = {"sweep_spatial_blink.yaml": "spatial_blink", "sweep_blink.yaml": "blink"}
GRID = {(p, rho) for p in ("0.4", "0.6", "0.8") for rho in ("0.5", "0.8")}
METHODS_SWEEP = "sweep_methods_spatial.yaml"
# The authors' ScalingVis grid, AdaptVis example run and PAI settings (INTERVENTIONS_SPEC.md).
SCALINGVIS_GRID = [0.5, 0.8, 1.2, 1.5, 2.0]
ADAPTVIS = {"alpha_low": 0.5, "alpha_high": 1.5, "threshold": 0.4}
PAI = {"alpha": 0.2, "gamma": 1.1}


def _lmms_eval_arg_names(monkeypatch) -> set[str]:
    from lmms_eval.__main__ import parse_eval_args

    monkeypatch.setattr("sys.argv", ["lmms-eval"])
    parser, _ = parse_eval_args()
    return {action.dest for action in parser._actions}


@pytest.mark.parametrize(("name", "task"), SWEEPS.items())
def test_sweep_is_a_baseline_then_the_p_rho_grid(name, task, monkeypatch):
    runs = yaml.safe_load((CONFIGS / name).read_text())
    assert all(set(run) <= _lmms_eval_arg_names(monkeypatch) for run in runs)
    args = [model_args_as_text(run["model_args"]) for run in runs]
    assert args[0]["var"] == "false"
    assert {(a["p"], a["rho"]) for a in args[1:]} == GRID and len(args) == 1 + len(GRID)
    assert all(a["var"] == "true" for a in args[1:])
    assert {run["model"] for run in runs} == {"qwen2_5_vl_var"}
    assert {run["tasks"] for run in runs} == {task}
    assert all(run["log_samples"] for run in runs)
    assert len({run["output_path"] for run in runs}) == len(runs)


def test_methods_sweep_is_a_baseline_then_each_method_on_the_spatial_tasks(monkeypatch):
    runs = yaml.safe_load((CONFIGS / METHODS_SWEEP).read_text())
    assert all(set(run) <= _lmms_eval_arg_names(monkeypatch) for run in runs)
    assert {run["model"] for run in runs} == {"qwen2_5_vl_var"}
    assert {run["tasks"] for run in runs} == {"spatial_blink,spatial_sat2"}
    assert all(run["log_samples"] for run in runs)
    assert len({run["output_path"] for run in runs}) == len(runs)
    args = [model_args_as_text(run["model_args"]) for run in runs]
    assert {a.pop("pretrained") for a in args} == {"Qwen/Qwen2.5-VL-7B-Instruct"}
    assert args[0] == {"var": "false"}
    assert [a.get("method") for a in args[1:]] == ["var", *["scalingvis"] * 5, "adaptvis", "pai"]
    assert args[1] == {"method": "var"}  # VAR at its defaults
    assert [float(a["alpha"]) for a in args[2:7]] == SCALINGVIS_GRID and all(len(a) == 2 for a in args[2:7])
    assert {k: float(v) for k, v in args[7].items() if k != "method"} == ADAPTVIS
    assert {k: float(v) for k, v in args[8].items() if k != "method"} == PAI


def test_methods_sweep_model_args_parse_with_the_table():
    """Each run's model args as the models parse them: the method known, every arg its method's, the
    values the authors'. Needs the methods' rows in `lmms_var.model_args` (the `method=` model arg of
    issue 23): until they are there this fails on `method must be one of ['var']`."""
    runs = yaml.safe_load((CONFIGS / METHODS_SWEEP).read_text())
    settings = [parse_settings(model_args_as_text(run["model_args"])) for run in runs]
    assert [s.method for s in settings] == ["var", "var", *["scalingvis"] * 5, "adaptvis", "pai"]
    assert settings[0]["var"] is False and all(s["var"] is True for s in settings[1:])
    assert [s["alpha"] for s in settings[2:7]] == SCALINGVIS_GRID
    assert {name: settings[7][name] for name in ADAPTVIS} == ADAPTVIS
    assert {name: settings[8][name] for name in PAI} == PAI


def test_paper_check_runs_both_readings_of_the_papers_p(monkeypatch):
    """Our p is the complement of the paper's (seilk/VisAttnSink issue 5), so the paper's p = 0.6 is run
    both ways; rho = 0.5 is its own complement; the other settings are the paper's."""
    runs = yaml.safe_load((CONFIGS / "paper_check_llava15.yaml").read_text())
    assert all(set(run) <= _lmms_eval_arg_names(monkeypatch) for run in runs)
    args = [model_args_as_text(run["model_args"]) for run in runs]
    assert {a["pretrained"] for a in args} == {"llava-hf/llava-1.5-7b-hf"}
    assert args[0]["var"] == "false"
    assert [a["p"] for a in args[1:]] == ["0.6", "0.4"]
    assert all((a["var"], a["rho"], a["summ"], a["tau"]) == ("true", "0.5", "0.2", "20") for a in args[1:])
    assert {run["model"] for run in runs} == {"llava_hf_var"}
    assert all(run["log_samples"] for run in runs)
    assert len({run["output_path"] for run in runs}) == len(runs)


@pytest.mark.slow
def test_spatial_sweep_items_run_in_lmms_eval_and_tabulate(tmp_path):
    """The baseline and the last grid item as written (lmms-eval reads the file with the same yaml.safe_load),
    with command-line overrides as the README shows: a dummy model, one task, one doc. Each lmms-eval run
    costs about ten seconds of task indexing, so the whole grid would be slow for what it adds."""
    runs = yaml.safe_load((CONFIGS / "sweep_spatial_blink.yaml").read_text())
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump([runs[0], runs[-1]]))
    root = write_spatial_root(tmp_path / "data", docs_per_subtask=1, sat2_docs=0)
    overrides = ("--model", "dummy", "--tasks", "spatial_blink_counting", "--limit", "1")
    overrides += ("--include_path", str(TASKS_PATH))  # the configs' relative path needs the repository as cwd
    folders = run_lmms_eval(
        tmp_path / "sweep.yaml", tmp_path, *overrides, env={"LMMS_VAR_DATA_ROOT": str(root)}
    )
    assert folders == [
        tmp_path / "results/spatial_blink/baseline",
        tmp_path / "results/spatial_blink/var_p0.8_rho0.8",
    ]
    board = build_leaderboard([load_run(folder) for folder in folders])
    assert board.runs == ["dummy var=false", "dummy var=true p=0.8 rho=0.8"]
    assert [column.task for column in board.columns] == ["spatial_blink_counting"]
    assert board.cells[1][0].significance is not None  # the samples were logged and paired
