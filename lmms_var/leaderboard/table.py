"""Build the comparison table: one row per run, one column per task then per group.

The table holds numbers in display units (accuracies in percent); `formats` turns it into text.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from lmms_var.backbones import BACKBONES
from lmms_var.leaderboard.runs import Run, TaskResult
from lmms_var.leaderboard.significance import SamplesError, Significance, Unpaired, pair_samples, paired_test
from lmms_var.model_args import FALSE_WORDS, Label, find_model_arg, label_args, model_arg

# The lmms-eval models this project registers (VAR on unless `var=false`).
VAR_MODELS = frozenset(backbone.lmms_eval.model_id for backbone in BACKBONES)
# Metrics whose [0, 1] values are rates, shown in percent.
ACCURACY_WORDS = ("acc", "match", "correct")
# Marks a cell whose doc set differs from the baseline's; the note under the table says how.
OTHER_DOCS = "†"


@dataclass(frozen=True)
class Column:
    task: str  # the lmms-eval task (or group) name
    metric: str
    is_group: bool
    percent: bool  # values are shown x100
    higher_is_better: bool


@dataclass(frozen=True)
class DocCounts:
    """Docs a run and the baseline evaluated for one cell, and how many of them both evaluated."""

    shared: int | None  # None: unknown (no samples to pair docs by), only the counts are
    baseline: int
    run: int
    unpaired: str | None = None  # why samples there are could not pair the docs (their sets may differ)

    @property
    def same(self) -> bool:
        """Whether both runs evaluated the same docs (as far as the results tell)."""
        return self.unpaired is None and self.baseline == self.run and self.shared in (None, self.baseline)


def _over_baseline_docs(docs: DocCounts | None) -> bool:
    """A cell is over the baseline's docs unless its counts say otherwise (None: not compared)."""
    return docs is None or docs.same


@dataclass(frozen=True)
class Cell:
    value: float | None  # None: the run did not evaluate this task; NaN: lmms-eval wrote NaN
    delta: float | None = None  # value - baseline value, in display units (over shared docs only)
    significance: Significance | None = None
    best: bool = False
    docs: DocCounts | None = None  # set where compared with the baseline and the counts are known

    @property
    def other_docs(self) -> bool:
        """The cell's doc set differs from the baseline's (marked with a dagger)."""
        return not _over_baseline_docs(self.docs)


@dataclass(frozen=True)
class Leaderboard:
    runs: list[str]  # row names
    columns: list[Column]
    cells: list[list[Cell]]  # [row][column]
    baseline: int | None  # row index of the baseline, None when there is none
    methods: list[str | None]  # per row, the intervention its run applied (`run_method`)
    notes: list[str] = field(default_factory=list)  # printed under the table


def _var_arg(run: Run) -> bool:
    """The `var` model arg; the VAR models default to on."""
    value = run.model_args.get("var", str(model_arg("var").default))
    return value.lower() not in FALSE_WORDS


def var_enabled(run: Run) -> bool:
    """VAR is on for a VAR model unless `var` says otherwise; any other model is a baseline."""
    return run.model in VAR_MODELS and _var_arg(run)


def run_method(run: Run) -> str | None:
    """The `method` model arg of a run with an intervention on (`var_enabled`); None for a plain run."""
    if not var_enabled(run):
        return None
    return run.model_args.get("method", model_arg("method").default).lower()


def _short(value: str) -> str:
    """Checkpoint paths are long; keep their last two parts, as lmms-eval names its output folders."""
    return "/".join(value.rstrip("/").split("/")[-2:])


def _listed_if_varying(key: str) -> bool:
    """Upstream's args, and ours of `Label.IF_VARYING`, are in a run's name only where runs differ in them."""
    row = find_model_arg(key)
    return row is None or row.label is Label.IF_VARYING


def run_names(runs: list[Run]) -> list[str]:
    """`model var=true p=0.6 rho=0.8 ...`: the model, the args the table of model args lists in labels
    (the run's method's, while on), then any other arg that differs between runs."""
    varying = [
        key
        for key in dict.fromkeys(key for run in runs for key in run.model_args)
        if _listed_if_varying(key) and len({run.model_args.get(key) for run in runs}) > 1
    ]
    names = []
    for run in runs:
        parts = [run.model or "model"]
        if run.model in VAR_MODELS or "var" in run.model_args:
            var_on = _var_arg(run)
            parts.append(f"var={str(var_on).lower()}")
            # With VAR off its hyper-parameters change nothing, so they stay out of the name.
            if var_on:
                method = run.model_args.get("method", model_arg("method").default).lower()
                listed = [key for key in label_args(method) if key != "var" and key in run.model_args]
                parts += [f"{key}={run.model_args[key]}" for key in listed]
        parts += [f"{key}={_short(run.model_args[key])}" for key in varying if key in run.model_args]
        names.append(" ".join(parts))
    # Runs with identical args (e.g. repeated seeds) stay apart by their folder.
    return [
        f"{name} [{run.folder.name}]" if names.count(name) > 1 else name
        for name, run in zip(names, runs, strict=True)
    ]


