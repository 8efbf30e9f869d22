"""`lmms-var leaderboard` through the real command parser: formats, files, plot and errors."""

import csv
import io

from PIL import Image

from lmms_var.tools.cli import main
from tests.leaderboard.results_files import METHOD_TASKS, doc_samples, write_method_runs, write_run


def _two_runs(tmp_path):
    write_run(
        tmp_path / "base",
        "qwen2_5_vl_var",
        "var=false",
        {"t": {"acc": 0.5}},
        samples={"t": doc_samples("acc", [0, 1])},
    )
    write_run(
        tmp_path / "var",
        "qwen2_5_vl_var",
        "var=true,p=0.4",
        {"t": {"acc": 1.0}},
        samples={"t": doc_samples("acc", [1, 1])},
    )
    return [str(tmp_path / "base"), str(tmp_path / "var")]


def test_markdown_to_stdout_by_default(tmp_path, capsys):
    assert main(["leaderboard", *_two_runs(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | t |"
    assert lines[2] == "| qwen2_5_vl_var var=false | 50.00 |"
    assert lines[3] == "| qwen2_5_vl_var var=true p=0.4 | **100.00** (+50.00, p=1.000) |"


def test_csv_to_file_and_plot(tmp_path, capsys):
    runs = _two_runs(tmp_path)
    code = main(
        [
            "leaderboard",
            *reversed(runs),
            "--format",
            "csv",
            "--output",
            str(tmp_path / "t.csv"),
            "--plot",
            str(tmp_path / "d.png"),
        ]
    )
    assert code == 0 and capsys.readouterr().out == ""
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert rows == [
        {"run": "qwen2_5_vl_var var=true p=0.4", "t": "100.00"},
        {"run": "qwen2_5_vl_var var=false", "t": "50.00"},
    ]
    with Image.open(tmp_path / "d.png") as image:
        assert image.format == "PNG"


def test_bad_input_exits_2_with_a_message_naming_it(tmp_path, capsys):
    runs = _two_runs(tmp_path)
    assert main(["leaderboard", runs[0], str(tmp_path / "nowhere")]) == 2
    assert "lmms-var leaderboard: error: RUN_DIR" in capsys.readouterr().err
    assert main(["leaderboard", *runs, "--baseline", "qwen2_5_vl"]) == 2
    assert "--baseline 'qwen2_5_vl' names no single run" in capsys.readouterr().err
    assert main(["leaderboard", *runs, runs[1]]) == 2
    assert f"RUN_DIR {runs[1]} is given twice: it would be compared with itself" in capsys.readouterr().err


def test_a_truncated_samples_file_is_named_and_the_table_still_printed(tmp_path, capsys):
    runs = _two_runs(tmp_path)
    [samples] = (tmp_path / "var").glob("*_samples_t.jsonl")
    samples.write_text(samples.read_text()[:-20])
    assert main(["leaderboard", *runs]) == 0
    out = capsys.readouterr().out
    assert "| qwen2_5_vl_var var=true p=0.4 | **100.00** (+50.00) |" in out
    assert f"{samples}:2: not a JSON line, the file may be truncated" in out
    assert "t has no paired test against this file." in out


def test_other_doc_sets_are_marked_in_the_table_and_noted_under_it(tmp_path, capsys):
    write_run(
        tmp_path / "base",
        "qwen2_5_vl_var",
        "var=false",
        {"t": {"acc": 0.5}},
        samples={"t": doc_samples("acc", [0, 1, 0, 1])},
    )
    write_run(
        tmp_path / "var",
        "qwen2_5_vl_var",
        "var=true",
        {"t": {"acc": 1.0}},
        samples={"t": doc_samples("acc", [1, 1])},
    )
    assert main(["leaderboard", str(tmp_path / "base"), str(tmp_path / "var")]) == 0
    out = capsys.readouterr().out
    assert "| qwen2_5_vl_var var=false | 50.00 |" in out  # no best over different doc sets
    assert "| qwen2_5_vl_var var=true | 100.00† (+50.00, p=1.000) |" in out
    assert out.rstrip().endswith(
        "† doc set differs from the baseline's: t, qwen2_5_vl_var var=true: 2 shared / 4 baseline / 2 run docs; "
        "delta and p-value over the 2 shared docs."
    )
    assert main(["leaderboard", str(tmp_path / "base"), str(tmp_path / "var"), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[2] == "qwen2_5_vl_var var=true,100.00"
    assert captured.err.startswith("lmms-var leaderboard: note: † doc set differs from the baseline's: t,")


def test_an_unknown_metric_exits_2_naming_the_metrics(tmp_path, capsys):
    assert main(["leaderboard", *_two_runs(tmp_path), "--metric", "nosuchmetric"]) == 2
    assert "error: metric 'nosuchmetric': no task reports it; the runs report acc" in capsys.readouterr().err


def test_outputs_are_checked_before_any_run_is_read(tmp_path, capsys):
    """The run folders do not exist: an output that cannot be written is reported first."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    missing_runs = [str(tmp_path / "no_run")]
    for option, path, message in [
        ("--output", tmp_path, f"--output {tmp_path} is a folder; give a file path"),
        ("--plot", blocker / "d.png", f"--plot {blocker / 'd.png'} cannot be created: {blocker} is a file"),
        ("--plot", tmp_path / "d.xyz", f"--plot {tmp_path / 'd.xyz'}: give a file ending in one of "),
    ]:
        assert main(["leaderboard", *missing_runs, option, str(path)]) == 2
        captured = capsys.readouterr()
        assert f"lmms-var leaderboard: error: {message}" in captured.err and captured.out == ""
    assert ".png" in captured.err and ".pdf" in captured.err


def test_outputs_go_into_new_folders(tmp_path):
    runs = _two_runs(tmp_path)
    table, plot = tmp_path / "new" / "table.md", tmp_path / "plots" / "d.png"
    assert main(["leaderboard", *runs, "--output", str(table), "--plot", str(plot)]) == 0
    assert table.read_text().startswith("| run | t |") and plot.stat().st_size > 0


def test_five_methods_in_one_table_and_plot(tmp_path, capsys):
    """Baseline, VAR, ScalingVis, AdaptVis and PAI runs: one table of five rows, deltas and p-values."""
    folders = write_method_runs(tmp_path / "runs")
    plot = tmp_path / "methods.png"
    assert main(["leaderboard", *map(str, folders), "--plot", str(plot)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| qwen2_5_vl_var")]
    assert len(rows) == 5 and rows[0].startswith("| qwen2_5_vl_var var=false |")
    for row, method in zip(
        rows[1:], ("var=true", "method=scalingvis", "method=adaptvis", "method=pai"), strict=True
    ):
        assert method in row and row.count(", p=") == len(METHOD_TASKS)
    with Image.open(plot) as image:
        assert image.format == "PNG"
