"""Progress bars on an output that is not a terminal: whole lines, not carriage returns (`io.StatusLines`)."""

import io
import re
import sys

from tqdm import tqdm

from eomt_ood.io import StatusLines, progress_file


def _drive(every, seconds_per_item, items=100, warn_at=None):
    """tqdm over `items` on a StatusLines whose clock moves `seconds_per_item` per item; the text written."""
    out, now = io.StringIO(), [0.0]
    stream = StatusLines(out, every, clock=lambda: now[0])
    with tqdm(total=items, desc="evaluate", unit="img", file=stream, mininterval=0) as bar:
        for i in range(items):
            now[0] += seconds_per_item
            bar.update()
            if i == warn_at:
                tqdm.write("warning: x.png: skipped", file=out)
    return out.getvalue()


def _count(line):
    found = re.search(r" (\d+/\d+) \[", line)
    return found and found.group(1)


def test_a_bar_in_a_log_file_is_whole_lines():
    """The first status at once, then one every `every` seconds, and the last when the bar ends; other writers'
    lines stay whole between them; no carriage return, no padding, ASCII bars."""
    text = _drive(every=30, seconds_per_item=1, warn_at=44)
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    counts = [_count(line) or line for line in lines]
    assert counts == ["0/100", "30/100", "warning: x.png: skipped", "60/100", "90/100", "100/100"]
    assert all(line == line.rstrip() for line in lines)
    assert lines[-1].startswith("evaluate: 100%|##########| 100/100")


def test_a_short_bar_shows_its_start_and_its_end():
    assert [_count(line) for line in _drive(30, 0.01, 10).splitlines()] == ["0/10", "10/10"]


def test_a_terminal_gets_the_bar_itself(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress_file() is sys.stderr
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress_file(), StatusLines)
