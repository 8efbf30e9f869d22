"""Building the table from hand-written results: names, baseline, columns, percent, best, deltas."""

import math

import pytest

from lmms_var.leaderboard import build_leaderboard, load_run, render
from lmms_var.leaderboard.significance import mcnemar_exact
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


def test_runs_over_other_docs_compare_on_shared_docs_and_are_marked(tmp_path):
    """A --limit 3 VAR run against an 8-doc baseline: delta and McNemar over the 3 shared docs only."""
    base_scores, run_scores = [1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 1]
    runs = _runs(
        tmp_path,
        [
            (VAR, "var=false", {"t": {"acc": 0.125}}, {"samples": {"t": doc_samples("acc", base_scores)}}),
            (VAR, "var=true", {"t": {"acc": 2 / 3}}, {"samples": {"t": doc_samples("acc", run_scores)}}),
        ],
    )
    board = build_leaderboard(runs)
    cell = board.cells[1][0]
    assert cell.value == pytest.approx(200 / 3)
    assert cell.delta == pytest.approx(100 * (2 / 3 - 1 / 3))  # not 66.67 - 12.50
    assert cell.significance.docs == 3
    assert cell.significance.p_value == pytest.approx(mcnemar_exact([1, 0, 0], [1, 0, 1]))
    assert (cell.docs.shared, cell.docs.baseline, cell.docs.run, cell.other_docs) == (3, 8, 3, True)
    assert not cell.best and not board.cells[0][0].best  # values over different docs: no best
    assert board.notes == [
        "† doc set differs from the baseline's: t, qwen2_5_vl_var var=true: 3 shared / 8 baseline / 3 run docs; "
        "delta and p-value over the 3 shared docs."
    ]


def test_a_skipped_record_shifts_no_pairing(tmp_path):
    """The VAR run skipped record r1, so its doc_id 1 is r2: docs pair by record, not by position."""
    runs = _runs(
        tmp_path,
        [
            (
                VAR,
                "var=false",
                {"t": {"acc": 1 / 3}},
                {"samples": {"t": doc_samples("acc", [0, 1, 0], ["r0", "r1", "r2"])}},
            ),
            (
                VAR,
                "var=true",
                {"t": {"acc": 0.0}},
                {"samples": {"t": doc_samples("acc", [0, 0], ["r0", "r2"])}},
            ),
        ],
    )
    cell = build_leaderboard(runs).cells[1][0]
    assert cell.delta == pytest.approx(0.0)  # r0 and r2: wrong in both runs
    assert cell.significance.p_value == 1.0
    assert (cell.docs.shared, cell.docs.baseline, cell.docs.run) == (2, 3, 2)


def test_samples_without_record_ids_are_not_paired_when_the_doc_sets_differ(tmp_path):
    """The issue's case: a run that skipped record r0, its samples logging no id: pairing by position
    would compare r1 with r0 and print a made-up delta, so the cell has none and the note says why."""
    runs = _runs(
        tmp_path,
        [
            (
                VAR,
                "var=false",
                {"t": {"acc": 0.5}},
                {"samples": {"t": doc_samples("acc", [0, 1], record_ids=False)}},
            ),
            (
                VAR,
                "var=true",
                {"t": {"acc": 1.0}},
                {"samples": {"t": doc_samples("acc", [1], record_ids=False)}},
            ),
        ],
    )
    board = build_leaderboard(runs)
    cell = board.cells[1][0]
    assert (cell.delta, cell.significance, cell.other_docs, cell.best) == (None, None, True, False)
    assert board.notes == [
        "† doc set differs from the baseline's: t, qwen2_5_vl_var var=true: 2 baseline / 1 run docs "
        "(the samples log no record id to pair docs by, and the doc counts differ: not paired, no delta)."
    ]


def test_without_samples_the_doc_counts_are_compared(tmp_path):
    runs = _runs(
        tmp_path,
        [
            (VAR, "var=false", {"a": {"acc": 0.5}, "b": {"acc": 0.5}}, {"n_samples": {"a": 8, "b": 8}}),
            (VAR, "var=true", {"a": {"acc": 0.75}, "b": {"acc": 0.75}}, {"n_samples": {"a": 3, "b": 8}}),
        ],
    )
    board = build_leaderboard(runs)
    a, b = board.cells[1]
    assert (a.delta, a.other_docs, a.best) == (None, True, False)
    assert (b.delta, b.other_docs, b.best) == (pytest.approx(25.0), False, True)
    assert board.notes == [
        "† doc set differs from the baseline's: a, qwen2_5_vl_var var=true: 8 baseline / 3 run docs "
        "(no samples to pair them by: not paired, no delta)."
    ]


