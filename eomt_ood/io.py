"""Plumbing every command shares: atomic writes, folder listing, the warning printer, one bounded process map.

- `atomic_path` / `write_bytes_atomic` / `write_text_atomic`: a file appears whole or not at all (temporary name in
  the same folder, then `os.replace`), so an interrupted job never leaves a half-written file that a resumed run
  would take for finished, and a failed write leaves no temporary behind.
- `HeldTemporaryFolder`: a temporary folder that the next run removes if a kill left it behind.
- `walk_files`: the files under a folder, through linked folders, refusing link loops; `fingerprint`: a cheap
  digest of a file's or folder's content (which checkpoint made a folder's maps).
- `warn`: one line on stderr, prefixed `warning:`; `progress_file`: where a progress bar draws (stderr, as whole
  lines when stderr is not a terminal).
- `ProcessMap`: a pool of worker processes fed through a bounded window (memory stays flat however many items),
  whose workers die with their parent even when the parent is killed with SIGKILL (Linux `PR_SET_PDEATHSIG`).
- `FreedMemory`: hands the C allocator's freed but kept memory back to the system during long loops.
"""

from __future__ import annotations

import contextlib
import functools
import io
import multiprocessing
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from eomt_ood.errors import LostProcess, UserError

# ------------------------------------------------------------------------------------------------ writing


def temporary_name(path: Path) -> Path:
    """The hidden temporary sibling a write to `path` goes through (`.<name>.<pid>.tmp`)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on any exception it is removed.

    Parent folders are created. The temporary name keeps `path`'s suffix last (`.x.json.<pid>.tmp` would
    confuse writers that pick a format from the suffix, so the suffix is repeated: `.x.<pid>.tmp.json`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically (see `atomic_path`); returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | Path, recursive: bool = False) -> int:
    """Delete `.*.tmp*` files that killed writers left in `folder` (and its subfolders when `recursive`);
    returns how many."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


class HeldTemporaryFolder:
    """A new folder in the system's temporary folder (`prefix` + random), removed by `cleanup()` (or on leaving
    it as a context manager, which gives its path).

    A process killed while it holds one (SIGKILL, the out-of-memory killer, a scheduler's SIGTERM to a command
    that does not handle it) cannot remove it, and what it held may be gigabytes (`score`'s per-image
    statistics, an unpacked submission tar). So the folder is held with a shared `flock` on the folder itself,
    which the kernel releases when its process dies however it ends, and every new one first removes the
    folders of its prefix that no live process holds (`remove_abandoned_folders`). Where there is no `flock`, it
    is a plain temporary folder.
    """

    def __init__(self, prefix: str):
        import tempfile

        remove_abandoned_folders(prefix)
        self._folder = tempfile.TemporaryDirectory(prefix=prefix)
        self.path = Path(self._folder.name)
        self._handle = _locked_folder(self.path, shared=True)

    def cleanup(self) -> None:
        self._folder.cleanup()  # still held, so no other process is removing it at the same time
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *_: Any) -> None:
        self.cleanup()


def remove_abandoned_folders(prefix: str, grace: float = 60.0) -> int:
    """Remove the folders `HeldTemporaryFolder(prefix)` made in the system's temporary folder whose process
    died without removing them (nothing holds their lock); returns how many. A folder younger than `grace`
    seconds is left alone: its process may not have taken the lock yet. Another user's folders cannot be
    opened and are left alone."""
    import glob
    import shutil
    import tempfile

    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{glob.escape(prefix)}*"):
        try:
            if path.is_symlink() or not path.is_dir() or time.time() - path.stat().st_mtime < grace:
                continue
        except OSError:
            continue
        handle = _locked_folder(path, shared=False)
        if handle is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        finally:
            os.close(handle)
    return removed


