"""`lmms-var demo`: the whole workflow offline, on an embedded tiny model and synthetic data.

It saves a tiny random Qwen2.5-VL with planted sinks, writes a small synthetic spatial BLINK root,
runs lmms-eval's real CLI with VAR off and on, prints the leaderboard, and draws the attention on one
doc's images before and after VAR (as `lmms-var show`). The model is random, so
its accuracy means nothing: the demo shows the workflow, not VAR's effect.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lmms_var.checks import check_output_folder
from lmms_var.tasks import TASKS_PATH

DISCLAIMER = (
    "Note: this is a tiny RANDOM model on synthetic data with random answers; its accuracy means "
    "nothing. The demo shows the workflow (lmms-eval runs with VAR off and on, then the leaderboard), "
    "not what VAR does for a real model."
)
# The folder lmms-eval --include_path takes for the spatial_* task YAMLs (shipped inside the package).
DEMO_TASK = "spatial_blink"
DEMO_DOCS_PER_SUBTASK = 8
RUNS = {"baseline": "var=false", "var": "var=true,p=0.6,tau={tau},diagnostics_path={diagnostics}"}
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
    import yaml

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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole workflow offline on a tiny random model (accuracy means nothing)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output", metavar="DIR", type=Path, help="keep checkpoint, data and runs here (default: a temp dir)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from lmms_var.attention_maps import MapSettings
    from lmms_var.attention_maps.figure import RANDOM_MODEL_NOTE
    from lmms_var.backbones import backbone_for_model_type
    from lmms_var.config import VARConfig
    from lmms_var.leaderboard import build_leaderboard, load_run, render
    from lmms_var.models.diagnostics import summarise
    from lmms_var.sink_dims.calibration import data_prompts
    from lmms_var.testing import TINY_TAU, TinySpec, save_tiny_checkpoint
    from lmms_var.testing.spatial_data import write_spatial_root
    from lmms_var.tools.show import figure_for_prompt
    from lmms_var.tools.sink_dims import load_model

    output = args.output if args.output is not None else Path(tempfile.mkdtemp(prefix="lmms_var_demo_"))
    check_output_folder(output, "--output")
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"--output {output} is not empty; give a new or empty folder")
    output = output.resolve()
    print(f"Building a tiny checkpoint and synthetic data in {output} ...", flush=True)
    spec = TinySpec(answers_letters=True)  # answers A-D, so accuracy is near chance rather than 0
    checkpoint = save_tiny_checkpoint(output / "tiny_checkpoint", spec)
    data_root = write_spatial_root(output / "data", docs_per_subtask=DEMO_DOCS_PER_SUBTASK, sat2_docs=0)
    sink_dims = ";".join(map(str, spec.sink_dims))
    common = f"pretrained={checkpoint},sink_dims={sink_dims},device=cpu,dtype=float32"
    diagnostics = output / "var_diagnostics.jsonl"
    configs = [
        {
            "model": backbone_for_model_type(spec.model_type).lmms_eval.model_id,
            "model_args": f"{common},{var_args.format(tau=TINY_TAU, diagnostics=diagnostics)}",
            "tasks": DEMO_TASK,
            "include_path": str(TASKS_PATH),
            "batch_size": 1,
            "gen_kwargs": "max_new_tokens=4",
            "output_path": f"runs/{name}",
            "log_samples": True,
        }
        for name, var_args in RUNS.items()
    ]
    config_file = output / "lmms_eval_runs.yaml"
    config_file.write_text(yaml.safe_dump(configs, sort_keys=False))
    print(f"Running lmms-eval on {DEMO_TASK} with VAR off and on, as {config_file} says ...", flush=True)
    try:
        folders = run_lmms_eval(config_file, output, env={"LMMS_VAR_DATA_ROOT": str(data_root)})
    except LMMSEvalRunError as error:
        print(f"lmms-var demo: error: {error}", file=sys.stderr)
        return 1
    print()
    print(render(build_leaderboard([load_run(folder) for folder in folders]), "md"))
    records = [json.loads(line) for line in diagnostics.read_text().splitlines() if line.strip()]
    print(
        f"\nWhat VAR did in the VAR run: {summarise(records, diagnostics).removeprefix('VAR diagnostics: ')}"
    )
    figure = output / "attention_map.png"
    model, processor = load_model(str(checkpoint), device="cpu", dtype="float32")
    config = VARConfig(sink_dims=spec.sink_dims, tau=TINY_TAU)
    prompt = data_prompts(data_root, num_samples=1)[0]
    figure_for_prompt(  # every row VAR may change: the last row alone may have no head VAR selects
        model,
        processor,
        prompt,
        config,
        figure,
        model_name="tiny demo model",
        settings=MapSettings(rows="all"),
        note=RANDOM_MODEL_NOTE,
    )
    print(f"Attention on the image before and after VAR, for one demo doc: {figure}")
    print(DISCLAIMER)
    print(f"\nRecreate the table: lmms-var leaderboard {' '.join(str(folder) for folder in folders)}")
    return 0
