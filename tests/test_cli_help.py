"""`eomt-ood --help` lists every command, the main job first, beside its summary (the first paragraph of its
help), wrapped by the panel and not broken where the lines of the docstring end."""

from __future__ import annotations

import inspect

from typer.testing import CliRunner

from eomt_ood.cli import _HELP_ORDER, app


def test_help_lists_the_main_job_first_and_every_command_in_its_place():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    lines = result.output.splitlines()
    panel = lines[next(i for i, line in enumerate(lines) if "Commands" in line) + 1 :]
    panel = panel[: next(i for i, line in enumerate(panel) if line.startswith("╰"))]
    listed = [line.split()[1] for line in panel if line[2] != " "]  # not a wrapped summary's next line
    assert listed == list(_HELP_ORDER)  # every registered command has its place in the order
    assert {info.name for info in app.registered_commands} == set(_HELP_ORDER)


def test_help_lists_every_command_with_its_whole_summary_on_one_line():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(app.registered_commands) >= 10
    for info in app.registered_commands:
        summary = " ".join(inspect.getdoc(info.callback).split("\n\n")[0].split())
        assert any(f" {info.name} " in line and summary in line for line in lines), (info.name, summary)
