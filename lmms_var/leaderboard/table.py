"""Build the comparison table: one row per run, one column per task then per group.

The table holds numbers in display units (accuracies in percent); `formats` turns it into text.
"""

from dataclasses import dataclass
from pathlib import Path

from lmms_var.backbones import BACKBONES
from lmms_var.leaderboard.runs import Run
from lmms_var.leaderboard.significance import Significance, paired_test

# The lmms-eval models this project registers (VAR on unless `var=false`).
VAR_MODELS = frozenset(backbone.lmms_eval.model_id for backbone in BACKBONES)
# VAR's model args, in the order a run name lists them.
VAR_ARGS = ("var", "p", "rho", "tau", "summ", "sink_dims", "except_last_layer")
# Model args that change what is logged, never a prediction: they stay out of run names.
LOGGING_ARGS = ("diagnostics", "diagnostics_path")
FALSE_WORDS = {"false", "0", "no", "off"}
# Metrics whose [0, 1] values are rates, shown in percent.
ACCURACY_WORDS = ("acc", "match", "correct")


@dataclass(frozen=True)
class Column:
    task: str  # the lmms-eval task (or group) name
    metric: str
    is_group: bool
    percent: bool  # values are shown x100
    higher_is_better: bool


@dataclass(frozen=True)
class Cell:
    value: float | None  # None: the run did not evaluate this task
    delta: float | None = None  # value - baseline value, in display units
    significance: Significance | None = None
    best: bool = False


@dataclass(frozen=True)
class Leaderboard:
    runs: list[str]  # row names
    columns: list[Column]
    cells: list[list[Cell]]  # [row][column]
    baseline: int | None  # row index of the baseline, None when there is none


def _var_arg(run: Run) -> bool:
    """The `var` model arg; the VAR models default to on."""
    return run.model_args.get("var", "true").lower() not in FALSE_WORDS


def var_enabled(run: Run) -> bool:
    """VAR is on for a VAR model unless `var` says otherwise; any other model is a baseline."""
    return run.model in VAR_MODELS and _var_arg(run)


def _short(value: str) -> str:
    """Checkpoint paths are long; keep their last two parts, as lmms-eval names its output folders."""
    return "/".join(value.rstrip("/").split("/")[-2:])


def run_names(runs: list[Run]) -> list[str]:
    """`model var=true p=0.6 rho=0.8 ...`: the model, VAR's args, then any other arg that differs between runs."""
    varying = [
        key
        for key in dict.fromkeys(key for run in runs for key in run.model_args)
        if key not in VAR_ARGS + LOGGING_ARGS and len({run.model_args.get(key) for run in runs}) > 1
    ]
    names = []
    for run in runs:
        parts = [run.model or "model"]
        if run.model in VAR_MODELS or "var" in run.model_args:
            var_on = _var_arg(run)
            parts.append(f"var={str(var_on).lower()}")
            # With VAR off its hyper-parameters change nothing, so they stay out of the name.
            if var_on:
                parts += [f"{key}={run.model_args[key]}" for key in VAR_ARGS[1:] if key in run.model_args]
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


def _columns(runs: list[Run], metric: str | None) -> list[Column]:
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
            value is None or 0.0 <= value <= 1.0 for value in values
        )
        columns.append(
            Column(task, chosen, result.is_group, percent, result.higher_is_better.get(chosen, True))
        )
    # Tasks first, then groups, each in the order the runs reported them.
    return sorted(columns, key=lambda column: column.is_group)


def _value(run: Run, column: Column) -> float | None:
    result = run.tasks.get(column.task)
    value = result.metrics.get(column.metric) if result is not None else None
    return value * 100 if value is not None and column.percent else value


def _significance(run: Run, base: Run, column: Column) -> Significance | None:
    if column.is_group or column.task not in run.tasks or column.task not in base.tasks:
        return None
    samples, base_samples = run.tasks[column.task].samples, base.tasks[column.task].samples
    if samples is None or base_samples is None:
        return None
    return paired_test(base_samples, samples, column.metric)


def build_leaderboard(runs: list[Run], baseline: str | None = None, metric: str | None = None) -> Leaderboard:
    """Rows in the order of `runs`; deltas and paired tests against `baseline` (default: first run with VAR off)."""
    if not runs:
        raise ValueError("RUN_DIR: give at least one lmms-eval output folder")
    names = run_names(runs)
    base_row = _find_baseline(runs, names, baseline)
    columns = _columns(runs, metric)
    values = [[_value(run, column) for column in columns] for run in runs]
    cells: list[list[Cell]] = [[] for _ in runs]
    for col, column in enumerate(columns):
        present = [row_values[col] for row_values in values if row_values[col] is not None]
        # A best cell only where runs differ: marking every tied cell says nothing.
        best = (max if column.higher_is_better else min)(present) if len(set(present)) > 1 else None
        base_value = values[base_row][col] if base_row is not None else None
        for row, run in enumerate(runs):
            value = values[row][col]
            compared = value is not None and base_value is not None and row != base_row
            cells[row].append(
                Cell(
                    value=value,
                    delta=value - base_value if compared else None,
                    significance=_significance(run, runs[base_row], column) if compared else None,
                    best=value is not None and value == best,
                )
            )
    return Leaderboard(runs=names, columns=columns, cells=cells, baseline=base_row)
