"""`eomt-ood --version` prints the installed distribution's version, which pyproject.toml takes from the package."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

import eomt_ood
from eomt_ood.cli import app


def test_version_option_prints_the_installed_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    # The metadata was written by the build backend at install time, not read from the module at run time.
    assert result.output == f"eomt-ood {version('eomt-ood')}\n"
    assert version("eomt-ood") == eomt_ood.__version__


def test_version_option_runs_no_command():
    result = CliRunner().invoke(app, ["--version", "models"])
    assert result.exit_code == 0
    assert result.output.count("\n") == 1