def _find_baseline(runs: list[Run], names: list[str], baseline: str | None) -> int | None:
    if baseline is None:
        return next((row for row, run in enumerate(runs) if not var_enabled(run)), None)
    matches = [
        row
        for row, (run, name) in enumerate(zip(runs, names, strict=True))
        if baseline == name or Path(baseline).resolve() == run.folder.resolve()
    ]
    if len(matches) != 1:
        listed = "; ".join(names)
        raise ValueError(f"--baseline {baseline!r} names no single run (a run name or its RUN_DIR): {listed}")
    return matches[0]


def _is_number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _columns(runs: list[Run], metric: str | None, notes: list[str]) -> list[Column]:
    """One column per task, then per group; `--metric` where a task reports it (noted where not)."""
    if metric is not None:
        reported = {name for run in runs for result in run.tasks.values() for name in result.metrics}
        if metric not in reported:
            raise ValueError(
                f"metric {metric!r}: no task reports it; the runs report {', '.join(sorted(reported))}"
            )
    first_seen: dict[str, Run] = {}
    for run in runs:
        for task in run.tasks:
            first_seen.setdefault(task, run)
    columns = []
    for task, run in first_seen.items():
        result = run.tasks[task]
        chosen = (
            metric
            if metric is not None
            and any(metric in other.tasks[task].metrics for other in runs if task in other.tasks)
            else result.primary
        )
        values = [other.tasks[task].metrics.get(chosen) for other in runs if task in other.tasks]
        percent = any(word in chosen.lower() for word in ACCURACY_WORDS) and all(
            not _is_number(value) or 0.0 <= value <= 1.0 for value in values
        )
        columns.append(
            Column(task, chosen, result.is_group, percent, result.higher_is_better.get(chosen, True))
        )
    if metric is not None and (lacking := [column for column in columns if column.metric != metric]):
        shown = ", ".join(f"{column.task} (shows {column.metric})" for column in lacking)
        notes.append(f"metric {metric} is not reported by {shown}.")
    # Tasks first, then groups, each in the order the runs reported them.
    return sorted(columns, key=lambda column: column.is_group)


def _value(run: Run, column: Column) -> float | None:
    result = run.tasks.get(column.task)
    value = result.metrics.get(column.metric) if result is not None else None
    return value * 100 if value is not None and column.percent else value


@dataclass(frozen=True)
class Comparison:
    """A cell against the baseline's: the difference, the paired test and the doc counts."""

    delta: float | None
    significance: Significance | None = None
    docs: DocCounts | None = None


def _compare_task(
    result: TaskResult, base: TaskResult, column: Column, difference: float, notes: list[str]
) -> Comparison:
    """`difference` is the reported values' difference, right only where both runs evaluated the same docs."""
    paired = None
    if result.samples is not None and base.samples is not None:
        try:
            paired = pair_samples(base.samples, result.samples, column.metric)
        except SamplesError as error:
            notes.append(f"{error}: {column.task} has no paired test against this file.")
    if isinstance(paired, Unpaired):
        return Comparison(None, None, DocCounts(None, paired.baseline_docs, paired.run_docs, paired.reason))
    if paired is not None:
        docs = DocCounts(paired.shared, paired.baseline_docs, paired.run_docs)
        shared_difference = paired.mean_difference()
        if not docs.same and shared_difference is not None and column.percent:
            shared_difference *= 100
        return Comparison(difference if docs.same else shared_difference, paired_test(paired), docs)
    if result.docs is not None and base.docs is not None:
        docs = DocCounts(None, base.docs, result.docs)
        return Comparison(difference if docs.same else None, None, docs)
    return Comparison(difference)


def _leaf_tasks(run: Run, group: str) -> list[str]:
    """The tasks (not groups) under `group`, at any depth."""
    leaves = []
    for name in run.tasks[group].subtasks:
        if name in run.tasks and run.tasks[name].is_group:
            leaves += _leaf_tasks(run, name)
        else:
            leaves.append(name)
    return leaves


def _compare_group(run: Run, column: Column, difference: float, tasks: dict[str, Comparison]) -> Comparison:
    """A group differs from the baseline's where any of its tasks does; its value then has no delta,
    since lmms-eval's group aggregate cannot be recomputed over shared docs."""
    counts = [tasks[task].docs for task in _leaf_tasks(run, column.task) if task in tasks]
    if not counts or any(docs is None for docs in counts):
        return Comparison(difference)
    shared = [docs.shared for docs in counts]
    docs = DocCounts(
        None if None in shared else sum(shared),
        sum(docs.baseline for docs in counts),
        sum(docs.run for docs in counts),
        next((docs.unpaired for docs in counts if docs.unpaired is not None), None),
    )
    differs = any(not docs.same for docs in counts)
    return Comparison(None if differs else difference, None, docs)