def _locked_folder(path: Path, shared: bool) -> int | None:
    """A descriptor of folder `path` holding a `flock` on it (shared, else exclusive and only if free at once);
    None when it cannot be opened, is held by another process (exclusive), or the system has no `flock`."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live process (or a file system without locks)
        os.close(handle)
        return None
    return handle


def check_output(
    path: str | Path, option: str, inputs: Iterable[str | Path | None] = (), folder: bool = False
) -> None:
    """Before any work: a `UserError` unless `path` can be written as a file (or a folder when `folder`).

    Refused: a file path that is an existing folder (or a folder path that is an existing file); a path whose
    nearest existing parent is not a writable folder; a path that is one of `inputs`; a folder path that holds
    an input (commands that search their input leave their output folder out of it, so the input would
    vanish); a file or folder path inside an input folder (it could overwrite an input, and a later run would
    list the outputs as inputs or stray files: a second `predict` into another folder, a `score` of the same
    ground truth). Input folders are the trees a command searches; commands that read runs by name pass the
    files they read. No command writes over its input.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved.exists() and resolved.is_dir() != folder:
        kind = "is a folder" if resolved.is_dir() else "is a file"
        raise UserError(f"{option}: {path} {kind}; expected a {'folder' if folder else 'file'}")
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if resolved == source:
            raise UserError(f"{option}: {path} is also an input of this command; choose another path")
        if folder and resolved in source.parents:
            raise UserError(f"{option}: {path} holds the input {given}; choose a folder outside it")
        if source.is_dir() and source in resolved.parents:
            what = "its files" if folder else "it"
            raise UserError(
                f"{option}: {path} lies inside the input folder {given}, where {what} would become inputs "
                f"of later runs; choose a {'folder' if folder else 'path'} outside it"
            )
    parent = resolved.parent if not resolved.exists() else resolved if folder else resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option}: {path}: cannot write there ({parent} is not a writable folder)")


# ------------------------------------------------------------------------------------------------ listing


def walk_files(root: str | Path, skip: Callable[[str], bool] | None = None) -> Iterator[str]:
    """Relative POSIX paths of the files under `root`, folder by folder in sorted order.

    Linked folders are followed (a data tree is often put together from links to where the data lives); a link
    that leads back to a folder on its own path would list forever, so it is a `UserError` naming it. `skip`
    gets each folder's relative path ("a/b") and leaves it out, unlisted and unchecked, when it returns True.
    """
    top = str(root)
    above = {top: frozenset({os.path.realpath(top)})}  # folder -> the real folders on its path
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        rel_dir = Path(os.path.relpath(dirpath, top)).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        path_so_far = above.pop(dirpath)
        kept = []
        for name in sorted(dirnames):
            if skip is not None and skip(prefix + name):
                continue
            child = os.path.join(dirpath, name)
            real = os.path.realpath(child)
            if real in path_so_far:
                raise UserError(f"{root}: {prefix + name} links back to {real}, a folder on its own path")
            above[child] = path_so_far | {real}
            kept.append(name)
        dirnames[:] = kept
        yield from (prefix + name for name in sorted(filenames))


def fingerprint(path: str | Path, blocks: int = 16, block_size: int = 1 << 16) -> str:
    """A short digest that changes when a file's (or a folder's files') content does: the sizes, and SHA-256 over
    `blocks` blocks spread evenly over each file, first and last included (whole files up to that size).

    Reads about 1 MiB of a file of any size, so a multi-GB checkpoint costs milliseconds. Retraining or
    replacing weights changes every tensor, so any block sees it; two files that differ only between the blocks
    would look the same, which is why this names "the same checkpoint as before", not a checksum.
    """
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    names = sorted(walk_files(path)) if path.is_dir() else [""]
    for name in names:
        file = path / name if name else path
        size = file.stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= blocks * block_size:
                digest.update(handle.read())
                continue
            step = (size - block_size) / (blocks - 1)
            for i in range(blocks):
                handle.seek(round(i * step))
                digest.update(handle.read(block_size))
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ warnings


def warn(message: str) -> None:
    """Print one warning line on stderr, on a line of its own also while a progress bar is drawn there."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)
    sys.stderr.flush()


def progress_file(every: float = 30.0) -> Any:
    """The stream a progress bar (tqdm) draws on: stderr on a terminal, else a `StatusLines` over stderr."""
    return sys.stderr if sys.stderr.isatty() else StatusLines(sys.stderr, every)


class StatusLines(io.TextIOBase):
    """A progress bar's stream on an output that is not a terminal (a cluster job's log file).

    A bar redraws its status in place: a carriage return, then the new status. Written to a file as it is, that
    is one line of thousands of carriage returns, which `less` and `grep` cannot read and `tail` shows only at
    its end. This stream passes on whole lines instead: a status when at least `every` seconds have passed since
    the last one (the first at once), and the bar's last status when it ends its line. The stream declares no
    encoding, so tqdm draws its bar in ASCII, which any log viewer shows.
    """

    def __init__(self, out: Any, every: float, clock: Callable[[], float] = time.monotonic):
        self.out, self.every, self.clock = out, every, clock
        self.status = ""  # the text after the last carriage return or newline
        self.shown: str | None = None  # the status last passed on, while it is the current one
        self.at: float | None = None  # when a status was last passed on

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for part in re.split(r"([\r\n])", text):
            if part == "\n":
                if self.status.strip() and self.status != self.shown:
                    self._show()
                self.status, self.shown = "", None
            elif part == "\r":
                self.status = ""
            else:
                self.status += part
        due = self.at is None or self.clock() - self.at >= self.every
        if "\r" in text and self.status.strip() and self.status != self.shown and due:
            self._show()
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def _show(self) -> None:
        self.out.write(self.status.rstrip() + "\n")
        self.out.flush()
        self.shown, self.at = self.status, self.clock()


# ------------------------------------------------------------------------------------------------ processes


def default_workers(limit: int = 4) -> int:
    """min(CPU count, limit), at least 1."""
    return max(1, min(os.cpu_count() or 1, limit))


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only), and exit at once if the parent
    is already gone (`parent`: its pid, when known; else being adopted by init counts as gone)."""
    signal_on_parent_death(signal.SIGKILL)
    gone = os.getppid() != parent if parent is not None else os.getppid() == 1
    if gone:
        os._exit(1)  # the parent died before the request took effect


