"""Each output format, parsed back: headers, run names, values, deltas, p-values and best marks."""

import csv
import io
import re
from html.parser import HTMLParser

import pytest

from lmms_var.leaderboard import FORMATS, build_leaderboard, load_run, render
from lmms_var.leaderboard.formats import format_number
from tests.leaderboard.results_files import doc_samples, write_run

CELL = re.compile(r"^(?P<value>-?\d+\.\d+)(?: \((?P<delta>[+-]\d+\.\d+)(?:, p=(?P<p>\d\.\d+))?\))?$")


@pytest.fixture
def board(tmp_path):
    """Baseline and two VAR runs; a group, a task one run lacks, samples for task a only, `|` and `_` in names."""
    specs = [
        ("var=false", {"a": {"acc": 0.5}, "b_x": {"acc": 0.25}, "grp": {"acc": 0.375}}, [0, 1, 0, 1]),
        (
            "var=true,p=0.4,note=x|y",
            {"a": {"acc": 0.75}, "b_x": {"acc": 0.5}, "grp": {"acc": 0.625}},
            [1, 1, 0, 1],
        ),
        ("var=true,p=0.8,note=z", {"a": {"acc": 0.25}, "grp": {"acc": 0.25}}, [0, 0, 0, 1]),
    ]
    runs = []
    for index, (args, results, scores) in enumerate(specs):
        folder = tmp_path / f"run{index}"
        write_run(
            folder,
            "qwen2_5_vl_var",
            args,
            results,
            groups=("grp",),
            samples={"a": doc_samples("acc", scores)},
        )
        runs.append(load_run(folder))
    return build_leaderboard(runs)


def _expected_rows(board):
    return [
        [
            name,
            *(
                format_number(cell.value, column) if cell.value is not None else None
                for cell, column in zip(row, board.columns, strict=True)
            ),
        ]
        for name, row in zip(board.runs, board.cells, strict=True)
    ]


def _check_cells(board, rows, bold):
    """rows: [name, cell text...] as parsed; `bold(text)` -> (is_bold, text without the mark)."""
    assert [row[0] for row in rows] == board.runs
    for row, cells in zip(rows, board.cells, strict=True):
        for text, cell, column in zip(row[1:], cells, board.columns, strict=True):
            is_bold, text = bold(text)
            if cell.value is None:
                assert text in ("–", "--")
                continue
            match = CELL.match(text)
            assert match, text
            assert match["value"] == format_number(cell.value, column)
            assert is_bold == cell.best
            assert (match["delta"] is None) == (cell.delta is None)
            if cell.delta is not None:
                assert float(match["delta"]) == pytest.approx(cell.delta, abs=0.005)
            assert (match["p"] is None) == (cell.significance is None)
            if cell.significance is not None:
                assert float(match["p"]) == pytest.approx(cell.significance.p_value, abs=0.0005)


def test_fixture_has_everything_the_formats_must_show(board):
    cells = [cell for row in board.cells for cell in row]
    assert any(cell.value is None for cell in cells)
    assert any(cell.best for cell in cells)
    assert any(cell.significance for cell in cells)
    assert any(cell.delta is not None and cell.significance is None for cell in cells)


def test_markdown_parses_back(board):
    lines = render(board, "md").splitlines()
    header = [part.strip() for part in lines[0].strip("|").split("|")]
    assert header == ["run", "a", "b_x", "grp"]
    assert set(lines[1]) <= set("|-:")
    rows = [
        [part.strip().replace("\\|", "|") for part in re.split(r"(?<!\\)\|", line.strip("|"))]
        for line in lines[2:5]
    ]
    _check_cells(board, rows, lambda text: (text.startswith("**"), re.sub(r"\*\*(.+?)\*\*", r"\1", text)))
    assert "baseline qwen2_5_vl_var var=false" in lines[-1]


def test_csv_is_plain_values(board):
    rows = list(csv.reader(io.StringIO(render(board, "csv"))))
    assert rows[0] == ["run", "a", "b_x", "grp"]
    assert rows[1:] == [
        [value if value is not None else "" for value in row] for row in _expected_rows(board)
    ]


class _TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.caption, self._cell, self._in_caption = [], "", None, False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "strong":
            self._cell += "<b>"
        elif tag == "caption":
            self._in_caption = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell)
            self._cell = None
        elif tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._in_caption:
            self.caption += data


def test_html_parses_back(board):
    parser = _TableParser()
    parser.feed(render(board, "html"))
    assert parser.rows[0] == ["run", "a", "b_x", "grp"]
    _check_cells(board, parser.rows[1:], lambda text: (text.startswith("<b>"), text.removeprefix("<b>")))
    assert "baseline qwen2_5_vl_var var=false" in parser.caption


def test_latex_parses_back(board):
    text = render(board, "latex")
    body = text.split("\\midrule\n")[1].split("\\bottomrule")[0]
    header = text.split("\\toprule\n")[1].split(" \\\\")[0]
    assert header.split(" & ") == ["run", "a", r"b\_x", "grp"]

    def unescape(cell):
        return cell.strip().replace("\\_", "_").replace("\\textbar{}", "|")

    rows = [
        [unescape(cell) for cell in line.removesuffix(" \\\\").split(" & ")]
        for line in body.strip().splitlines()
    ]
    bold = re.compile(r"\\textbf\{(.+?)\}")
    _check_cells(board, rows, lambda cell: (cell.startswith("\\textbf"), bold.sub(r"\1", cell)))
    assert text.startswith("\\begin{table}") and text.rstrip().endswith("\\end{table}")


def test_unknown_format_names_the_choices(board):
    assert FORMATS == ("md", "csv", "html", "latex")
    with pytest.raises(ValueError, match="--format must be one of md, csv, html, latex, got 'pdf'"):
        render(board, "pdf")
