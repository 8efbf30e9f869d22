"""The README runs as written: every command in its code blocks, and every line it quotes as output.

A command is a code-block line starting with one of `COMMAND_STARTS` (a `$ ` prompt is dropped; `\\`
continues a line). It runs through bash in a scratch folder laid out like a checkout (`tasks`,
`configs`, `benchmarks`, `Makefile`), with the block's `export`s, after `STAND_INS` has put tiny
checkpoints and synthetic data in place of Hub models and data paths; lmms-eval runs get a small
`--limit` and short answers. It must exit as the README implies: status 2 when the README quotes a
usage error (`... error: ...`), `EXIT_STATUS` where the README says otherwise, else 0, and an lmms-eval
run must write its results JSON (lmms-eval exits 0 even when evaluation fails).

Lines of a block that follow a command are what the README says it prints; a block without a command
is output too, and `QUOTED_OUTPUT` names the command that prints it (or why it is not output). Each
quoted line must match a line of the command's output, in order: `...` stands for any text, runs of
spaces count as one, loguru's time stamp and source line numbers (`module:function:LINE`) and 16-hex
settings hashes are not compared.

A command that cannot run here (a GPU, the Hub, a synopsis) is listed in `NOT_RUN` by its first words
with the reason, so a new command cannot slip by unlisted: adding one to the README means it runs
here, or one row in `NOT_RUN`.
"""

import difflib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

from lmms_var.testing.spatial_data import write_spatial_root
from tests.conftest import TINY_SPEC, TINY_TAU

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
COMMAND_STARTS = ("lmms-eval", "lmms-var", "accelerate launch", "torchrun", "python benchmarks/", "make")
LMMS_EVAL_STARTS = ("lmms-eval", "accelerate launch", "torchrun")

# README commands not run here, by their first words, and why.
NOT_RUN = {
    "make test": "runs the whole suite, this test included",
    "accelerate launch --num_processes 8": "eight GPUs, and checkpoints from the Hub",
    "lmms-eval --model qwen2_5_vl_var --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,p=0.6 --tasks blink": (
        "lmms-eval's BLINK comes from the Hub"
    ),
    "lmms-eval --config configs/sweep_": (
        "the sweeps load Qwen2.5-VL-7B and BLINK from the Hub; tests/leaderboard/test_sweep_configs.py "
        "runs their items with lmms-eval's dummy model"
    ),
    "lmms-var leaderboard results/": "reads the runs of the GPU and Hub commands above it",
    "lmms-var leaderboard outputs/": "reads the runs of the GPU and Hub commands above it",
    "lmms-var leaderboard RUN_DIR...": "a synopsis: [optional] arguments",
    "lmms-var show --model Qwen/Qwen2.5-VL-7B-Instruct --image a.jpg [--image b.jpg ...]": (
        "a synopsis: [optional] arguments"
    ),
}
# Commands that say what they say only on some machines.
NEEDS_NO_GPU = ("lmms-var find-sink-dims --model ckpt --device cuda",)
# Exit statuses the README gives in words.
EXIT_STATUS = {"lmms-var check-data /data/spatial_v2": 1}
# Blocks without a command: the command printing them (its first words), or why they are not output.
QUOTED_OUTPUT = {
    "Building the constructed checkpoint and synthetic data in": "make demo",
    "image 1 (": "lmms-var show --model demo/constructed_checkpoint",
}
NOT_OUTPUT = {
    "from lmms_var import VARConfig": "Python code (the API's own tests run it)",
    "from lmms_var import AdaptVisConfig": "Python code (tests/patch/test_interventions.py runs it)",
    '{"model": "demo/constructed_checkpoint"': "an abbreviated excerpt of attention.json, whose fields tests/attention_maps check",
    "lmms_var/": "the source tree",
    "| run | spatial_blink_counting | spatial_sat2 |": (
        "a table of synthetic runs, which tests/leaderboard/test_methods.py builds and checks"
    ),
}
# lmms-eval runs: at most this many docs per task unless the command sets --limit or runs lmms-eval's
# instant dummy model (whose examples count docs), and short answers.
LIMIT = 2
SHORT_ANSWERS = ("--gen_kwargs", "max_new_tokens=4")
# The journal's example: its first run is killed after this many batches (tests/models/kill_switch).
KILLED_FIRST = {"lmms-eval --model qwen2_5_vl_var --model_args pretrained=...,": 5}
KILL_SWITCH = REPOSITORY / "tests" / "models" / "kill_switch"


