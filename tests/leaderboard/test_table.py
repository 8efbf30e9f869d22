"""Building the table from hand-written results: names, baseline, columns, percent, best, deltas."""

import pytest

from lmms_var.leaderboard import build_leaderboard, load_run
from tests.leaderboard.results_files import doc_samples, write_run

VAR = "qwen2_5_vl_var"


def _runs(tmp_path, specs):
    """specs: (model, model_args, results[, extra write_run kwargs]) -> runs in that order."""
    runs = []
    for index, (model, model_args, results, *extra) in enumerate(specs):
        write_run(tmp_path / f"run{index}", model, model_args, results, **(extra[0] if extra else {}))
        runs.append(load_run(tmp_path / f"run{index}"))
    return runs


def test_names_show_model_var_args_and_args_that_differ(tmp_path):
    runs = _runs(
        tmp_path,
        [
            (
                VAR,
                "pretrained=/ckpt/a/Qwen-7B,var=true,p=0.6,rho=0.5,tau=20,device=cuda,diagnostics_path=/d.jsonl,"
                "attention_maps=2,attention_maps_path=/maps",
                {"t": {"acc": 0.5}},
            ),
            (VAR, "pretrained=/ckpt/a/Qwen-7B,var=false,p=0.6,device=cuda", {"t": {"acc": 0.5}}),
            (VAR, {"pretrained": "/ckpt/b/Qwen-3B", "p": 0.8, "device": "cuda"}, {"t": {"acc": 0.5}}),
            ("qwen2_5_vl", "pretrained=/ckpt/a/Qwen-7B,device=cuda", {"t": {"acc": 0.5}}),
        ],
    )
    assert build_leaderboard(runs).runs == [
        "qwen2_5_vl_var var=true p=0.6 rho=0.5 tau=20 pretrained=a/Qwen-7B",
        "qwen2_5_vl_var var=false pretrained=a/Qwen-7B",
        "qwen2_5_vl_var var=true p=0.8 pretrained=b/Qwen-3B",
        "qwen2_5_vl pretrained=a/Qwen-7B",
    ]


def test_identical_runs_are_told_apart_by_folder(tmp_path):
    runs = _runs(tmp_path, [(VAR, "p=0.6", {"t": {"acc": 0.5}}), (VAR, "p=0.6", {"t": {"acc": 0.6}})])
    assert build_leaderboard(runs).runs == [
        "qwen2_5_vl_var var=true p=0.6 [run0]",
        "qwen2_5_vl_var var=true p=0.6 [run1]",
    ]


def test_default_baseline_is_the_run_with_var_off_and_deltas_follow(tmp_path):
    runs = _runs(
        tmp_path,
        [
            (VAR, "var=true,p=0.4", {"t": {"acc": 0.55}}),
            (VAR, "var=false", {"t": {"acc": 0.5}}),
            (VAR, "var=true,p=0.8", {"t": {"acc": 0.45}}),
        ],
    )
    board = build_leaderboard(runs)
    assert board.baseline == 1
    assert [row[0].delta for row in board.cells] == [pytest.approx(5.0), None, pytest.approx(-5.0)]
    assert [row[0].best for row in board.cells] == [True, False, False]
    # Named explicitly, by run name or by folder.
    assert build_leaderboard(runs, baseline="qwen2_5_vl_var var=true p=0.8").baseline == 2
    assert build_leaderboard(runs, baseline=str(tmp_path / "run0")).baseline == 0
    with pytest.raises(ValueError, match=r"--baseline 'nope' names no single run .*var=false"):
        build_leaderboard(runs, baseline="nope")


def test_no_run_with_var_off_means_no_deltas(tmp_path):
    runs = _runs(tmp_path, [(VAR, "p=0.4", {"t": {"acc": 0.55}}), (VAR, "p=0.8", {"t": {"acc": 0.5}})])
    board = build_leaderboard(runs)
    assert board.baseline is None
    assert all(cell.delta is None for row in board.cells for cell in row)


def test_columns_cover_missing_tasks_and_put_groups_last(tmp_path):
    runs = _runs(
        tmp_path,
        [
            (
                VAR,
                "var=false",
                {"grp": {"acc": 0.5}, "a": {"acc": 0.4}, "b": {"acc": 0.6}},
                {"groups": ("grp",)},
            ),
            (VAR, "var=true", {"a": {"acc": 0.7}, "c": {"acc": 0.2}}),
        ],
    )
    board = build_leaderboard(runs)
    assert [column.task for column in board.columns] == ["a", "b", "c", "grp"]
    assert [[cell.value for cell in row] for row in board.cells] == [
        [pytest.approx(40.0), pytest.approx(60.0), None, pytest.approx(50.0)],
        [pytest.approx(70.0), None, pytest.approx(20.0), None],
    ]
    # Only one run has b, c or grp: nothing to compare, nothing marked best.
    assert [[cell.best for cell in row] for row in board.cells] == [[False] * 4, [True, False, False, False]]
    assert board.cells[1][2].delta is None


def test_metric_choice_percent_scale_and_lower_is_better(tmp_path):
    results = [
        {"qa": {"exact_match": 0.5, "f1": 0.75}, "ppl_task": {"perplexity": 12.5}},
        {"qa": {"exact_match": 0.25, "f1": 0.5}, "ppl_task": {"perplexity": 10.0}},
    ]
    lower = {"higher_is_better": {"ppl_task": {"perplexity": False}}}
    runs = _runs(tmp_path, [(VAR, "var=false", results[0], lower), (VAR, "var=true", results[1], lower)])
    board = build_leaderboard(runs)
    assert [(column.metric, column.percent) for column in board.columns] == [
        ("exact_match", True),
        ("perplexity", False),
    ]
    assert [row[1].value for row in board.cells] == [12.5, 10.0]
    assert [row[1].best for row in board.cells] == [False, True]
    # --metric applies where a task reports it; other tasks keep their primary metric.
    picked = build_leaderboard(runs, metric="f1")
    assert [column.metric for column in picked.columns] == ["f1", "perplexity"]
    assert [row[0].value for row in picked.cells] == [0.75, 0.5]  # f1 is not an accuracy: not in percent
    assert picked.cells[1][0].delta == pytest.approx(-0.25)


def test_significance_only_where_both_runs_logged_samples(tmp_path):
    samples = {"samples": {"a": doc_samples("acc", [0, 0, 1, 1])}}
    runs = _runs(
        tmp_path,
        [
            (VAR, "var=false", {"a": {"acc": 0.5}, "b": {"acc": 0.5}}, samples),
            (VAR, "var=true,p=0.4", {"a": {"acc": 0.75}, "b": {"acc": 0.5}}),
            (
                VAR,
                "var=true,p=0.8",
                {"a": {"acc": 1.0}},
                {"samples": {"a": doc_samples("acc", [1, 1, 1, 1])}},
            ),
        ],
    )
    board = build_leaderboard(runs)
    assert board.cells[1][0].significance is None
    assert board.cells[2][0].significance.p_value == pytest.approx(0.5)  # 2 discordant docs, both for the run
    assert board.cells[2][0].delta == pytest.approx(50.0)


def test_no_runs_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        build_leaderboard([])
