"""Render a `Leaderboard` as Markdown, CSV, HTML or LaTeX.

md/html/latex cells read `62.50 (+4.17, p=0.031)`: the value, its delta against the baseline and the
paired test's p-value where both runs logged samples; the best cell of each column is bold. A `†`
after the value marks a doc set that differs from the baseline's, explained in the notes under the
table. CSV holds the values only, for scripts (the command prints the notes on stderr).
"""

import csv
import html
import io
import math
from collections.abc import Callable

from lmms_var.leaderboard.table import OTHER_DOCS, Cell, Column, Leaderboard

FORMATS = ("md", "csv", "html", "latex")
MISSING = "–"
NOT_A_NUMBER = "NaN"


def format_number(value: float, column: Column) -> str:
    """Percent with two decimals for accuracies, four decimals for any other metric, NaN as NaN."""
    if math.isnan(value):
        return NOT_A_NUMBER
    return f"{value:.2f}" if column.percent else f"{value:.4f}"


def _p_text(p_value: float) -> str:
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"


def _annotation(cell: Cell, column: Column) -> str:
    if cell.delta is None:
        return ""
    delta = format_number(cell.delta, column)
    parts = [delta if delta.startswith("-") else f"+{delta}"]
    if cell.significance is not None:
        parts.append(_p_text(cell.significance.p_value))
    return f" ({', '.join(parts)})"


def _caption(board: Leaderboard) -> str:
    metrics = ", ".join(dict.fromkeys(column.metric for column in board.columns))
    text = f"Metric: {metrics}; accuracies in percent; bold: best per column."
    if board.baseline is not None:
        text += (
            f" In brackets: difference to the baseline {board.runs[board.baseline]}, and the paired p-value"
            " (exact McNemar for 0/1 scores, else bootstrap) where both runs logged samples."
        )
    return text


def _caption_and_notes(board: Leaderboard) -> str:
    return " ".join([_caption(board), *board.notes])


def _cell_text(cell: Cell, column: Column, bold: str, escape: Callable[[str], str] = str) -> str:
    """`bold` is a `str.format` template for the best value; `escape` quotes text for the format."""
    if cell.value is None:
        return escape(MISSING)
    value = format_number(cell.value, column)
    mark = OTHER_DOCS if cell.other_docs else ""
    return (bold.format(value) if cell.best else value) + escape(mark + _annotation(cell, column))


def to_markdown(board: Leaderboard) -> str:
    header = ["run", *(column.task for column in board.columns)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(board.columns),
    ]
    for name, row in zip(board.runs, board.cells, strict=True):
        texts = [_cell_text(cell, column, "**{}**") for cell, column in zip(row, board.columns, strict=True)]
        lines.append("| " + " | ".join([name.replace("|", "\\|"), *texts]) + " |")
    return "\n".join(lines) + "".join(f"\n\n{text}" for text in [_caption(board), *board.notes]) + "\n"


def to_csv(board: Leaderboard) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", *(column.task for column in board.columns)])
    for name, row in zip(board.runs, board.cells, strict=True):
        values = [
            "" if cell.value is None else format_number(cell.value, column)
            for cell, column in zip(row, board.columns, strict=True)
        ]
        writer.writerow([name, *values])
    return buffer.getvalue()


def to_html(board: Leaderboard) -> str:
    header = "".join(f"<th>{html.escape(column.task)}</th>" for column in board.columns)
    rows = []
    for name, row in zip(board.runs, board.cells, strict=True):
        texts = [
            _cell_text(cell, column, "<strong>{}</strong>", html.escape)
            for cell, column in zip(row, board.columns, strict=True)
        ]
        rows.append(
            f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{text}</td>" for text in texts) + "</tr>"
        )
    return (
        "<table>\n"
        f"<caption>{html.escape(_caption_and_notes(board))}</caption>\n"
        f"<thead><tr><th>run</th>{header}</tr></thead>\n"
        "<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n"
    )


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    MISSING: "--",
    OTHER_DOCS: r"\textsuperscript{\dag}",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(char, char) for char in text)


def to_latex(board: Leaderboard) -> str:
    """A booktabs `table`: `\\usepackage{booktabs}` in the preamble."""
    header = " & ".join(["run", *(latex_escape(column.task) for column in board.columns)])
    rows = []
    for name, row in zip(board.runs, board.cells, strict=True):
        texts = [
            _cell_text(cell, column, r"\textbf{{{}}}", latex_escape)
            for cell, column in zip(row, board.columns, strict=True)
        ]
        rows.append(" & ".join([latex_escape(name), *texts]) + r" \\")
    return (
        "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                r"\begin{tabular}{l" + "r" * len(board.columns) + "}",
                r"\toprule",
                header + r" \\",
                r"\midrule",
                *rows,
                r"\bottomrule",
                r"\end{tabular}",
                r"\caption{" + latex_escape(_caption_and_notes(board)) + "}",
                r"\end{table}",
            ]
        )
        + "\n"
    )


RENDERERS = {"md": to_markdown, "csv": to_csv, "html": to_html, "latex": to_latex}


def render(board: Leaderboard, fmt: str) -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return RENDERERS[fmt](board)