@dataclass
class Command:
    """One README command: where it is, its text as written, the block's exports, its quoted output."""

    line: int
    text: str
    exports: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    def words(self) -> str:
        return " ".join(self.text.split())

    def starts(self, prefixes) -> str | None:
        return next((prefix for prefix in prefixes if self.words().startswith(prefix)), None)

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.words()[:100]}"


@dataclass
class Block:
    line: int
    lines: list[tuple[int, str]]


def code_blocks(text: str) -> list[Block]:
    """Fenced blocks, and indented ones (four spaces after a blank line, or more inside a list)."""
    blocks, current, fenced, previous_blank = [], None, False, True
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            if fenced:
                blocks.append(current)
            current, fenced = (None, False) if fenced else (Block(number + 1, []), True)
        elif fenced:
            current.lines.append((number, line))
        elif line.startswith("    ") and (current is not None or previous_blank):
            current = current or Block(number, [])
            current.lines.append((number, line))
        elif not line.strip() and current is not None:
            current.lines.append((number, line))
        else:
            if current is not None:
                blocks.append(current)
            current = None
        previous_blank = not line.strip()
    return [block for block in blocks if any(line.strip() for _, line in block.lines)]


EXPORT = re.compile(r"^(?:export )?([A-Z_][A-Z0-9_]*)=(\S+)(?:\s+#.*)?$")


def commands_and_outputs(blocks: list[Block]) -> tuple[list[Command], list[Block]]:
    """The commands (their quoted output attached) and the blocks that hold no command."""
    commands, outputs = [], []
    for block in blocks:
        found: list[Command] = []
        exports: dict[str, str] = {}
        continued = None
        # With `$ ` prompts, only prompted lines are commands (an error line may start with "lmms-var").
        starts = ("$ ",) if any(line.strip().startswith("$ ") for _, line in block.lines) else COMMAND_STARTS
        for number, raw in block.lines:
            line = raw.strip()
            if continued is not None:
                continued.text += " " + line.rstrip("\\").strip()
                continued = continued if line.endswith("\\") else None
            elif not line or line.startswith("#"):
                continue
            elif line.startswith(starts):
                command = Command(number, line.removeprefix("$ ").rstrip("\\").strip(), dict(exports))
                found.append(command)
                continued = command if line.endswith("\\") else None
            elif (export := EXPORT.match(line)) and not found:
                exports[export[1]] = export[2]
            elif found:
                found[-1].output.append(line)
            else:
                break
        commands += found
        if not found:
            outputs.append(block)
    return commands, outputs


def readme() -> tuple[list[Command], list[Block]]:
    return commands_and_outputs(code_blocks(README.read_text()))


def first_line(block: Block) -> str:
    return next(line.strip() for _, line in block.lines if line.strip())


def block_lines(block: Block) -> list[str]:
    return [line.strip() for _, line in block.lines if line.strip()]


# --- matching quoted output -------------------------------------------------------------------------

COLOURS = re.compile(r"\x1b\[[0-9;]*m")
# Up to a loguru time stamp: a progress bar may share the log line's terminal line.
LOG_TIME = re.compile(r"^.*?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \| ")
SOURCE_LINE = re.compile(r"(?<=\w):\d+ - ")
SETTINGS_HASH = re.compile(r"\b[0-9a-f]{16}\b")


def _normal(line: str) -> str:
    line = LOG_TIME.sub("", " ".join(COLOURS.sub("", line).split()))
    return SETTINGS_HASH.sub("<hash>", SOURCE_LINE.sub(":<line> - ", line))


