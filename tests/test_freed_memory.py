"""`io.FreedMemory`: the C allocator's freed memory goes back to the system once the process has grown by the slack.
`io.keep_freed_memory`: a pool worker keeps it for its next item instead."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eomt_ood import io
from eomt_ood.io import FreedMemory


def test_trims_only_past_the_slack_and_then_from_what_is_left(monkeypatch):
    resident = iter([100, 150, 160, 171, 120, 170, 185, 130])
    calls = []
    monkeypatch.setattr(io, "_resident_bytes", lambda: next(resident))
    freed = FreedMemory(slack=60)
    freed._trim = calls.append
    freed.check()  # 100: the floor
    freed.check()  # 150
    freed.check()  # 160: exactly the slack, kept
    assert calls == []
    freed.check()  # 171: trimmed; 120 is left, the new floor
    assert calls == [0] and freed.trims == 1
    freed.check()  # 170
    assert freed.trims == 1
    freed.check()  # 185
    assert freed.trims == 2


def test_does_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(io, "_malloc_trim", lambda: None)
    freed = FreedMemory(slack=0)
    for _ in range(3):
        freed.check()
    assert freed.trims == 0


# Run in a fresh interpreter: a test process that has already freed memory (earlier tests in the same xdist
# worker) serves the new blocks from pages it still holds, so its resident size need not grow at all.
_FRAGMENTED_HEAP = """
import json
import numpy as np
from eomt_ood import io
from eomt_ood.io import FreedMemory

freed = FreedMemory(slack=64 << 20)
freed.check()
kept, blocks = [], []
for _ in range(2000):
    block = np.empty(100_000, np.uint8)
    block.fill(1)  # touched: resident
    blocks.append(block)
    kept.append(bytearray(4096))
del blocks
before = io._resident_bytes()
freed.check()
print(json.dumps({"trims": freed.trims, "before": before, "after": io._resident_bytes(), "kept": len(kept)}))
"""


@pytest.mark.skipif(io._malloc_trim() is None or io._resident_bytes() is None, reason="needs glibc and /proc")
def test_hands_freed_heap_memory_back():
    """Blocks below malloc's mmap threshold, each followed by a small block that stays: once the big ones are
    freed the heap cannot shrink from its top, and the process keeps their pages until the trim."""
    done = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["trims"] == 1
    assert out["before"] - out["after"] > 100 << 20, out
    assert out["kept"] == 2000


def _faults_of_three_rounds(_: object) -> list[int]:
    """Page faults of allocating, filling and freeing 16 and 24 MB three times over (as a worker's items do)."""
    import resource

    import numpy as np

    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        first, second = np.ones(4 << 20, np.float32), np.ones(6 << 20, np.float32)
        del first, second
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


@pytest.mark.skipif(io._mallopt() is None, reason="needs glibc")
def test_pool_workers_keep_freed_memory_for_their_next_item():
    """A worker's second round of the same allocations reuses the first round's pages: no page is faulted in and
    zeroed again (glibc's default thresholds map the 24 MB block afresh, about a thousand faults)."""
    with io.ProcessMap(1) as pool:
        faults = pool.submit(_faults_of_three_rounds, None).result()
    assert faults[0] > 100  # the first round does fault its pages in
    assert sum(faults[1:]) < 50, faults
