"""What the benchmarks record about the machine beside their figures: the same code runs at different speeds on
different CPUs (and on a shared machine, under different load), so a figure is only read with these."""

from __future__ import annotations

import os
import platform


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