def unmatched_lines(quoted: list[str], printed: str) -> list[str]:
    """The quoted lines that match no printed line after the previous quoted line's match."""
    lines = [_normal(line) for line in printed.splitlines()]
    missing, start = [], 0
    for line in quoted:
        pattern = re.compile(".*".join(re.escape(part) for part in _normal(line).split("...")))
        index = next((i for i in range(start, len(lines)) if pattern.fullmatch(lines[i])), None)
        if index is None:
            missing.append(line)
        else:
            start = index + 1
    return missing


def closest_line(quoted: str, printed: str) -> str | None:
    """The printed line most like a quoted one, to show what changed."""
    lines = [_normal(line) for line in printed.splitlines()]
    return next(iter(difflib.get_close_matches(_normal(quoted), lines, n=1, cutoff=0.5)), None)


# --- fast checks: the bookkeeping, and the matching itself --------------------------------------------


def test_every_command_runs_here_or_is_listed_with_a_reason():
    commands, outputs = readme()
    assert commands, "no command found in README.md"
    for command in commands:  # a `$ ` prompt introduces only commands this test knows how to run
        assert command.words().startswith(COMMAND_STARTS), f"{command}: not a command this test runs"
    # Every listed exclusion still names a README command (a stale row hides nothing, but misleads).
    for listed in [*NOT_RUN, *NEEDS_NO_GPU, *EXIT_STATUS, *KILLED_FIRST, *QUOTED_OUTPUT.values()]:
        assert any(command.words().startswith(listed) for command in commands), (
            f"no README command {listed!r}"
        )
    for block in outputs:
        start = first_line(block)
        known = [prefix for prefix in (*QUOTED_OUTPUT, *NOT_OUTPUT) if start.startswith(prefix)]
        assert known, (
            f"README.md:{block.line}: a block without a command; add it to QUOTED_OUTPUT or NOT_OUTPUT"
        )


def test_quoted_lines_match_with_ellipses_and_without_time_stamps():
    printed = "2026-01-02 03:04:05.678 | WARNING  | lmms_var.x:f:41 - a 0123456789abcdef b\nwrote c"
    assert unmatched_lines(["WARNING | lmms_var.x:f:7 - a fedcba9876543210 ...", "wrote c"], printed) == []
    assert unmatched_lines(["wrote c", "WARNING | ..."], printed) == ["WARNING | ..."]  # order counts
    assert unmatched_lines(["wrote d"], printed) == ["wrote d"]
    assert closest_line("wrote d", printed) == "wrote c"


# --- running the commands ---------------------------------------------------------------------------


def _replace(text: str, replacements: dict[str, str]) -> str:
    """Each key of `replacements` by its value where it starts a word or path, in one pass (a value may
    contain another key), longest first."""
    keys = "|".join(map(re.escape, sorted(replacements, key=len, reverse=True)))
    return re.sub(rf"(?<![\w./-])(?:{keys})", lambda found: replacements[found[0]], text)