def _doc_set_note(run_name: str, column: Column, cell: Cell) -> str:
    docs = cell.docs
    assert docs is not None
    where = f"{column.task}{' (group)' if column.is_group else ''}, {run_name}"
    if docs.shared is None:
        why = docs.unpaired or "no samples to pair them by"
        return f"{where}: {docs.baseline} baseline / {docs.run} run docs ({why}: not paired, no delta)"
    counts = f"{docs.shared} shared / {docs.baseline} baseline / {docs.run} run docs"
    if column.is_group:
        return f"{where}: {counts} in its tasks (no delta: the group's value covers other docs)"
    if not docs.shared:
        return f"{where}: {counts} (no doc in common: no delta)"
    return f"{where}: {counts}; delta and p-value over the {docs.shared} shared docs"


def _same_docs_in_every_run(runs: list[Run], column: Column) -> bool:
    """Without a baseline: whether the runs' doc counts for the task agree (as far as known)."""
    counts = {run.tasks[column.task].docs for run in runs if column.task in run.tasks}
    return len(counts - {None}) <= 1


def _row_comparisons(
    run: Run, base: Run, columns: list[Column], values: list, base_values: list, notes: list[str]
) -> list[Comparison | None]:
    """Each cell of `run` against the baseline's (None where either has no number); groups come last,
    so their tasks are compared first."""
    compared: dict[str, Comparison] = {}
    for column, value, base_value in zip(columns, values, base_values, strict=True):
        if not (_is_number(value) and _is_number(base_value)):
            continue
        difference = value - base_value
        compared[column.task] = (
            _compare_group(run, column, difference, compared)
            if column.is_group
            else _compare_task(run.tasks[column.task], base.tasks[column.task], column, difference, notes)
        )
    return [compared.get(column.task) for column in columns]


def _best(
    values: list[float | None], comparisons: list[Comparison | None], higher_is_better: bool
) -> float | None:
    """The best value among those over the baseline's docs, None where they do not differ."""
    comparable = [
        value
        for value, comparison in zip(values, comparisons, strict=True)
        if _is_number(value) and (comparison is None or _over_baseline_docs(comparison.docs))
    ]
    return (max if higher_is_better else min)(comparable) if len(set(comparable)) > 1 else None


def _check_each_run_once(runs: list[Run]) -> None:
    """A run given twice (the same folder, or a folder and its results file) would be compared with
    itself: a row of zero deltas that looks like a result."""
    read_by: dict[Path, Run] = {}
    for run in runs:
        for results_file in run.results_files:
            first = read_by.setdefault(results_file, run)
            if first is run:
                continue
            if first.folder.resolve() == run.folder.resolve():
                given = f"RUN_DIR {run.folder} is given twice"
            else:
                given = f"RUN_DIR {first.folder} and {run.folder} hold the same run ({results_file.name})"
            raise ValueError(f"{given}: it would be compared with itself; give each run once")


def build_leaderboard(runs: list[Run], baseline: str | None = None, metric: str | None = None) -> Leaderboard:
    """Rows in the order of `runs`; deltas and paired tests against `baseline` (default: first run with
    VAR off), over the docs both runs evaluated, and every cell whose doc set differs marked and noted."""
    if not runs:
        raise ValueError("RUN_DIR: give at least one lmms-eval output folder")
    _check_each_run_once(runs)
    names = run_names(runs)
    base_row = _find_baseline(runs, names, baseline)
    notes: list[str] = []
    columns = _columns(runs, metric, notes)
    values = [[_value(run, column) for column in columns] for run in runs]
    comparisons = [
        [None] * len(columns)
        if base_row is None or row == base_row
        else _row_comparisons(run, runs[base_row], columns, values[row], values[base_row], notes)
        for row, run in enumerate(runs)
    ]
    cells: list[list[Cell]] = [[] for _ in runs]
    for col, column in enumerate(columns):
        column_values = [row_values[col] for row_values in values]
        column_comparisons = [row_comparisons[col] for row_comparisons in comparisons]
        best = (
            _best(column_values, column_comparisons, column.higher_is_better)
            if base_row is not None or _same_docs_in_every_run(runs, column)
            else None
        )
        for row, (value, comparison) in enumerate(zip(column_values, column_comparisons, strict=True)):
            comparison = comparison or Comparison(None)
            is_best = best is not None and value == best and _over_baseline_docs(comparison.docs)
            cells[row].append(
                Cell(value, comparison.delta, comparison.significance, is_best, comparison.docs)
            )
    dagger_notes = [
        _doc_set_note(name, column, cell)
        for name, row in zip(names, cells, strict=True)
        for column, cell in zip(columns, row, strict=True)
        if cell.other_docs
    ]
    if dagger_notes:
        notes.append(f"{OTHER_DOCS} doc set differs from the baseline's: " + "; ".join(dagger_notes) + ".")
    nan_cells = [
        f"{column.task} ({name})"
        for name, row in zip(names, values, strict=True)
        for column, value in zip(columns, row, strict=True)
        if value is not None and math.isnan(value)
    ]
    if nan_cells:
        notes.append(f"NaN: lmms-eval wrote no number for {', '.join(nan_cells)}.")
    return Leaderboard(
        runs=names,
        columns=columns,
        cells=cells,
        baseline=base_row,
        methods=[run_method(run) for run in runs],
        notes=notes,
    )
