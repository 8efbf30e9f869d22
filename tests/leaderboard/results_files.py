"""Write hand-made lmms-eval output folders, shaped like lmms-eval 0.7.3 writes them."""

import json
from pathlib import Path


def write_run(
    folder: Path,
    model: str,
    model_args: str | dict,
    results: dict[str, dict[str, float]],
    groups: tuple[str, ...] = (),
    samples: dict[str, list[dict]] | None = None,
    date_id: str = "20250101_120000",
    higher_is_better: dict[str, dict[str, bool]] | None = None,
    n_samples: dict[str, int] | None = None,
) -> Path:
    """`results` maps task -> {metric: value} in metric_list order; returns the results file.

    Values are written under lmms-eval's `metric,none` keys next to stderr entries, so the reader has to
    skip those; `samples` maps task -> per-doc sample lines; `n_samples` task -> docs evaluated
    (lmms-eval's `n-samples`; by default the number of sample lines where there are some). Groups
    hold the other tasks (`group_subtasks`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    entries = {
        task: {"alias": task}
        | {key: value for metric, score in metrics.items() for key, value in _metric_entry(metric, score)}
        for task, metrics in results.items()
    }
    data = {
        "results": entries,
        "groups": {group: entries[group] for group in groups},
        "configs": {
            task: {"task": task, "metric_list": [{"metric": metric} for metric in metrics]}
            for task, metrics in results.items()
            if task not in groups
        },
        "group_subtasks": {group: [task for task in results if task not in groups] for group in groups},
        "higher_is_better": higher_is_better or {},
        "n-samples": {
            task: {"original": count, "effective": count}
            for task, count in (
                {task: len(lines) for task, lines in (samples or {}).items()} | (n_samples or {})
            ).items()
        },
        "config": {"model": model, "model_args": model_args},
    }
    results_file = folder / f"{date_id}_results.json"
    results_file.write_text(json.dumps(data, indent=2))
    for task, lines in (samples or {}).items():
        (folder / f"{date_id}_samples_{task}.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines)
        )
    return results_file


def _metric_entry(metric: str, score: float):
    yield f"{metric},none", score
    yield f"{metric}_stderr,none", "N/A"


# lmms-eval 0.7.3's doc_hash of every doc: the sha256 of "null" (it hashes a field that is always None).
SAME_DOC_HASH = "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"


def doc_samples(
    metric: str, scores: list, ids: list[str] | None = None, *, record_ids: bool = True
) -> list[dict]:
    """Sample lines as lmms-eval 0.7.3 logs them: `doc_id` is the position (0..n-1), no `doc`, the same
    `doc_hash` on every line, then the metric's per-doc value: with `record_ids`, a dict holding the
    record id (`ids`, by default "r0", "r1", ...) next to the score, as lmms-eval's BLINK scoring logs it;
    without, the bare score (a task that logs no id)."""
    ids = ids or [f"r{doc}" for doc in range(len(scores))]
    return [
        {
            "doc_id": doc,
            "target": "A",
            "doc_hash": SAME_DOC_HASH,
            metric: {"id": idx, "score": score} if record_ids else score,
        }
        for doc, (idx, score) in enumerate(zip(ids, scores, strict=True))
    ]


# Five runs of one model over the same docs: the baseline and one run per method, each with its args as
# `model_args`, and per task the 0/1 score of each doc (scores of ten docs, the first task's and the second's).
METHOD_RUNS = {
    "baseline": ("var=false", ([0, 0, 1, 1, 0, 1, 0, 0, 1, 0], [1, 0, 0, 1, 0, 0, 1, 0, 0, 0])),
    "var": ("var=true,p=0.6,rho=0.5", ([1, 1, 1, 1, 0, 1, 1, 0, 1, 1], [1, 0, 1, 1, 0, 0, 1, 1, 0, 0])),
    "scalingvis": (
        "method=scalingvis,alpha=1.5",
        ([0, 1, 1, 1, 0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
    ),
    "adaptvis": (
        "method=adaptvis,alpha_low=0.5,alpha_high=1.5,threshold=0.4",
        ([0, 0, 1, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 1, 0, 1, 1, 0, 1, 0]),
    ),
    "pai": (
        "method=pai,alpha=0.2,gamma=1.1",
        ([1, 0, 1, 1, 1, 1, 0, 1, 1, 0], [1, 0, 0, 1, 0, 0, 1, 0, 0, 0]),
    ),
}
METHOD_TASKS = ("spatial_blink_counting", "spatial_sat2")


def write_method_runs(folder: Path, model: str = "qwen2_5_vl_var") -> list[Path]:
    """`METHOD_RUNS` as lmms-eval output folders under `folder` (samples logged), in the table's order."""
    folders = []
    for name, (model_args, per_task) in METHOD_RUNS.items():
        scores = dict(zip(METHOD_TASKS, per_task, strict=True))
        results = {task: {"acc": sum(values) / len(values)} for task, values in scores.items()}
        samples = {task: doc_samples("acc", values) for task, values in scores.items()}
        write_run(folder / name, model, model_args, results, samples=samples)
        folders.append(folder / name)
    return folders
