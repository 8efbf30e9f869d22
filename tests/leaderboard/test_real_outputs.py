"""The leaderboard on outputs that lmms-eval itself wrote (dummy model, toy group with two tasks)."""

import pytest
import yaml

from lmms_var.leaderboard import build_leaderboard, load_run, render
from lmms_var.leaderboard.significance import mcnemar_exact
from lmms_var.tasks import ENV_DATA_ROOT, ENV_SKIP_BAD_RECORDS, TASKS_PATH
from lmms_var.testing.demo import run_lmms_eval
from lmms_var.testing.spatial_data import write_spatial_root
from tests.leaderboard.conftest import LIMIT, LIMITED_RUN, TOY_ANSWERS

pytestmark = pytest.mark.slow


def _accuracy(letter: str, answers: str) -> float:
    return 100 * sum(answer == letter for answer in answers) / len(answers)


def test_real_outputs_give_one_row_per_run_and_task_then_group_columns(toy_runs):
    runs = [load_run(toy_runs["A"]), load_run(toy_runs["B"])]
    board = build_leaderboard(runs, baseline=str(toy_runs["A"]))

    assert board.runs == ["dummy response=A", "dummy response=B"]
    assert [(column.task, column.metric, column.is_group) for column in board.columns] == [
        ("lb_toy_a", "accuracy", False),
        ("lb_toy_b", "accuracy", False),
        ("lb_toy", "accuracy", True),
    ]
    for row, letter in enumerate("AB"):
        for col, answers in enumerate(TOY_ANSWERS.values()):
            assert board.cells[row][col].value == pytest.approx(_accuracy(letter, answers))
        # The group weights its tasks by size.
        pooled = "".join(TOY_ANSWERS.values())
        assert board.cells[row][2].value == pytest.approx(_accuracy(letter, pooled))


def test_real_samples_give_paired_mcnemar_per_task_but_not_per_group(toy_runs):
    board = build_leaderboard([load_run(toy_runs["A"]), load_run(toy_runs["B"])], baseline=str(toy_runs["A"]))
    for col, answers in enumerate(TOY_ANSWERS.values()):
        cell = board.cells[1][col]
        baseline = [float(answer == "A") for answer in answers]
        run = [float(answer == "B") for answer in answers]
        assert cell.delta == pytest.approx(_accuracy("B", answers) - _accuracy("A", answers))
        assert cell.significance is not None
        assert cell.significance.method == "mcnemar"
        assert cell.significance.docs == len(answers)
        assert cell.significance.p_value == pytest.approx(mcnemar_exact(baseline, run))
    assert board.cells[1][2].delta is not None
    assert board.cells[1][2].significance is None
    assert board.cells[0][0].significance is None  # the baseline row compares with nothing


def test_real_outputs_second_metric_and_markdown(toy_runs):
    board = build_leaderboard([load_run(toy_runs["B"]), load_run(toy_runs["A"])], metric="says_a")
    # Neither dummy run has VAR on, so the first run given is the default baseline.
    assert board.baseline == 0
    assert [column.metric for column in board.columns] == ["says_a", "says_a", "accuracy"]
    assert [cell.value for cell in board.cells[1][:2]] == [1.0, 1.0]
    text = render(board, "md")
    assert text.splitlines()[0] == "| run | lb_toy_a | lb_toy_b | lb_toy |"


def test_a_limited_run_of_a_task_logging_no_ids_is_marked_and_not_paired(toy_runs):
    """lmms-eval's own samples and n-samples of a `--limit 2` run against a full baseline, on a task
    whose samples log no record id (and lmms-eval 0.7.3 no doc): which docs the two runs share is not
    known, so there is no delta or p-value, and the note says why."""
    board = build_leaderboard(
        [load_run(toy_runs["A"]), load_run(toy_runs[LIMITED_RUN])], baseline=str(toy_runs["A"])
    )
    for col, answers in enumerate(TOY_ANSWERS.values()):
        cell = board.cells[1][col]
        assert cell.value == pytest.approx(_accuracy("B", answers[:LIMIT]))
        assert (cell.delta, cell.significance) == (None, None)
        assert (cell.docs.shared, cell.docs.baseline, cell.docs.run) == (None, len(answers), LIMIT)
        assert cell.other_docs and not cell.best
    group = board.cells[1][2]
    assert group.other_docs and group.delta is None
    text = render(board, "md")
    assert (
        "lb_toy_a, dummy response=B: 5 baseline / 2 run docs (the samples log no record id to pair docs "
        "by, and the doc counts differ: not paired, no delta)" in text
    )


def test_a_skipped_record_of_a_spatial_task_pairs_by_record_id(tmp_path):
    """The issue's case through lmms-eval itself: a baseline over 8 Counting docs and a run that skipped
    record Counting_0 (LMMS_VAR_SKIP_BAD_RECORDS=1), the dummy model answering B in both. Paired by
    the record id the task logs with every sample, the 7 shared docs score the same: delta 0."""
    root = write_spatial_root(
        tmp_path / "root", blink_subtasks=("Counting",), docs_per_subtask=8, sat2_docs=0
    )
    runs = {"full": ("response=B", "0"), "skipped": ("response=B", "1")}
    folders = {}
    for name, (model_args, skip) in runs.items():
        if skip == "1":
            (root / "spatial_reasoning/blink/images/Counting_0_1.png").write_bytes(b"corrupt")
        config = {
            "model": "dummy",
            "model_args": model_args,
            "tasks": "spatial_blink_counting",
            "include_path": str(TASKS_PATH),
            "output_path": f"runs/{name}",
            "log_samples": True,
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump([config]))
        env = {ENV_DATA_ROOT: str(root), ENV_SKIP_BAD_RECORDS: skip}
        [folders[name]] = run_lmms_eval(tmp_path / f"{name}.yaml", tmp_path, env=env)
    board = build_leaderboard(
        [load_run(folders["full"]), load_run(folders["skipped"])], baseline=str(folders["full"])
    )
    cell = board.cells[1][0]
    assert (cell.docs.shared, cell.docs.baseline, cell.docs.run) == (7, 8, 7)
    assert cell.delta == pytest.approx(0.0) and cell.significance.p_value == 1.0
    assert "7 shared / 8 baseline / 7 run docs; delta and p-value over the 7 shared docs" in render(
        board, "md"
    )
