"""`eomt-ood --help` lists every command beside its summary, the first paragraph of its help, wrapped by the
panel and not broken where the lines of the docstring end."""

from __future__ import annotations

import inspect

from typer.testing import CliRunner

from eomt_ood.cli import app


def test_help_lists_every_command_with_its_whole_summary_on_one_line():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(app.registered_commands) >= 10
    for info in app.registered_commands:
        summary = " ".join(inspect.getdoc(info.callback).split("\n\n")[0].split())
        assert any(f" {info.name} " in line and summary in line for line in lines), (info.name, summary)
