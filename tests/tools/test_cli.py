"""The `lmms-var` command itself."""

from tests.conftest import modules_after


def test_the_parser_and_its_help_import_no_torch():
    """`lmms-var --help` (and a typo's usage message) must not wait seconds for torch to import."""
    loaded = modules_after("from lmms_var.tools.cli import build_parser; build_parser()")
    assert "torch" not in loaded