@dataclass
class Workspace:
    """The scratch folder commands run in, and what stands in for the Hub there."""

    root: Path
    env: dict[str, str]
    stand_ins: dict[str, str]
    paths: dict[str, str]

    def substituted(self, text: str) -> str:
        """`text` with the stand-ins and paths in place."""
        return _replace(text, self.stand_ins | self.paths)

    def as_printed(self, quoted: list[str]) -> list[str]:
        """Quoted output as the run here prints it: with this folder's paths."""
        return [_replace(line, self.paths) for line in quoted]

    def run(self, command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            timeout=900,
        )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_checkpoint, tiny_checkpoints) -> Workspace:
    root = tmp_path_factory.mktemp("readme")
    for name in ("tasks", "configs", "benchmarks", "Makefile"):
        (root / name).symlink_to(REPOSITORY / name)
    (root / "ckpt").symlink_to(tiny_checkpoint)
    (root / "jdemo").mkdir()
    (root / "jdemo" / "ckpt").symlink_to(tiny_checkpoint)
    (root / "outdir").mkdir()
    (root / "tmp").mkdir()
    # 8 docs per BLINK sub-task, as the leaderboard example counts them.
    spatial = write_spatial_root(root / "data" / "spatial", docs_per_subtask=8, sat2_docs=2)
    write_check_data_example(root / "data" / "spatial_v2")
    bin_dir = Path(sys.executable).parent
    env = {key: value for key, value in os.environ.items() if not key.startswith("LMMS_VAR_")}
    env |= {
        "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}",
        "PYTHONPATH": str(REPOSITORY),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "LMMS_VAR_CACHE_DIR": str(root / "cache"),
        "TMPDIR": str(root / "tmp"),
        "MPLBACKEND": "Agg",
    }
    bash_semicolon = "\\;"
    tiny_args = f"sink_dims={bash_semicolon.join(map(str, TINY_SPEC.sink_dims))},tau={TINY_TAU:g}"
    stand_ins = {
        # Hub models: the tiny checkpoint of the family, its planted sinks and their tau.
        "pretrained=Qwen/Qwen2.5-VL-7B-Instruct": f"pretrained=ckpt,{tiny_args}",
        "--model Qwen/Qwen2.5-VL-72B-Instruct": f"--model ckpt --tau {TINY_TAU:g}",
        "--dims 458 2570": "--dims " + " ".join(map(str, TINY_SPEC.sink_dims)),
        # "a checkpoint of yours": one whose folder lmms-eval names jdemo__ckpt, as the README shows.
        "pretrained=...,": "pretrained=jdemo/ckpt,",
        # make: this environment, installed already (CI's .venv, or the one running the tests).
        "make ": f"make VENV={sys.prefix} -o {sys.prefix}/.installed ",
    }
    paths = {
        "/data/spatial_v2": str(root / "data" / "spatial_v2"),
        "/data/spatial": str(spatial),
        "/tmp/": f"{root / 'tmp'}/",  # the commands' $TMPDIR (the demo's default folder)
    }
    return Workspace(root, env | {"LMMS_VAR_DATA_ROOT": str(spatial)}, stand_ins, paths)


def write_check_data_example(root: Path) -> Path:
    """The data root of the README's `lmms-var check-data` example: BLINK's five spatial sub-tasks, 8
    docs each, three of the records bad (an image too wide for Qwen-VL, a misspelt sub-task, a null
    question), no SAT-2."""
    write_spatial_root(root, docs_per_subtask=8, sat2_docs=0)
    jsonl = root / "spatial_reasoning" / "blink" / "blink_validation.jsonl"
    lines = jsonl.read_text().splitlines()
    records = {json.loads(line)["id"]: number for number, line in enumerate(lines)}
    wide = root / "spatial_reasoning" / "blink" / "images" / "Spatial_Relation_3_1.png"
    Image.new("RGB", (6000, 20), "white").save(wide)
    misspelt = json.loads(lines[records["Spatial_Relation_5"]])
    misspelt["sub_task"] = "spatial_relation"
    lines[records["Spatial_Relation_5"]] = json.dumps(misspelt)
    no_question = json.loads(lines[records["Relative_Depth_1"]])
    no_question["conversations"][0]["value"] = None
    lines[records["Relative_Depth_1"]] = json.dumps(no_question)
    jsonl.write_text("\n".join(lines) + "\n")
    return root


def runnable(command: Command) -> str:
    """The command as run: stand-ins in place, and lmms-eval runs kept small."""
    text = command.text
    if command.starts(LMMS_EVAL_STARTS):
        if "--limit" not in text and "--model dummy" not in text:
            text += f" --limit {LIMIT}"
        if "--gen_kwargs" not in text:
            text += " " + " ".join(SHORT_ANSWERS)
    return text


def expected_status(command: Command) -> int:
    if prefix := command.starts(EXIT_STATUS):
        return EXIT_STATUS[prefix]
    return 2 if any(": error: " in line for line in command.output) else 0


def results_files(root: Path, command: str) -> set[Path]:
    words = shlex.split(command, comments=True)
    if "--output_path" not in words:
        return set()
    return set((root / words[words.index("--output_path") + 1]).rglob("*_results.json"))


