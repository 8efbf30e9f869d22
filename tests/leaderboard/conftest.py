"""Real lmms-eval output folders, made once per session with lmms-eval's `dummy` model on a toy task."""

import json
from pathlib import Path

import pytest
import yaml

from lmms_var.testing.demo import run_lmms_eval

TOY_TASKS = Path(__file__).parent / "toy_tasks"
# The gold letter of each doc; the dummy model answers one fixed letter, so accuracies follow from these.
TOY_ANSWERS = {"lb_toy_a": "AABBA", "lb_toy_b": "BBBA"}
DUMMY_RESPONSES = ("A", "B")
# A run like `--limit 2`: the dummy answering B on the first two docs of each task only.
LIMITED_RUN, LIMIT = "B_limit2", 2


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory) -> dict[str, Path]:
    """response letter (and LIMITED_RUN) -> output folder of a real `lmms-eval --model dummy --log_samples`
    run on group lb_toy."""
    workdir = tmp_path_factory.mktemp("toy_runs")
    for task, answers in TOY_ANSWERS.items():
        docs = [
            {"question": f"Question {doc}: (A) or (B)?", "answer": answer}
            for doc, answer in enumerate(answers)
        ]
        (workdir / f"{task.removeprefix('lb_')}.jsonl").write_text(
            "".join(json.dumps(doc) + "\n" for doc in docs)
        )
    configs = [
        {
            "model": "dummy",
            "model_args": f"response={letter}",
            "tasks": "lb_toy",
            "include_path": str(TOY_TASKS),
            "output_path": f"runs/{letter}",
            "log_samples": True,
        }
        for letter in DUMMY_RESPONSES
    ]
    configs.append(configs[1] | {"limit": LIMIT, "output_path": f"runs/{LIMITED_RUN}"})
    (workdir / "runs.yaml").write_text(yaml.safe_dump(configs))
    folders = run_lmms_eval(workdir / "runs.yaml", workdir)
    return dict(zip((*DUMMY_RESPONSES, LIMITED_RUN), folders, strict=True))
