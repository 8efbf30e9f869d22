"""Paired significance from per-doc samples: McNemar for 0/1 scores, bootstrap otherwise."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest

from lmms_var.leaderboard.significance import (
    PairedScores,
    SamplesError,
    Unpaired,
    bootstrap_interval,
    mcnemar_exact,
    pair_samples,
    paired_bootstrap,
    paired_test,
    read_doc_scores,
)
from tests.leaderboard.results_files import doc_samples


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_mcnemar_matches_a_binomial_test_on_discordant_docs(pairs):
    baseline = [float(b) for b, _ in pairs]
    run = [float(r) for _, r in pairs]
    only_baseline = sum(1 for b, r in pairs if b and not r)
    discordant = sum(1 for b, r in pairs if b != r)
    expected = binomtest(only_baseline, discordant, 0.5).pvalue if discordant else 1.0
    assert mcnemar_exact(baseline, run) == pytest.approx(expected)


def test_mcnemar_separates_a_clear_win_from_a_coin_flip():
    assert mcnemar_exact([0.0] * 12, [1.0] * 12) == pytest.approx(2 / 2**12)
    assert mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0


def test_bootstrap_interval_brackets_a_shift_and_flags_it():
    baseline = [0.1 * (i % 7) for i in range(60)]
    shifted = paired_bootstrap(baseline, [value + 0.3 for value in baseline])
    assert shifted.method == "bootstrap"
    assert shifted.low == pytest.approx(0.3) and shifted.high == pytest.approx(0.3)
    assert shifted.p_value == 0.0
    noisy = paired_bootstrap(baseline, [value + (0.2 if i % 2 else -0.2) for i, value in enumerate(baseline)])
    assert noisy.low < 0 < noisy.high
    assert noisy.p_value > 0.5


def test_doc_scores_read_numbers_bools_and_blink_style_dicts(tmp_path):
    lines = [
        {"doc_id": 0, "acc": True},
        {"doc_id": 1, "acc": 0},
        {"doc_id": 2, "acc": {"id": 2, "pred": "A", "is_correct": False}},
        {"doc_id": 3, "acc": {"score": 0.5}},
    ]
    scores = read_doc_scores(_write(tmp_path / "s.jsonl", lines), "acc")
    assert [score for _target, score in scores.in_order] == [1.0, 0.0, 0.0, 0.5]
    assert scores.identified is None  # only one line logs a record id


@pytest.mark.parametrize(
    "lines",
    [
        [{"doc_id": 0, "acc": 1}, {"doc_id": 0, "acc": 0}],  # a doc twice: several filters or repeats
        [{"doc_id": 0, "acc": "A"}],  # no numeric score
        [{"doc_id": 0, "other": 1}],  # metric not logged
    ],
)
def test_samples_that_cannot_be_paired_give_no_test(tmp_path, lines):
    path = _write(tmp_path / "s.jsonl", lines)
    assert read_doc_scores(path, "acc") is None
    assert pair_samples(path, path, "acc") is None


def test_paired_test_uses_only_shared_docs(tmp_path):
    baseline = _write(tmp_path / "b.jsonl", doc_samples("acc", [0, 0, 0, 1, 1]))
    run = _write(tmp_path / "r.jsonl", doc_samples("acc", [1, 1, 1]))
    paired = pair_samples(baseline, run, "acc")
    assert (paired.shared, paired.baseline_docs, paired.run_docs) == (3, 5, 3)
    assert paired.mean_difference() == pytest.approx(1.0)
    result = paired_test(paired)
    assert (result.method, result.docs) == ("mcnemar", 3)
    assert result.p_value == pytest.approx(mcnemar_exact([0, 0, 0], [1, 1, 1]))
    graded = _write(tmp_path / "g.jsonl", doc_samples("acc", [0.5, 1, 0]))
    assert paired_test(pair_samples(baseline, graded, "acc")).method == "bootstrap"


def test_docs_pair_by_their_record_ids_not_by_position(tmp_path):
    """A run that skipped record r1 logs r2 as doc_id 1: pairing by position would compare r1 with r2."""
    baseline = _write(tmp_path / "b.jsonl", doc_samples("acc", [1, 0, 1], ids=["r0", "r1", "r2"]))
    run = _write(tmp_path / "r.jsonl", doc_samples("acc", [1, 1], ids=["r0", "r2"]))
    paired = pair_samples(baseline, run, "acc")
    assert (paired.baseline, paired.run) == ([1.0, 1.0], [1.0, 1.0])
    assert (paired.shared, paired.baseline_docs, paired.run_docs) == (2, 3, 2)


def test_docs_pair_by_their_logged_fields_where_lmms_eval_keeps_them(tmp_path):
    """lmms-eval versions that keep `doc` in the samples: its fields identify it."""

    def lines(docs, scores):
        return [
            {"doc_id": n, "doc": {"question": doc}, "acc": score}
            for n, (doc, score) in enumerate(zip(docs, scores, strict=True))
        ]

    baseline = _write(tmp_path / "b.jsonl", lines(["q0", "q1", "q2"], [1, 0, 0]))
    run = _write(tmp_path / "r.jsonl", lines(["q0", "q2"], [1, 1]))
    paired = pair_samples(baseline, run, "acc")
    assert (paired.baseline, paired.run) == ([1.0, 0.0], [1.0, 1.0])


def test_without_record_ids_only_the_same_docs_in_order_pair_by_position(tmp_path):
    """lmms-eval 0.7.3 logs no doc and the same doc_hash for every doc: without a record id the files
    pair by position only where they hold as many docs with the same targets; otherwise no guess."""
    baseline = _write(tmp_path / "b.jsonl", doc_samples("acc", [1, 0, 1], record_ids=False))
    same = _write(tmp_path / "same.jsonl", doc_samples("acc", [1, 1, 0], record_ids=False))
    paired = pair_samples(baseline, same, "acc")
    assert (paired.baseline, paired.run) == ([1.0, 0.0, 1.0], [1.0, 1.0, 0.0])
    fewer = _write(tmp_path / "fewer.jsonl", doc_samples("acc", [0, 1], record_ids=False))
    assert pair_samples(baseline, fewer, "acc") == Unpaired(
        3, 2, "the samples log no record id to pair docs by, and the doc counts differ"
    )
    shifted = doc_samples("acc", [1, 0, 1], record_ids=False)
    shifted[1]["target"] = "B"
    other = _write(tmp_path / "other.jsonl", shifted)
    assert pair_samples(baseline, other, "acc").reason.endswith("and their targets differ")
    # One file with ids and one without: nothing to pair the sets by either.
    with_ids = _write(tmp_path / "ids.jsonl", doc_samples("acc", [0, 1]))
    assert isinstance(pair_samples(baseline, with_ids, "acc"), Unpaired)


def test_identical_docs_pair_in_order(tmp_path):
    baseline = _write(tmp_path / "b.jsonl", doc_samples("acc", [1, 0], ids=["same", "same"]))
    run = _write(tmp_path / "r.jsonl", doc_samples("acc", [0, 1], ids=["same", "same"]))
    paired = pair_samples(baseline, run, "acc")
    assert (paired.baseline, paired.run) == ([1.0, 0.0], [0.0, 1.0])


def test_a_truncated_samples_file_is_named(tmp_path):
    path = _write(tmp_path / "s.jsonl", doc_samples("acc", [1, 0]))
    path.write_text(path.read_text()[:-10])
    with pytest.raises(SamplesError, match=rf"{path}:2: not a JSON line, the file may be truncated"):
        read_doc_scores(path, "acc")


def test_mcnemar_results_carry_the_bootstrap_interval_of_the_mean_difference():
    baseline = [0.0] * 10 + [1.0] * 10
    run = [1.0] * 16 + [0.0] * 4  # +6 docs of 20 (10 won, 4 lost): a mean difference of 0.3
    result = paired_test(PairedScores(baseline, run, 20, 20))
    assert result.method == "mcnemar"
    assert result.p_value == pytest.approx(mcnemar_exact(baseline, run))
    assert result.low < 0.3 < result.high
    assert (result.low, result.high) == bootstrap_interval(baseline, run)[1:]
