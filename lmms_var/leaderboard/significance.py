"""Paired comparison of a run against the baseline on one task, from lmms-eval's per-doc samples.

Docs are paired by what identifies them, never by a guess. lmms-eval 0.7.3 drops `doc` from samples
files and writes the same `doc_hash` (of "null") for every doc; its `doc_id` is the doc's index in
the evaluated list, which shifts when a record is skipped. What identifies a doc, in order:
- the record id the task logs with each doc's score (`{"id": ..., "is_correct": ...}`): lmms-eval's
  BLINK scoring, which the spatial tasks use, logs each record's own id there;
- the doc as the samples file logs it (other lmms-eval versions keep its text fields, record id included).
Without either, docs are paired by position only when both files hold as many docs with the same
targets in the same order; otherwise the sets may differ in ways no file tells, and they are not paired.
The test is exact McNemar when every per-doc score is 0/1 (accuracy-like metrics), a paired
bootstrap of the mean difference otherwise.
"""

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Keys under which tasks that log a dict per doc (e.g. BLINK's `blink_acc`) keep the doc's score.
SCORE_KEYS = ("is_correct", "correct", "score", "acc", "accuracy")
# Where a task logs each doc's own record id: in the doc's score (lmms-eval's BLINK scoring logs
# `{"id": doc["idx"], ..., "is_correct": ...}`, and the spatial tasks' docs carry the record's id as `idx`).
RECORD_ID_KEY = "id"
BOOTSTRAP_RESAMPLES = 10_000


class SamplesError(ValueError):
    """A samples file cannot be read (e.g. truncated); the message names the file and line."""


@dataclass(frozen=True)
class Significance:
    """Paired test of `run - baseline`; `low`/`high`: the paired bootstrap's 95% interval of the mean
    difference, in the scores' units (None where not computed)."""

    method: str  # "mcnemar" or "bootstrap"
    p_value: float
    docs: int
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class PairedScores:
    """Per-doc scores of the docs both runs evaluated, in the same order, and each run's doc count."""

    baseline: list[float]
    run: list[float]
    baseline_docs: int
    run_docs: int

    @property
    def shared(self) -> int:
        return len(self.baseline)

    def mean_difference(self) -> float | None:
        """Mean of `run - baseline` over the shared docs; None when they share none."""
        return float(np.mean(self.run) - np.mean(self.baseline)) if self.shared else None


@dataclass(frozen=True)
class Unpaired:
    """Two sample files whose docs cannot be paired without guessing: each one's doc count, and why."""

    baseline_docs: int
    run_docs: int
    reason: str


@dataclass(frozen=True)
class DocScores:
    """One samples file's per-doc scores: by identity where every doc has one, and in file order."""

    identified: (
        dict[tuple[str, int], float] | None
    )  # (identity, occurrence) -> score; None: some doc has none
    in_order: list[tuple[str, float]]  # (target, score) per line


def _doc_score(value: object) -> float | None:
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, dict):
        return next((_doc_score(value[key]) for key in SCORE_KEYS if key in value), None)
    return None


def doc_identity(sample: dict, metric: str) -> str | None:
    """What identifies the sample's doc across runs: the record id logged with its `metric` score, else
    its logged fields; None when the file logs neither (see the module's docstring)."""
    score = sample.get(metric)
    record = score.get(RECORD_ID_KEY) if isinstance(score, dict) else None
    if isinstance(record, str | int) and not isinstance(record, bool):
        return f"record {record!r}"
    if isinstance(sample.get("doc"), dict):
        text = json.dumps(sample["doc"], sort_keys=True, ensure_ascii=False, default=str)
        return "doc " + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return None


