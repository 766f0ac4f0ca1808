"""The `eomt-ood` command line: thin Typer commands, each calling one library function.

Every command turns a `UserError` into one line on stderr and exit code 2 (see `eomt_ood.errors`).
Heavy imports (torch, the models) happen inside the commands so `eomt-ood --help` stays fast.
"""

from __future__ import annotations

import sys

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


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:
        app(standalone_mode=False)
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
