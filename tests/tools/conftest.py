"""Fixtures of the `lmms-var` command's tests."""

import pytest

from lmms_var.tools.cli import main


@pytest.fixture
def cli_error(capsys):
    """`cli_error(argv)` -> what `lmms-var argv` printed to stderr, failing unless it exited with status 2
    (a usage error)."""

    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    return error