def signal_on_parent_death(signum: int) -> None:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux `PR_SET_PDEATHSIG`; nothing
    elsewhere)."""
    prctl = _glibc("prctl", "int", "ulong")
    if prctl is not None:
        prctl(1, signum)  # PR_SET_PDEATHSIG = 1


def _start_worker(parent: int, nice: int = 0) -> None:
    """Worker initializer: `die_with_parent`, Ctrl-C left to the parent, priority lowered by `nice`, freed memory
    kept for the next item (`keep_freed_memory`)."""
    # Ctrl-C reaches the whole process group; the parent decides what an interruption means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    if nice:
        os.nice(nice)
    keep_freed_memory()


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_below: int = 32 << 20, trim_above: int = 256 << 20) -> bool:
    """Make glibc's malloc keep the memory this process frees for its next allocations: blocks below
    `mmap_below` bytes (glibc's largest such threshold) come from the heap, and the heap hands freed memory back to
    the system only beyond `trim_above` bytes. Returns False where there is no glibc.

    A worker allocates and frees the same tens of MB for every item (decoded PNGs, keys and counts). glibc's own
    adaptive thresholds may map the larger blocks afresh, or trim its heap, for every item, and then every page is
    faulted in and zeroed again: a `score` worker took 4,075 page faults per 2048x1024 image of
    `benchmarks/bench_score.py`'s pixel-noise maps and used 12 % more CPU per image than with its memory kept
    (no faults; 5 % more for its region-shaped maps, which glibc happened to serve from its heap already). A
    worker then stays at the size of its largest item's work until its pool ends. Not for a process whose
    threads allocate in several heaps (the model process: see `FreedMemory`).
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_below)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_above))


def _start_method() -> str:
    # fork: workers start in milliseconds and their parent is this process (so PR_SET_PDEATHSIG ties them to
    # it). Pools are therefore created before torch or any thread starts; see `ProcessMap`.
    return "fork" if sys.platform.startswith("linux") else "spawn"