def what_it_printed(text: str, printed: str) -> str:
    """The command as run, its error lines (lmms-eval's may be far from the end) and its last lines."""
    lines = [COLOURS.sub("", line) for line in printed.splitlines()]
    errors = [line for line in lines if "ERROR" in line or "Error" in line][:10]
    return (
        f"ran: {text}\n--- errors ---\n"
        + "\n".join(errors)
        + "\n--- last lines ---\n"
        + "\n".join(lines[-30:])
    )


def run_command(workspace: Workspace, command: Command, quoted_elsewhere: list[str]) -> list[str]:
    """Run one README command; the ways it differs from what the README says."""
    text = workspace.substituted(runnable(command))
    env = {name: workspace.substituted(value) for name, value in command.exports.items()}
    before = results_files(workspace.root, text)
    if kill_after := KILLED_FIRST.get(command.starts(KILLED_FIRST) or ""):
        killed = {"PYTHONPATH": f"{KILL_SWITCH}{os.pathsep}{REPOSITORY}"}
        killed["JOURNAL_TEST_KILL_AFTER_BATCHES"] = str(kill_after)
        first = workspace.run(text, env | killed)
        if first.returncode not in (-9, 137):
            printed = what_it_printed(text, first.stdout + first.stderr)
            return [f"its first run was to be killed, but it exited {first.returncode}", printed]
        before = results_files(workspace.root, text)
    done = workspace.run(text, env)
    printed = done.stdout + done.stderr
    problems = []
    if done.returncode != expected_status(command):
        problems.append(f"exit status {done.returncode}, expected {expected_status(command)}")
    wrote = results_files(workspace.root, text) - before
    if command.starts(LMMS_EVAL_STARTS) and "--output_path" in text and not wrote:
        problems.append("lmms-eval wrote no results JSON")
    for line in unmatched_lines(workspace.as_printed(command.output + quoted_elsewhere), printed):
        problems.append(f"it does not print: {line}\n    closest printed line: {closest_line(line, printed)}")
    if problems:
        problems.append(what_it_printed(text, printed))
    return problems


@pytest.mark.slow
def test_readme_commands_run_as_written(workspace):
    commands, outputs = readme()
    quoted: dict[str, list[str]] = {}
    for block in outputs:
        start = first_line(block)
        for prefix, producer in QUOTED_OUTPUT.items():
            if start.startswith(prefix):
                quoted.setdefault(producer, []).extend(block_lines(block))
    failures = []
    for command in commands:
        if command.starts(NOT_RUN) or (command.starts(NEEDS_NO_GPU) and torch.cuda.is_available()):
            continue
        elsewhere = next((lines for producer, lines in quoted.items() if command.starts([producer])), [])
        if problems := run_command(workspace, command, elsewhere):
            failures.append(f"{command}\n  " + "\n  ".join(problems))
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_a_bad_model_arg_as_lmms_eval_prints_it(workspace):
    """The table's first row through lmms-eval's CLI: the line after "Error during evaluation:", and exit
    status 0 (lmms-eval 0.7.3's, whatever happened), as the README says."""
    row, line = bad_args_table()[0]
    text = f"lmms-eval --model {MODEL} --model_args pretrained=ckpt,{BAD_ARGS[row].model_args} "
    text += "--tasks spatial_blink_counting --include_path tasks"
    command = Command(0, text, output=[f"...Error during evaluation: {line}..."])
    assert not run_command(workspace, command, [])


# --- the bad-model-args table -----------------------------------------------------------------------


@dataclass(frozen=True)
class BadArgs:
    """How a row of the README's bad-model-args table is produced: the model args after a tiny
    checkpoint (`pretrained` only where the row gives its own), lmms-eval's --batch_size, and the
    environment the row names."""

    model_args: str
    batch_size: str | int = 1  # lmms-eval's default, passed to every model
    model: str = "qwen2_5_vl_var"
    family: str = "qwen2_5_vl"  # whose tiny checkpoint the row runs on
    env: tuple[tuple[str, str], ...] = ()
    needs_no_gpu: bool = False


