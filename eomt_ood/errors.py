"""Errors meant for users: one line naming the file or option and what is wrong.

Raise `UserError` for bad input (a missing file, a corrupt PNG, a wrong bit depth, an unknown option). The CLI
prints its message as a single line and exits with `UserError.exit_code` (2) without a traceback. Broken
invariants inside the package are programmer errors and raise ordinary exceptions.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """Bad input from the user; the message is one line that names the file/option and the problem."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Terminated(BaseException):
    """The command was asked to stop (SIGTERM, as a cluster scheduler sends before a job's time is up) and
    stopped cleanly; the CLI says what was kept and exits 143 (128 + SIGTERM), as a process killed by it
    would.

    A `BaseException`, as KeyboardInterrupt is: raised by a signal handler wherever the main thread is, it
    must not be taken for an error by the `except Exception` of other code. `logging` caught it in a
    handler's write during training, printed "--- Logging error ---" with a traceback, and went on."""


class LostProcess(Exception):
    """Another process of the command (a worker, a rank) ended without a word (killed, out of memory), so this one
    cannot finish; the message is one line saying which. The CLI prints it with what the command keeps and how to
    go on (as for Ctrl-C), and exits 1."""

    exit_code = 1


def plain_text(exc: BaseException) -> str:
    """An exception's text without the terminal colour codes some libraries put in it (torch does)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(exc))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """What another library's exception says, fit for one line: the first line of its text without terminal
    colour codes, at most `limit` characters; its type's name when it says nothing."""
    text = plain_text(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
