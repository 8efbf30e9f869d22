"""`lmms-var leaderboard` through the real command parser: formats, files, plot and errors."""

import csv
import io

from PIL import Image

from lmms_var.tools.cli import main
from tests.leaderboard.results_files import doc_samples, write_run


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
