"""The `eomt-ood` command line: thin Typer commands, each calling one library function.

Every command turns a `UserError` into one line on stderr and exit code 2 (see `eomt_ood.errors`).
Heavy imports (torch, the models) happen inside the commands so `eomt-ood --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from eomt_ood.errors import UserError

app = typer.Typer(
    name="eomt-ood",
    help="Robustness and OOD evaluation of segmentation models (EoMT, BRAVO).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Robustness and OOD evaluation of segmentation models (EoMT, BRAVO)."""


# Commands are added below this line, one thin function each.


@app.command("regress")
def regress_command(
    baseline: Path = typer.Option(..., "--baseline", help="Baseline JSON (same format as results.json)."),
    results: Path = typer.Option(..., "--results", help="The run's results.json."),
    tolerance: float = typer.Option(
        0.005, "--tolerance", help="Allowed move in the bad direction (absolute)."
    ),
    keys: list[str] = typer.Option(
        ["*_auprc_ood"], "--keys", help="fnmatch pattern(s) of watched metric keys; repeat or comma-separate."
    ),
    update: bool = typer.Option(False, "--update", help="Rewrite the baseline with the current values."),
) -> None:
    """Regression gate: exit 1 if a watched metric got worse than the baseline by more than the tolerance."""
    from eomt_ood.regress import run_gate

    patterns = [p.strip() for key in keys for p in key.split(",") if p.strip()]
    code, report = run_gate(baseline, results, patterns, tolerance, update)
    print(report)
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:
        # Without standalone mode, click returns the code of a `typer.Exit` instead of exiting with it.
        code = app(standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            sys.exit(code)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # Usage errors (unknown option, missing argument) come from the click that typer vendors; they carry
        # their own message printer and exit code.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if isinstance(code, int) and (callable(show) or type(exc).__name__ == "Exit"):
            if callable(show):
                show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
