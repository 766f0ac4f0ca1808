"""What the benchmarks record about the machine beside their figures: the same code runs at different speeds on
different CPUs (and on a shared machine, under different load), so a figure is only read with these."""

from __future__ import annotations

import os
import platform
import resource


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, object]:
    """{"cpus", "cpu_model", "load_average"}: the 1-minute load when the benchmark started (None off Unix)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "load_average": load}


PEAK_RSS_AT_EXIT = (
    "import atexit as _atexit, sys as _sys\n"
    "def _peak_rss():\n"
    "    with open('/proc/self/status') as status:\n"
    "        line = next(line for line in status if line.startswith('VmHWM:'))\n"
    "    print('peak-rss-kb', line.split()[1], file=_sys.stderr)\n"
    "_atexit.register(_peak_rss)\n"
)
"""Python source to put first in a child's `-c` code: at exit the child prints its own peak RSS (Linux VmHWM, kB)
on stderr, which `peak_rss_mb` reads. Not `getrusage(...).ru_maxrss`: Linux carries that over fork and exec, so a
child would report at least the RSS its parent (the benchmark) had when it started it."""


def peak_rss_mb(stderr: str) -> float:
    """The peak RSS (MB) a child started with `PEAK_RSS_AT_EXIT` printed on `stderr`."""
    line = next(line for line in stderr.splitlines() if line.startswith("peak-rss-kb"))
    return int(line.split()[1]) / 1024


def own_peak_rss_mb() -> float:
    """This process's peak RSS (MB): Linux's VmHWM, else `ru_maxrss` (which on Linux would carry the parent's
    peak over fork and exec, see `PEAK_RSS_AT_EXIT`)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds(children_only: bool = False) -> float:
    """User + system CPU seconds of this process and of its children that have ended and been waited for (pool
    workers once the pool is closed, finished subprocesses), or of those children alone: the difference over a
    run is the CPU the run cost, which other work on a shared machine disturbs far less than wall time."""
    usages = [resource.getrusage(resource.RUSAGE_CHILDREN)]
    if not children_only:
        usages.append(resource.getrusage(resource.RUSAGE_SELF))
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)
