"""The offline demo behind `lmms-var demo`: the constructed model, its data, lmms-eval plain, with VAR and
with its alternatives (ScalingVis, AdaptVis, PAI).

It saves the constructed tiny Qwen2.5-VL (`constructed`), whose visual sinks hide the answer, writes
synthetic colour-square questions in the spatial BLINK layout (`colour_squares`), runs lmms-eval's real
CLI plain and with each method, prints the leaderboard (each method's gain per task with its paired
p-value), plots the gains with their confidence intervals, and draws the attention on the picture of a doc whose
answer VAR changed, before and after VAR.

It lives with the fixtures because it runs on nothing else: the constructed checkpoint and the
synthetic data are test fixtures, and every step it takes is library code (`lmms_var.leaderboard`,
`lmms_var.attention_maps`, ...). So library code never imports `lmms_var.testing`; the `lmms-var demo`
subcommand (`tools/demo.py`) is the one module outside it that does, only when the demo runs
(`tests/test_imports.py` holds both rules).
"""

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from lmms_var.attention_maps import figure_for_prompt
from lmms_var.backbones import backbone_for_model_type
from lmms_var.leaderboard import build_leaderboard, load_run, plot_deltas, render
from lmms_var.models.diagnostics import summarise
from lmms_var.patch import enable_var
from lmms_var.sink_dims.calibration import data_prompts, encode_prompt
from lmms_var.tasks import TASKS_PATH
from lmms_var.testing.colour_squares import write_colour_square_root
from lmms_var.testing.constructed import (
    CONSTRUCTED_NOTE,
    SINK_DIMS,
    SPEC,
    build_constructed_model,
    save_constructed_checkpoint,
    var_config,
)

DISCLAIMER = (
    "Note: the model is CONSTRUCTED (weights set by hand, lmms_var.testing.constructed) so that visual "
    "sinks draw attention away from the picture's answer; the data are synthetic. The gain shows the "
    "mechanism VAR targets, not what VAR does for a real model."
)
DEMO_TASK = "spatial_blink"
DEMO_DOCS_PER_SUBTASK = 20
# The plain model, VAR, and its alternatives at their authors' example settings (INTERVENTIONS_SPEC.md).
RUNS = {
    "baseline": "var=false",
    "var": "var=true,p={p},tau={tau},sink_dims={sink_dims},diagnostics_path={diagnostics}",
    "scalingvis": "method=scalingvis,alpha=1.5",
    "adaptvis": "method=adaptvis,alpha_low=0.5,alpha_high=1.5,threshold=0.4",
    "pai": "method=pai,alpha=0.2,gamma=1.1",
}
LOG_TAIL_LINES = 40


class LMMSEvalRunError(RuntimeError):
    """lmms-eval finished without writing a run's results (it exits 0 even when evaluation fails)."""


def run_lmms_eval(
    config_file: Path, workdir: Path, *cli_args: str, env: dict[str, str] | None = None
) -> list[Path]:
    """Run lmms-eval's CLI on a `--config` YAML (one run per item); returns each run's output folder.

    Runs in `workdir` (relative paths resolve there), offline, with the datasets cache inside
    `workdir`; `cli_args` override every item, as on lmms-eval's command line. The combined log goes
    to `workdir/lmms_eval.log`.
    """
    configs = yaml.safe_load(config_file.read_text())
    configs = configs if isinstance(configs, list) else [configs]
    environment = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(workdir / "hf_datasets_cache"),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--config", str(config_file), *cli_args],
        cwd=workdir,
        env=environment | (env or {}),
        capture_output=True,
        text=True,
    )
    log = completed.stdout + completed.stderr
    log_file = workdir / "lmms_eval.log"
    log_file.write_text(log)
    outputs = [workdir / config["output_path"] for config in configs]
    for config, output in zip(configs, outputs, strict=True):
        if not any(output.rglob("*_results.json")):
            tail = "\n".join(log.splitlines()[-LOG_TAIL_LINES:])
            raise LMMSEvalRunError(
                f"lmms-eval wrote no results for {config['model']} ({config['model_args']}) under {output} "
                f"(exit code {completed.returncode}); full log: {log_file}\n{tail}"
            )
    return outputs