BAD_ARGS = {
    "`p=2`": BadArgs("p=2"),
    "`tau=inf`": BadArgs("tau=inf"),
    "`sink_dims=17,93`": BadArgs("sink_dims=17,93"),
    "`sink_dims=99999`": BadArgs("sink_dims=99999"),
    "`enable_thinking=maybe` (`qwen3_vl_var`)": BadArgs(
        "enable_thinking=maybe", model="qwen3_vl_var", family="qwen3_vl"
    ),
    "`rh0=0.3`": BadArgs("rh0=0.3"),
    "`pretrained=/nonexistent`": BadArgs("pretrained=/nonexistent"),
    "`pretrained=<a LLaVA folder>`": BadArgs("pretrained=llava"),
    "`diagnostics_path=a_file/diag.jsonl`": BadArgs("diagnostics_path=a_file/diag.jsonl"),
    "`diagnostics_path=/proc/nonexistent/x.jsonl` (as root, whom permission bits let through)": BadArgs(
        "diagnostics_path=/proc/nonexistent/x.jsonl"
    ),
    "`sink_dims=auto`, `$LMMS_VAR_CACHE_DIR` a file": BadArgs(
        "sink_dims=auto", env=(("LMMS_VAR_CACHE_DIR", "a_file"),)
    ),
    "`min_pixels=1000000,max_pixels=12544`": BadArgs("min_pixels=1000000,max_pixels=12544"),
    "`device=cuda` on a machine without a GPU": BadArgs("device=cuda", needs_no_gpu=True),
    "`batch_size=2` with `--batch_size 4`": BadArgs("batch_size=2", batch_size="4"),
    "`alpha=1.5`": BadArgs("alpha=1.5"),
    "`method=scalingvis`": BadArgs("method=scalingvis"),
    "`method=pai,end_layer=40`": BadArgs("method=pai,end_layer=40"),
}
# The table's lines give the folder the run started in as this, and elide the model's prefix with "...".
TABLE_FOLDER = "/tmp/rb"
MODEL = "qwen2_5_vl_var"


def bad_args_table() -> list[tuple[str, str]]:
    """(first cell, the quoted line) of each row of the table after "**Bad model args**"."""
    text = README.read_text()
    rows = text[text.index("**Bad model args**") :].split("\n\n")[1].splitlines()[2:]
    table = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        table.append((cells[0], re.match(r"`([^`]*)`", cells[1])[1]))
    return table


def test_bad_model_args_table_is_what_the_models_raise(tmp_path, monkeypatch, a_file, tiny_checkpoints):
    """Each row's line is the message our model raises, which lmms-eval prints after "Error during
    evaluation:" (the slow test runs the first row through the CLI). The model class is built as
    lmms-eval builds it: `create_from_arg_string` with lmms-eval's --batch_size and --device."""
    from lmms_eval.models import get_model

    table = bad_args_table()
    assert [row for row, _ in table] == list(BAD_ARGS), "a row was added or changed: update BAD_ARGS"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llava").symlink_to(tiny_checkpoints("llava"))
    for row, line in table:
        setup = BAD_ARGS[row]
        if setup.needs_no_gpu and torch.cuda.is_available():
            continue
        for name, value in setup.env:
            monkeypatch.setenv(name, value)
        model_args = setup.model_args
        if not model_args.startswith("pretrained="):
            model_args = f"pretrained={tiny_checkpoints(setup.family)},{model_args}"
        options = {"batch_size": setup.batch_size, "max_batch_size": None, "device": None}
        with pytest.raises(Exception) as raised:
            get_model(setup.model).create_from_arg_string(model_args, options)
        expected = line.replace("... ", f"{setup.model}: invalid model_args: ", 1).replace(
            TABLE_FOLDER, str(tmp_path)
        )
        assert not unmatched_lines([expected], str(raised.value)), f"{row}: {raised.value}"
        for name, _ in setup.env:
            monkeypatch.delenv(name)
