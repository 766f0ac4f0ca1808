"""`eomt_ood.errors.first_line`: the one owner of "what another library's exception says, on one line"."""

from __future__ import annotations

from eomt_ood.errors import first_line


def test_first_line_of_an_exception():
    assert first_line(RuntimeError("  Connection closed by peer\n  at gloo/transport.cc:123\n")) == (
        "Connection closed by peer"
    )
    assert first_line(ValueError("\x1b[1mUnsupported global\x1b[0m: GLOBAL os.system")) == (
        "Unsupported global: GLOBAL os.system"
    )
    assert first_line(OSError("x" * 300)) == "x" * 200 and first_line(OSError("abc"), 2) == "ab"
    # An exception that says nothing is named by its type, never an IndexError of its own.
    assert first_line(KeyError()) == "KeyError" and first_line(RuntimeError("  \n ")) == "RuntimeError"
