"""The leaderboard on outputs that lmms-eval itself wrote (dummy model, toy group with two tasks)."""

import pytest

from lmms_var.leaderboard import build_leaderboard, load_run, render
from lmms_var.leaderboard.significance import mcnemar_exact
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


def test_a_limited_run_compares_on_shared_docs_and_is_marked(toy_runs):
    """lmms-eval's own samples and n-samples of a `--limit 2` run against a full baseline."""
    board = build_leaderboard(
        [load_run(toy_runs["A"]), load_run(toy_runs[LIMITED_RUN])], baseline=str(toy_runs["A"])
    )
    for col, answers in enumerate(TOY_ANSWERS.values()):
        cell = board.cells[1][col]
        shared = answers[:LIMIT]
        assert cell.value == pytest.approx(_accuracy("B", shared))
        assert cell.delta == pytest.approx(_accuracy("B", shared) - _accuracy("A", shared))
        assert (cell.docs.shared, cell.docs.baseline, cell.docs.run) == (LIMIT, len(answers), LIMIT)
        assert cell.significance.docs == LIMIT and cell.other_docs and not cell.best
    group = board.cells[1][2]
    assert group.other_docs and group.delta is None
    text = render(board, "md")
    assert "lb_toy_a, dummy response=B: 2 shared / 5 baseline / 2 run docs" in text
    assert "lb_toy (group), dummy response=B: 4 shared / 9 baseline / 4 run docs in its tasks" in text
