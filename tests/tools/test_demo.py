"""`lmms-var demo`: the offline workflow end to end through lmms-eval's real CLI."""

import json
import re

import pytest

from lmms_var.testing.demo import DISCLAIMER, RUNS
from lmms_var.tools.cli import main


@pytest.mark.slow
def test_demo_runs_every_method_and_prints_the_leaderboard(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| run | spatial_blink_")
    assert table[0].endswith("| spatial_blink |")
    names = [line.split(" | ")[0].removeprefix("| ") for line in table[2:]]
    assert names == [
        "qwen2_5_vl_var var=false",
        "qwen2_5_vl_var var=true p=0.6 tau=5.0 sink_dims=17;93",
        "qwen2_5_vl_var var=true method=scalingvis alpha=1.5",
        "qwen2_5_vl_var var=true method=adaptvis alpha_low=0.5 alpha_high=1.5 threshold=0.4",
        "qwen2_5_vl_var var=true method=pai alpha=0.2 gamma=1.1",
    ]
    # Every cell holds an accuracy in percent; the VAR row also its delta and, per task, a paired p-value.
    cells = [cell.strip() for cell in table[3].strip("|").split(" | ")[1:]]
    for cell in cells[:-1]:
        assert re.fullmatch(r"(\*\*)?\d+\.\d\d(\*\*)? \([+-]\d+\.\d\d, p=\d\.\d{3}\)", cell), cell
    # The constructed model's sinks hide the answer; VAR recovers enough of it to show over 100 docs.
    gain = re.fullmatch(r"\*\*(\d+\.\d\d)\*\* \(\+(\d+\.\d\d)\)", cells[-1])
    assert gain and float(gain[2]) >= 20.0, cells[-1]
    # VAR acted in the VAR run, as its diagnostics show.
    acted = re.search(
        r"What VAR did in the VAR run: (\d+) samples;.*redistributed attention in (\d+)/(\d+)", out
    )
    assert acted and int(acted[1]) == int(acted[3]) > 0 and int(acted[2]) > 0
    assert DISCLAIMER in out
    figure = tmp_path / "demo" / "attention_map.png"
    assert (
        f"Attention on the picture before and after VAR, for a doc whose answer VAR changed: {figure}" in out
    )
    maps = json.loads(figure.with_suffix(".json").read_text())
    assert maps["next_token"]["before"] != maps["next_token"]["after"]
    (image,) = maps["images"]
    assert image["sink_mass"]["after"] < image["sink_mass"]["before"]
    assert image["image_mass"]["after"] > image["image_mass"]["before"]
    plot = tmp_path / "demo" / "leaderboard.png"
    assert f"Each method's gain per task with its 95% interval: {plot}" in out and plot.stat().st_size > 0
    for name in RUNS:
        assert list((tmp_path / "demo" / "runs" / name).rglob("*_samples_spatial_blink_counting.jsonl"))


def test_demo_refuses_a_non_empty_output(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo", "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path} is not empty" in capsys.readouterr().err


def test_demo_refuses_an_output_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["demo", "--output", str(blocker)]) == 2
    assert f"--output {blocker} is a file; give a folder" in capsys.readouterr().err