class ProcessMap:
    """A pool of `workers` processes that maps functions over items with at most `window` items in flight.

    Create it early, before importing torch or starting threads: the workers are forked at once, so they
    inherit only what the parent had loaded then. `workers <= 0` runs everything inline in the caller (the
    same results, for tests and debugging). Use as a context manager; leaving it (also by an exception) stops
    the workers without waiting for queued work. `nice`: lower the workers' priority, for a pool that works
    beside a parent on the critical path (evaluate's model process): they still take every idle cycle.
    """

    def __init__(self, workers: int, window: int | None = None, nice: int = 0):
        self.workers = max(0, int(workers))
        self.window = window or 2 * max(1, self.workers)
        self._executor: ProcessPoolExecutor | None = None
        if self.workers > 0:
            context = multiprocessing.get_context(_start_method())
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=context,
                initializer=_start_worker,
                initargs=(os.getpid(), nice),
            )
            # With fork every worker starts at the first submit: start them now, before the caller imports more.
            for future in [self._executor.submit(os.getpid) for _ in range(self.workers)]:
                future.result()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` in a worker (or inline); returns a future."""
        if self._executor is None:
            future: Future = Future()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # delivered through the future, as a worker's would be
                future.set_exception(exc)
            return future
        return self._executor.submit(fn, *args)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], ordered: bool = True) -> Iterator[Any]:
        """Yield `fn(item)` for every item, keeping at most `window` items submitted and not yet yielded.

        ordered: results in input order (else as they finish). A worker's exception is raised here when its
        result is due; the remaining queued items are cancelled.
        """
        items = iter(items)
        if ordered:
            queue: deque[Future] = deque()
            for item in items:
                queue.append(self.submit(fn, item))
                if len(queue) >= self.window:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()
            return
        pending: set[Future] = set()
        for item in items:
            pending.add(self.submit(fn, item))
            if len(pending) >= self.window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()

    def close(self, cancel: bool = False) -> None:
        """Stop the workers. cancel (an exception is leaving the caller, Ctrl-C included): queued and running work
        is abandoned and the workers are killed first; an orderly shutdown can hang when Ctrl-C lands while the
        parent is handing work over (a worker then waits forever on the half-used call queue)."""
        if self._executor is not None:
            if cancel:
                self._kill_workers()
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None

    def _kill_workers(self) -> None:
        # The pool's own table of its processes (CPython keeps it as `_processes`, pid -> Process).
        processes = dict(getattr(self._executor, "_processes", None) or {})
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in processes.values():
            process.join(timeout=10)
        # A worker killed while sending its result leaves half a message in the result pipe; the pool's thread
        # would wait forever for the rest, since this process holds a write end of that pipe too. Closing it
        # leaves no writer, so the read ends (end of file) and the pool sees its workers gone.
        writer = getattr(getattr(self._executor, "_result_queue", None), "_writer", None)
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()

    def __enter__(self) -> ProcessMap:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, *_: Any) -> None:
        self.close(cancel=exc_type is not None)
        reported = pool_problem(exc) if exc is not None else None
        if reported is not exc:
            raise reported from None


def pool_problem(exc: BaseException) -> BaseException:
    """`exc` as the run should report it: a pool whose worker died without a word (`BrokenProcessPool`: the
    kernel's out-of-memory killer, most often, where the traceback said only that a process "terminated
    abruptly") becomes one `LostProcess` line; anything else stays as it is."""
    if isinstance(exc, BrokenProcessPool):
        return LostProcess(
            "a worker process ended without a word (killed by a signal: out of memory?); "
            "fewer --workers use less"
        )
    return exc


# ------------------------------------------------------------------------------------------------ memory


class FreedMemory:
    """Give memory that the C allocator keeps after it was freed back to the system, when the process has grown by
    more than `slack` bytes since the last time: call `check()` once per item of a long loop.

    A stream of images allocates and frees arrays of tens of MB in several threads (the forward, the second
    thread's merge, the pool's pickling of results). glibc's malloc serves them from its heaps once its mmap
    threshold has risen to their size, and the freed space is not handed back: on a 2-core machine an `evaluate`
    grew by about 40 MB per 1024x2048 image (2.5 GB after 36 images) with no object of ours alive, while
    `malloc_trim` brought it back to the size of one image's work. A trim costs tens of ms (the pages are
    faulted in again on reuse), so it runs only when the resident size has grown by `slack` since the last trim
    (or the first check), not per image. Where there is no glibc (or no /proc), `check` does nothing.
    """

    def __init__(self, slack: int = 512 << 20):
        self.slack = slack
        self.trims = 0
        self._trim = _malloc_trim()
        self._floor: int | None = None

    def check(self) -> None:
        if self._trim is None:
            return
        resident = _resident_bytes()
        if resident is None:
            return
        if self._floor is None:
            self._floor = resident
        elif resident - self._floor > self.slack:
            self._trim(0)
            self.trims += 1
            # What is left is in use: the next trim waits for `slack` more.
            self._floor = _resident_bytes() or resident


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim(pad)`, or None (another C library, another system)."""
    return _glibc("malloc_trim", "size_t")


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's `mallopt(param, value)`, or None (another C library, another system)."""
    return _glibc("mallopt", "int", "int")


@functools.cache
def _glibc(name: str, *arguments: str) -> Callable[..., int] | None:
    """The function `name` (returning int, taking C `arguments`: "int", "ulong" or "size_t") of the C library
    the interpreter itself runs on, on Linux; else None."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    types = {"int": ctypes.c_int, "ulong": ctypes.c_ulong, "size_t": ctypes.c_size_t}
    function.argtypes = [types[a] for a in arguments]
    function.restype = ctypes.c_int
    return function


def _resident_bytes() -> int | None:
    """This process's resident set size (Linux `/proc/self/statm`), or None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
