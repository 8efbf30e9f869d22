"""Paired significance of a run against the baseline on one task, from lmms-eval's per-doc samples.

Both runs answered the same documents, so the test is paired by `doc_id`: exact McNemar when every
per-doc score is 0/1 (accuracy-like metrics), a paired bootstrap of the mean difference otherwise.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Keys under which tasks that log a dict per doc (e.g. BLINK's `blink_acc`) keep the doc's score.
SCORE_KEYS = ("is_correct", "correct", "score", "acc", "accuracy")
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class Significance:
    """Paired test of `run - baseline`; `low`/`high` bound the mean difference (bootstrap only)."""

    method: str  # "mcnemar" or "bootstrap"
    p_value: float
    docs: int
    low: float | None = None
    high: float | None = None


def _doc_score(value: object) -> float | None:
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, dict):
        return next((_doc_score(value[key]) for key in SCORE_KEYS if key in value), None)
    return None


def read_doc_scores(samples: Path, metric: str) -> dict[int, float] | None:
    """doc_id -> per-doc score of `metric`; None when the file cannot pair docs unambiguously.

    That is when a line lacks a numeric score for `metric`, or a doc appears twice (several
    filters or repeats in one file): no test is better than a wrong one.
    """
    scores: dict[int, float] = {}
    with samples.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            sample = json.loads(line)
            score = _doc_score(sample.get(metric))
            if score is None or sample.get("doc_id") in scores:
                return None
            scores[sample["doc_id"]] = score
    return scores


def mcnemar_exact(baseline: list[float], run: list[float]) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the docs where exactly one run is right."""
    only_baseline = sum(1 for b, r in zip(baseline, run, strict=True) if b and not r)
    only_run = sum(1 for b, r in zip(baseline, run, strict=True) if r and not b)
    discordant = only_baseline + only_run
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_baseline, only_run) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def paired_bootstrap(baseline: list[float], run: list[float], seed: int = 0) -> Significance:
    """95% interval of the mean paired difference and a two-sided p-value (share of resamples across 0)."""
    differences = np.asarray(run, dtype=float) - np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(BOOTSTRAP_RESAMPLES, len(differences)))
    means = differences[picks].mean(axis=1)
    p_value = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    low, high = np.percentile(means, [2.5, 97.5])
    return Significance("bootstrap", p_value, len(differences), float(low), float(high))


def paired_test(baseline_samples: Path, run_samples: Path, metric: str) -> Significance | None:
    """Test `metric` on the docs both sample files share; None when the samples cannot be paired."""
    baseline_scores = read_doc_scores(baseline_samples, metric)
    run_scores = read_doc_scores(run_samples, metric)
    if baseline_scores is None or run_scores is None:
        return None
    shared = sorted(baseline_scores.keys() & run_scores.keys())
    if not shared:
        return None
    baseline = [baseline_scores[doc] for doc in shared]
    run = [run_scores[doc] for doc in shared]
    if all(score in (0.0, 1.0) for score in baseline + run):
        return Significance("mcnemar", mcnemar_exact(baseline, run), len(shared))
    return paired_bootstrap(baseline, run)
