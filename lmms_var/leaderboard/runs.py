"""Read lmms-eval output folders: one folder (`--output_path` of one run) becomes one `Run`.

lmms-eval 0.7.3 writes `OUTPUT_PATH/<model name>/<date>_results.json` (the model-name folder is
left out when the model args name no checkpoint) and, with `--log_samples`, one
`<date>_samples_<task>.jsonl` per task next to it. Results of any task are read, not only ours.
The results file also says how many docs each task evaluated (`n-samples`) and which tasks each group
holds (`group_subtasks`): the leaderboard compares doc sets with them.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_SUFFIX = "_results.json"
STDERR_MARK = "_stderr"


@dataclass(frozen=True)
class TaskResult:
    """One task's or group's aggregated metrics, as lmms-eval reported them."""

    metrics: dict[str, float]  # metric name (filter dropped) -> value, in lmms-eval's order
    primary: str  # the first of the task's `metric_list` (for a group, its first aggregate metric)
    higher_is_better: dict[str, bool]
    is_group: bool
    samples: Path | None = None  # the per-doc samples JSONL, when the run logged samples
    docs: int | None = None  # docs evaluated (lmms-eval's n-samples "effective"), for tasks
    subtasks: tuple[str, ...] = ()  # for groups: the tasks and groups it holds


@dataclass
class Run:
    """The results of one lmms-eval run: model, model args and every task it evaluated."""

    folder: Path
    model: str
    model_args: dict[str, str]
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    results_files: list[Path] = field(default_factory=list)  # those read, resolved


def model_args_as_text(model_args: str | dict | None) -> dict[str, str]:
    """`a=1,b=x` (lmms-eval's string form) or a dict (its Python API form) -> {name: text value}, for
    run labels and comparisons (the models' own, typed parsing is `lmms_var.models.args`)."""
    if model_args is None:
        return {}
    if isinstance(model_args, dict):
        return {str(key): _as_text(value) for key, value in model_args.items()}
    parsed = {}
    for item in str(model_args).split(","):
        if item.strip():
            key, _, value = item.partition("=")
            parsed[key.strip()] = value.strip()
    return parsed


def _as_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _metric_values(entry: dict) -> dict[str, float]:
    """`{"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...}` -> `{"acc": 0.5}` (first filter wins)."""
    values: dict[str, float] = {}
    for key, value in entry.items():
        metric, comma, _filter = key.partition(",")
        if not comma or STDERR_MARK in metric or isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            values.setdefault(metric, float(value))
    return values


def _section(
    results_file: Path, data: dict, key: str, values: type = dict, expected: str = "task names to objects"
) -> dict[str, Any]:
    """`data[key]` (absent: empty), checked to map names to `values` as lmms-eval writes it; an error
    names the entry that does not (its task), not only the section."""
    section = data.get(key, {})
    problem = f"{results_file}: not an lmms-eval results file: {key!r} should map {expected}"
    if not isinstance(section, dict):
        raise ValueError(f"{problem}, got {section!r:.80}")
    for name, value in section.items():
        if not isinstance(value, values):
            raise ValueError(f"{problem}, but its {name!r} is {value!r:.80}")
    return section


def _evaluated_docs(entry: dict | None) -> int | None:
    effective = (entry or {}).get("effective")
    return effective if isinstance(effective, int) and not isinstance(effective, bool) else None


def _task_results(results_file: Path, data: dict) -> dict[str, TaskResult]:
    groups = set(_section(results_file, data, "groups"))
    configs = _section(results_file, data, "configs")
    higher = _section(results_file, data, "higher_is_better")
    n_samples = _section(results_file, data, "n-samples")
    group_subtasks = _section(results_file, data, "group_subtasks", list, "group names to lists of tasks")
    date_id = results_file.name.removesuffix(RESULTS_SUFFIX)
    tasks = {}
    for name, entry in _section(results_file, data, "results").items():
        metrics = _metric_values(entry)
        if not metrics:
            continue
        metric_list = configs.get(name, {}).get("metric_list", [])
        listed = [item["metric"] for item in metric_list if isinstance(item, dict) and "metric" in item]
        primary = next((metric for metric in listed if metric in metrics), next(iter(metrics)))
        samples = results_file.parent / f"{date_id}_samples_{name}.jsonl"
        tasks[name] = TaskResult(
            metrics=metrics,
            primary=primary,
            higher_is_better={metric: bool(flag) for metric, flag in higher.get(name, {}).items()},
            is_group=name in groups,
            samples=samples if samples.is_file() else None,
            docs=_evaluated_docs(n_samples.get(name)),
            subtasks=tuple(map(str, group_subtasks.get(name, []))),
        )
    return tasks


def _results_files(path: Path) -> list[Path]:
    if path.is_file():
        if not path.name.endswith(RESULTS_SUFFIX):
            raise ValueError(
                f"RUN_DIR {path}: expected an lmms-eval output folder or a *{RESULTS_SUFFIX} file"
            )
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"RUN_DIR {path} does not exist")
    files = sorted(path.rglob(f"*{RESULTS_SUFFIX}"), key=lambda file: file.name)
    if not files:
        raise ValueError(
            f"RUN_DIR {path} holds no lmms-eval results file (*{RESULTS_SUFFIX}); "
            "give the folder passed to lmms-eval's --output_path"
        )
    return files


def load_run(path: str | Path) -> Run:
    """Read every results file under `path` (oldest first, so a task rerun later wins).

    Several results files in one folder are merged only when they come from the same model and
    model args: one folder is one row of the leaderboard.
    """
    path = Path(path)
    run: Run | None = None
    for results_file in _results_files(path):
        try:
            data = json.loads(results_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{results_file}: not valid JSON ({error})") from error
        if not isinstance(data, dict) or "results" not in data:
            raise ValueError(f"{results_file}: not an lmms-eval results file (no 'results' key)")
        config = data.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"{results_file}: not an lmms-eval results file: 'config' is {config!r:.80}")
        model = str(config.get("model", ""))
        model_args = model_args_as_text(config.get("model_args"))
        if run is None:
            run = Run(folder=path, model=model, model_args=model_args)
        elif (model, model_args) != (run.model, run.model_args):
            raise ValueError(
                f"RUN_DIR {path} mixes runs of different models or model args ({results_file.name}); "
                "give each run its own --output_path"
            )
        run.tasks.update(_task_results(results_file, data))
        run.results_files.append(results_file.resolve())
    assert run is not None  # _results_files never returns an empty list
    return run
