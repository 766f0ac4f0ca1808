"""How `train` treats the processes it forks (its data workers) while it watches for Ctrl-C and SIGTERM: the
signals reach a worker only once its fork hooks have run, and then Ctrl-C is left to the main process and SIGTERM
kills it as by default. (The whole command under both signals is in tests/faults/test_processes.py.)"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import pytest

from eomt_ood.training import run

STOPS = {signal.SIGINT, signal.SIGTERM}

# Set by a test: the signal the next forked child sends itself from a fork hook, as a signal to the process group
# arriving while Python's fork hooks run would. Registered when this module is imported, before `train` first
# registers its own hooks (it does so when a run starts), so it runs in the child before them.
_IN_HOOK: dict[str, int] = {}


def _signal_from_hook() -> None:
    if "signum" in _IN_HOOK:
        blocked = STOPS <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
        os.write(_IN_HOOK["pipe"], b"blocked" if blocked else b"open")
        os.kill(os.getpid(), _IN_HOOK["signum"])


os.register_at_fork(after_in_child=_signal_from_hook)

# Set by a test: what the parent does from a fork hook that runs inside `train`'s (before hooks run in the reverse
# order of registration), as a SIGTERM to the process group arriving during a fork would look to it.
_IN_PARENT_HOOK: dict[str, object] = {}


def _stop_from_parent_hook() -> None:
    if "worker" in _IN_PARENT_HOOK:
        worker = _IN_PARENT_HOOK.pop("worker")
        assert isinstance(worker, int)
        # The group's SIGTERM reaches the parent (the forking thread blocks it) and kills a data worker forked
        # before, whose SIGCHLD then comes to the forking thread unless it is blocked too.
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(worker, signal.SIGTERM)
        os.waitid(os.P_PID, worker, os.WEXITED | os.WNOWAIT)


os.register_at_fork(before=_stop_from_parent_hook)


@contextlib.contextmanager
def _python_defaults():
    """The test process with Python's own handlers for both signals, as `train` starts in a terminal."""
    before = {sig: signal.getsignal(sig) for sig in STOPS}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _fork(child) -> int:
    """Fork; the child runs `child()` and exits 0 (3 on an exception). Returns the child's wait status.

    SIGCHLD is at its default until the child is reaped: a handler an earlier test left in this process (torch's
    DataLoader installs one that raises for its own workers found dead, e.g. those a test killed) is no business
    of this child's exit."""
    before = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                child()
            except BaseException:
                os._exit(3)
            os._exit(0)
        return os.waitpid(pid, 0)[1]
    finally:
        signal.signal(signal.SIGCHLD, before)


def test_worker_leaves_ctrl_c_to_the_main_process_and_dies_of_sigterm():
    def child():
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert not STOPS & signal.pthread_sigmask(signal.SIG_BLOCK, [])
        os.kill(os.getpid(), signal.SIGINT)  # nothing happens
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(4)  # not reached

    noted: list[int] = []
    with _python_defaults(), run._noting_stops(noted):
        status = _fork(child)
        assert not STOPS & signal.pthread_sigmask(signal.SIG_BLOCK, []), "the parent's mask is restored"
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    assert noted == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_arriving_during_the_fork_hooks_waits_for_them(signum, capfd):
    """A handler of the parent (here one that fails, as any can inside a fork hook, where Python prints the
    failure as a traceback and goes on) must not run in a child that is still in its fork hooks."""

    def failing(*_):
        raise RuntimeError("parent's handler ran in the child")

    read, write = os.pipe()
    noted: list[int] = []
    try:
        with _python_defaults(), run._noting_stops(noted):
            ours = signal.getsignal(signum)
            signal.signal(signum, lambda s, f: failing() if os.getpid() != parent else ours(s, f))
            parent = os.getpid()
            _IN_HOOK.update(signum=signum, pipe=write)
            try:
                status = _fork(lambda: None)
            finally:
                _IN_HOOK.clear()
        seen = os.read(read, 64)
    finally:
        os.close(read)
        os.close(write)
    assert seen == b"blocked"
    if signum == signal.SIGTERM:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    else:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert "parent's handler" not in capfd.readouterr().err
    assert noted == []


def test_worker_killed_during_a_fork_waits_for_the_sigterm_that_killed_it(monkeypatch):
    """torch's data-loader SIGCHLD check raises when a worker dies of a signal, and `_noting_stops` turns it off
    when SIGTERM is handled. A worker killed by the group's SIGTERM while the parent forks must not have its
    SIGCHLD handled before that SIGTERM, inside the parent's fork hooks (which print the failure as a traceback)."""

    def data_loader_check(*_):
        raise RuntimeError("DataLoader worker exited unexpectedly")

    worker = os.fork()
    if worker == 0:
        signal.pause()
        os._exit(0)
    lightning: list[int] = []
    noted: list[int] = []
    ignored: list[BaseException | None] = []  # what Python would print as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: ignored.append(unraisable.exc_value))
    before = signal.signal(signal.SIGCHLD, data_loader_check)
    try:
        with _python_defaults(), run._noting_stops(noted):
            ours = signal.getsignal(signal.SIGTERM)
            # Lightning's handler, once installed, calls the one it found (which then only notes the signal).
            signal.signal(signal.SIGTERM, lambda s, f: (lightning.append(s), ours(s, f)))
            _IN_PARENT_HOOK["worker"] = worker
            try:
                status = _fork(lambda: None)
            finally:
                _IN_PARENT_HOOK.clear()
    finally:
        signal.signal(signal.SIGCHLD, before)
        os.waitpid(worker, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert not ignored
    assert noted == lightning == [signal.SIGTERM]
