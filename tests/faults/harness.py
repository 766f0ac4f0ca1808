"""The fault suite's harness: run one `eomt-ood` command line in this process and check how it ended.

Every case runs in its own folder holding fresh copies of the session's templates (`World`), with that folder as
the working directory. `run_case` asserts what the suite promises for every bad input:

- the exit code;
- stderr holds exactly one `error: ...` line (status lines such as progress bars and `loading model` aside,
  `warning:` lines only where the case expects them), naming the file or option the case names;
- no traceback;
- every file that existed before is byte-identical afterwards, and nothing new appeared except what the case
  allows (a failed command writes nothing unless the case says what it keeps);
- no temporary file (`.<name>.<pid>.tmp...`) anywhere in the folder;
- no child process of this process left alive;
- optionally: named expensive steps were never entered (the inputs are checked before the work).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Lines a command may print on stderr besides its one error line: progress bars (tqdm) and the status lines of
# `evaluate` and `app`.
STATUS = re.compile(r"(\d+%\|)|(\d+/\d+ \[)|(^loading model )|(^resuming: )|(^serving the explorer )")
TEMPORARY = re.compile(r"^\..*\.tmp")
SCORES = ("msp", "rba")  # the confidence scores of the template run


def with_options(base: list[str], changes: tuple[str, ...]) -> list[str]:
    """`base` argv with each (flag, value) pair of `changes` set: replaced where the flag is, appended where not."""
    argv = list(base)
    pairs = list(zip(changes[::2], changes[1::2], strict=True))
    for flag, value in pairs:
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def make_read_only(folder: Path) -> bool:
    """Make `folder` one this process cannot create files in; False where that cannot be done here.

    Mode 0o555 does it for an ordinary user. Root ignores permission bits (CAP_DAC_OVERRIDE), and CI runs as
    root; for root the folder also gets the immutable attribute (`chattr +i`: no entry can be added, removed or
    renamed in it, root included), which ext4, xfs and btrfs support. Undo with `undo_read_only`.
    """
    os.chmod(folder, 0o555)
    if not os.access(folder, os.W_OK):
        return True
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    done = subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0
    return done and _cannot_create_in(folder)


def undo_read_only(folder: Path) -> None:
    chattr = shutil.which("chattr")
    if chattr is not None:
        subprocess.run([chattr, "-i", str(folder)], capture_output=True)
    os.chmod(folder, 0o755)


def _cannot_create_in(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


@functools.cache
def read_only_folders_work() -> bool:
    """Whether `make_read_only` works in this place and for this user (checked once, on a scratch folder)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "probe"
        folder.mkdir()
        try:
            return make_read_only(folder)
        finally:
            undo_read_only(folder)


@dataclass(frozen=True)
class Case:
    """One row of the suite.

    argv: the command line; `{name}` is replaced by the case folder's path of that name (see `World.paths`).
    names: strings (formatted the same way) the error line must contain: the file or option at fault.
    setup: prepares the bad input in the case folder (gets the `World`); may return a cleanup callable.
    code: the expected exit code. warnings: `warning:` lines expected on stderr (exactly this many).
    keeps: fnmatch patterns (relative to the case folder) of files the command may create or change.
    untouched_steps: dotted names of functions that must not run (the check comes before that work).
    check: further assertions on (world, stdout, stderr) for a case that succeeds or reports on stdout.
    """

    id: str
    argv: Sequence[str]
    names: Sequence[str] = ()
    setup: Callable[[World], Any] | None = None
    code: int = 2
    warnings: int = 0
    keeps: Sequence[str] = ()
    untouched_steps: Sequence[str] = ()
    check: Callable[[World, str, str], None] | None = None
    needs_permissions: bool = False  # a read-only folder: skipped where `make_read_only` cannot make one

    def param(self):
        marks = []
        if self.needs_permissions:
            marks.append(
                pytest.mark.skipif(
                    not read_only_folders_work(),
                    reason="no read-only folder for this process (root, and no immutable attribute here)",
                )
            )
        return pytest.param(self, id=self.id, marks=marks)


class World:
    """A case folder; `world[name]` is the case's path of `name`, made (copied from the templates) on first use.

    `fmt(text)` replaces every `{name}` in `text` by `world[name]`.
    """

    def __init__(self, root: Path, makers: dict[str, Callable[[World], Path]]):
        self.root = root
        self._makers = makers
        self._made: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._made:
            self._made[name] = Path(self._makers[name](self))
        return self._made[name]

    def fmt(self, text: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: str(self[m.group(1)]), text)


# ------------------------------------------------------------------------------------------------ snapshots


def snapshot(root: Path) -> dict[str, bytes]:
    """{relative path: sha256} of every file under `root` (hidden ones included)."""
    found = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).digest()
    return found


def temporaries(root: Path) -> list[str]:
    """Temporary files (`.<name>...tmp...`) anywhere under `root`."""
    return sorted(
        (Path(d) / n).relative_to(root).as_posix()
        for d, _, files in os.walk(root)
        for n in files
        if TEMPORARY.match(n) or n.endswith(".tmp")
    )