def test_a_group_with_a_task_over_other_docs_is_marked_without_delta(tmp_path):
    samples = {"a": doc_samples("acc", [1, 0]), "b": doc_samples("acc", [1, 1])}
    fewer = {"a": doc_samples("acc", [1]), "b": doc_samples("acc", [1, 1])}
    runs = _runs(
        tmp_path,
        [
            (
                VAR,
                "var=false",
                {"a": {"acc": 0.5}, "b": {"acc": 1.0}, "g": {"acc": 0.75}},
                {"groups": ("g",), "samples": samples},
            ),
            (
                VAR,
                "var=true",
                {"a": {"acc": 1.0}, "b": {"acc": 1.0}, "g": {"acc": 1.0}},
                {"groups": ("g",), "samples": fewer},
            ),
        ],
    )
    board = build_leaderboard(runs)
    assert [column.task for column in board.columns] == ["a", "b", "g"]
    a, b, group = board.cells[1]
    assert a.other_docs and not b.other_docs and group.other_docs
    assert group.delta is None and (group.docs.shared, group.docs.baseline, group.docs.run) == (3, 4, 3)
    assert (
        "g (group), qwen2_5_vl_var var=true: 3 shared / 4 baseline / 3 run docs in its tasks"
        in board.notes[0]
    )


def test_an_unknown_metric_is_an_error_naming_the_metrics_there(tmp_path):
    runs = _runs(tmp_path, [(VAR, "var=false", {"qa": {"exact_match": 0.5, "f1": 0.7}, "t": {"acc": 0.5}})])
    with pytest.raises(
        ValueError, match=r"metric 'nosuchmetric': no task reports it; the runs report acc, exact_match, f1"
    ):
        build_leaderboard(runs, metric="nosuchmetric")
    board = build_leaderboard(runs, metric="f1")
    assert [column.metric for column in board.columns] == ["f1", "acc"]
    assert board.notes == ["metric f1 is not reported by t (shows acc)."]


def test_nan_is_shown_as_missing_a_number_never_best(tmp_path):
    runs = _runs(
        tmp_path,
        [
            (VAR, "var=false", {"t": {"acc": 0.5}}),
            (VAR, "var=true,p=0.4", {"t": {"acc": float("nan")}}),
            (VAR, "var=true,p=0.8", {"t": {"acc": 0.25}}),
        ],
    )
    board = build_leaderboard(runs)
    assert board.columns[0].percent
    nan_cell = board.cells[1][0]
    assert math.isnan(nan_cell.value) and nan_cell.delta is None and not nan_cell.best
    assert [row[0].best for row in board.cells] == [True, False, False]
    assert board.notes == ["NaN: lmms-eval wrote no number for t (qwen2_5_vl_var var=true p=0.4)."]
    text = render(board, "md")
    assert "| qwen2_5_vl_var var=true p=0.4 | NaN |" in text and "**50.00**" in text


def test_best_is_the_best_over_the_baselines_docs(tmp_path):
    runs = _runs(
        tmp_path,
        [
            (VAR, "var=false", {"t": {"acc": 0.5}}, {"n_samples": {"t": 8}}),
            (VAR, "var=true,p=0.4", {"t": {"acc": 0.6}}, {"n_samples": {"t": 8}}),
            (VAR, "var=true,p=0.8", {"t": {"acc": 0.9}}, {"n_samples": {"t": 3}}),
        ],
    )
    assert [row[0].best for row in build_leaderboard(runs).cells] == [False, True, False]
    # Without a baseline no cell is compared, so none is best when the doc counts differ.
    runs = [runs[1], runs[2]]
    assert [row[0].best for row in build_leaderboard(runs).cells] == [False, False]


def test_a_run_given_twice_is_refused_not_compared_with_itself(tmp_path):
    runs = _runs(tmp_path, [(VAR, "var=false", {"t": {"acc": 0.5}}), (VAR, "var=true", {"t": {"acc": 0.6}})])
    with pytest.raises(ValueError, match=r"RUN_DIR .*run1 is given twice: it would be compared with itself"):
        build_leaderboard([*runs, load_run(tmp_path / "run1")])
    [results_file] = (tmp_path / "run1").glob("*_results.json")
    with pytest.raises(
        ValueError, match=rf"RUN_DIR .*run1 and {results_file} hold the same run \({results_file.name}\)"
    ):
        build_leaderboard([*runs, load_run(results_file)])