def read_doc_scores(samples: Path, metric: str) -> DocScores | None:
    """The per-doc scores of `metric` in `samples`; None when the file cannot pair docs.

    Identical docs (same identity) are told apart by the order they come in. None when a line
    lacks a numeric score for `metric`, or a `doc_id` appears twice (several filters or repeats in
    one file): no test is better than a wrong one. Raises `SamplesError` for a line that is not JSON.
    """
    identified: dict[tuple[str, int], float] | None = {}
    in_order: list[tuple[str, float]] = []
    seen_ids: set = set()
    occurrences: Counter[str] = Counter()
    with samples.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as error:
                raise SamplesError(
                    f"{samples}:{number}: not a JSON line, the file may be truncated ({error})"
                ) from error
            if not isinstance(sample, dict):
                raise SamplesError(f"{samples}:{number}: not a JSON object")
            score = _doc_score(sample.get(metric))
            if score is None or sample.get("doc_id") in seen_ids:
                return None
            seen_ids.add(sample.get("doc_id"))
            in_order.append((str(sample.get("target")), score))
            identity = doc_identity(sample, metric)
            if identity is None:
                identified = None
            elif identified is not None:
                identified[(identity, occurrences[identity])] = score
                occurrences[identity] += 1
    return DocScores(identified, in_order)


def pair_samples(baseline_samples: Path, run_samples: Path, metric: str) -> PairedScores | Unpaired | None:
    """The scores of `metric` on the docs both sample files share (paired by identity, see the module's
    docstring); `Unpaired` when the files identify no docs and their doc sets may differ; None when
    a file cannot pair docs at all."""
    baseline, run = read_doc_scores(baseline_samples, metric), read_doc_scores(run_samples, metric)
    if baseline is None or run is None:
        return None
    counts = len(baseline.in_order), len(run.in_order)
    if baseline.identified is not None and run.identified is not None:
        shared = [key for key in baseline.identified if key in run.identified]
        return PairedScores(
            [baseline.identified[key] for key in shared], [run.identified[key] for key in shared], *counts
        )
    if counts[0] != counts[1]:
        return Unpaired(*counts, "the samples log no record id to pair docs by, and the doc counts differ")
    if [target for target, _ in baseline.in_order] != [target for target, _ in run.in_order]:
        return Unpaired(*counts, "the samples log no record id to pair docs by, and their targets differ")
    return PairedScores(
        [score for _, score in baseline.in_order], [score for _, score in run.in_order], *counts
    )


def mcnemar_exact(baseline: list[float], run: list[float]) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the docs where exactly one run is right."""
    only_baseline = sum(1 for b, r in zip(baseline, run, strict=True) if b and not r)
    only_run = sum(1 for b, r in zip(baseline, run, strict=True) if r and not b)
    discordant = only_baseline + only_run
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_baseline, only_run) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def bootstrap_interval(
    baseline: list[float], run: list[float], seed: int = 0
) -> tuple[np.ndarray, float, float]:
    """Paired bootstrap of the mean of `run - baseline` over the docs: (resampled means, 2.5% and 97.5%
    percentiles), docs resampled with replacement `BOOTSTRAP_RESAMPLES` times."""
    differences = np.asarray(run, dtype=float) - np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(differences), size=(BOOTSTRAP_RESAMPLES, len(differences)))
    means = differences[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return means, float(low), float(high)


def paired_bootstrap(baseline: list[float], run: list[float], seed: int = 0) -> Significance:
    """95% interval of the mean paired difference and a two-sided p-value (share of resamples across 0)."""
    means, low, high = bootstrap_interval(baseline, run, seed)
    p_value = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return Significance("bootstrap", p_value, len(baseline), low, high)


def paired_test(paired: PairedScores) -> Significance | None:
    """Test the shared docs' scores; None when the runs share no doc. Every test carries the bootstrap's
    95% interval of the mean difference (in the scores' units), so a plot can say how sure each delta is."""
    if not paired.shared:
        return None
    if all(score in (0.0, 1.0) for score in paired.baseline + paired.run):
        _, low, high = bootstrap_interval(paired.baseline, paired.run)
        return Significance("mcnemar", mcnemar_exact(paired.baseline, paired.run), paired.shared, low, high)
    return paired_bootstrap(paired.baseline, paired.run)