# ------------------------------------------------------------------------------------------------ processes


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of `pid` from /proc, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2])


def _live(pid: int, state: str) -> bool:
    """Whether `pid` still runs: not a zombie, or a zombie thread-group leader whose other threads still exit
    (a multi-threaded process shows its leader as Z before its last thread has closed the files)."""
    if state != "Z":
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any((s := _stat(int(t))) is not None and s[0] != "Z" for t in tasks if t != str(pid))


def live_processes(parent: int | None = None, group: int | None = None) -> list[int]:
    """Live processes (see `_live`) descending from `parent`, or belonging to process group `group`."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and _live(int(entry), stat[0]):
                table[int(entry)] = stat
    if group is not None:
        return sorted(pid for pid, (_, _, pgrp) in table.items() if pgrp == group)
    found, frontier = [], {parent}
    while frontier:
        children = {pid for pid, (_, ppid, _) in table.items() if ppid in frontier}
        found += children
        frontier = children
    return sorted(found)


def wait_gone(parent: int | None = None, group: int | None = None, timeout: float = 15.0) -> list[int]:
    """Poll until no live process is left (see `live_processes`); returns those still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = live_processes(parent, group)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def describe(pids: Sequence[int]) -> str:
    out = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out.append(f"{pid}: {command[:120]}")
        except OSError:
            out.append(f"{pid}: gone")
    return "; ".join(out)


# ------------------------------------------------------------------------------------------------ running


def stderr_lines(stderr: str) -> list[str]:
    """The lines of stderr without status lines; of a line that a progress bar redrew (\\r), the last state."""
    lines = []
    for line in stderr.split("\n"):
        segments = [s.strip() for s in line.split("\r") if s.strip()]
        if not segments:
            continue
        last = segments[-1]
        if last.startswith(("error:", "warning:")) or not any(STATUS.search(s) for s in segments):
            lines.append(last)
    return lines


def run_cli(argv: Sequence[str], monkeypatch, capsys) -> tuple[int, str, str, str | None]:
    """Run `eomt-ood argv` through `eomt_ood.cli.main` in this process: (exit code, stdout, stderr, traceback of
    an exception that escaped main, else None)."""
    from eomt_ood.cli import main

    monkeypatch.setattr(sys, "argv", ["eomt-ood", *argv])
    code, escaped = 0, None
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what escapes main() is exactly what the suite reports
        escaped = traceback.format_exc()
        code = -1
    captured = capsys.readouterr()
    return code, captured.out, captured.err, escaped


def run_case(case: Case, world: World, monkeypatch, capsys) -> tuple[str, str]:
    """Run one case and check every promise (see the module docstring); returns (stdout, stderr)."""
    cleanup = case.setup(world) if case.setup else None
    monkeypatch.chdir(world.root)
    entered: dict[str, int] = {}
    for dotted in case.untouched_steps:
        module_name, attr = dotted.rsplit(".", 1)
        module = __import__(module_name, fromlist=[attr])
        original = getattr(module, attr)

        def spy(*args, __name=dotted, __original=original, **kwargs):
            entered[__name] = entered.get(__name, 0) + 1
            return __original(*args, **kwargs)

        monkeypatch.setattr(module, attr, spy)
    argv = [world.fmt(a) for a in case.argv]
    names = [world.fmt(n) for n in case.names]
    before = snapshot(world.root)
    try:
        code, out, err, escaped = run_cli(argv, monkeypatch, capsys)
    finally:
        if callable(cleanup):
            cleanup()
    shown = f"\nargv: {argv}\nexit {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}"
    assert escaped is None, f"an exception escaped main():\n{escaped}{shown}"
    assert "Traceback" not in err and "Traceback" not in out, "traceback printed" + shown
    assert code == case.code, f"exit code {code}, expected {case.code}" + shown

    lines = stderr_lines(err)
    warnings = [line for line in lines if line.startswith("warning:")]
    errors = [line for line in lines if not line.startswith("warning:")]
    assert len(warnings) == case.warnings, (
        f"{len(warnings)} warning line(s), expected {case.warnings}" + shown
    )
    if case.code == 2 or names:  # a user error, or a failure whose one line must name what failed
        assert len(errors) == 1 and errors[0].startswith("error: "), "not exactly one error line" + shown
        for name in names:
            assert name in errors[0], f"the error line does not name {name!r}" + shown
    else:
        assert not errors, "unexpected stderr lines" + shown

    after = snapshot(world.root)
    changed = sorted(p for p in before if after.get(p) != before[p])
    new = sorted(set(after) - set(before))

    def kept(rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, pattern) for pattern in case.keeps)

    assert not [p for p in changed if not kept(p)], f"inputs changed or removed: {changed[:5]}" + shown
    assert not [p for p in new if not kept(p)], f"files written: {new[:5]}" + shown
    assert not temporaries(world.root), f"temporary files left: {temporaries(world.root)}" + shown
    alive = wait_gone(parent=os.getpid())
    assert not alive, f"processes left alive: {describe(alive)}" + shown
    assert not entered, f"expensive steps ran before the check: {entered}" + shown
    if case.check:
        case.check(world, out, err)
    return out, err