def constructed_model_args(checkpoint: Path) -> str:
    """lmms-eval model args of the constructed checkpoint: the processor's pixel bounds, so that every
    picture keeps its size (one visual token per 28-pixel cell)."""
    return (
        f"pretrained={checkpoint},device=cpu,dtype=float32,"
        f"min_pixels={SPEC.min_pixels},max_pixels={SPEC.max_pixels}"
    )


def demo_runs(checkpoint: Path, diagnostics: Path, task: str = DEMO_TASK, p: float = 0.6) -> list[dict]:
    """lmms-eval `--config` items: the constructed model on `task`, plain, then with each of `RUNS`'s
    methods (VAR with `p`)."""
    config, sink_dims = var_config(p=p), ";".join(map(str, SINK_DIMS))
    return [
        {
            "model": backbone_for_model_type(SPEC.model_type).lmms_eval.model_id,
            "model_args": f"{constructed_model_args(checkpoint)},"
            + run_args.format(p=config.p, tau=config.tau, sink_dims=sink_dims, diagnostics=diagnostics),
            "tasks": task,
            "include_path": str(TASKS_PATH),
            "batch_size": 1,
            "gen_kwargs": "max_new_tokens=4",
            "output_path": f"runs/{name}",
            "log_samples": True,
        }
        for name, run_args in RUNS.items()
    ]


@torch.no_grad()
def first_changed_prompt(model, processor, prompts: Sequence, config) -> int:
    """Index of the first prompt whose next token VAR changes (0 when none does)."""
    for index, prompt in enumerate(prompts):
        inputs = encode_prompt(processor, prompt)
        plain = model(**inputs).logits[0, -1].argmax()
        with enable_var(model, config):
            if model(**inputs).logits[0, -1].argmax() != plain:
                return index
    return 0


def run_demo(output: Path) -> int:
    """Run the demo into the (new or empty) folder `output`, printing what it finds; returns an exit code."""
    print(f"Building the constructed checkpoint and synthetic data in {output} ...", flush=True)
    checkpoint = save_constructed_checkpoint(output / "constructed_checkpoint")
    data_root = write_colour_square_root(output / "data", docs_per_subtask=DEMO_DOCS_PER_SUBTASK)
    diagnostics = output / "var_diagnostics.jsonl"
    config_file = output / "lmms_eval_runs.yaml"
    config_file.write_text(yaml.safe_dump(demo_runs(checkpoint, diagnostics), sort_keys=False))
    print(
        f"Running lmms-eval on {DEMO_TASK} plain, with VAR, ScalingVis, AdaptVis and PAI, as {config_file} "
        "says ...",
        flush=True,
    )
    try:
        folders = run_lmms_eval(config_file, output, env={"LMMS_VAR_DATA_ROOT": str(data_root)})
    except LMMSEvalRunError as error:
        print(f"lmms-var demo: error: {error}", file=sys.stderr)
        return 1
    board = build_leaderboard([load_run(folder) for folder in folders])
    print()
    print(render(board, "md"))
    records = [json.loads(line) for line in diagnostics.read_text().splitlines() if line.strip()]
    print(
        f"\nWhat VAR did in the VAR run: {summarise(records, diagnostics).removeprefix('VAR diagnostics: ')}"
    )
    plot = output / "leaderboard.png"
    plot_deltas(board, plot)
    print(f"Each method's gain per task with its 95% interval: {plot}")
    model, processor = build_constructed_model()
    prompts = data_prompts(data_root, num_samples=DEMO_DOCS_PER_SUBTASK)
    prompt = prompts[first_changed_prompt(model, processor, prompts, var_config())]
    figure = output / "attention_map.png"
    figure_for_prompt(
        model,
        processor,
        encode_prompt(processor, prompt),
        var_config(),
        figure,
        question=prompt.question,
        model_name="constructed demo model",
        note=CONSTRUCTED_NOTE,
    )
    print(f"Attention on the picture before and after VAR, for a doc whose answer VAR changed: {figure}")
    print(DISCLAIMER)
    print(f"\nRecreate the table: lmms-var leaderboard {' '.join(str(folder) for folder in folders)}")
    return 0
