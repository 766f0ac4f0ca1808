"""`eomt_ood.errors`: `first_line`, the one owner of "what another library's exception says, on one line", and
the stop that other code must not swallow."""

from __future__ import annotations

import io
import logging

import pytest

from eomt_ood.errors import Terminated, first_line


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


def test_a_stop_raised_in_a_logging_write_is_not_swallowed():
    """SIGTERM's handler raises `Terminated` wherever the main thread is. In a logging handler's write,
    logging's `except Exception` printed "--- Logging error ---" with a traceback and dropped it (seen in the
    SIGTERM fault test of `train`); like KeyboardInterrupt, it must reach the command."""

    class Stopping(io.StringIO):
        def write(self, text):
            raise Terminated

    logger = logging.getLogger("eomt_ood.test_stop")
    handler = logging.StreamHandler(Stopping())
    logger.addHandler(handler)
    try:
        with pytest.raises(Terminated):
            logger.warning("a line")
    finally:
        logger.removeHandler(handler)
