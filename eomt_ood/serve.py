"""`eomt-ood app`: serve the Streamlit explorer (`app/explorer.py`) as a child process.

The host and port are checked before anything is printed (a busy port or a bad address is one line, exit 2);
the child dies with this process, also when this process is killed (Linux `PR_SET_PDEATHSIG`), and a SIGTERM
sent here is passed on to it (the command then exits 143, as a process killed by SIGTERM does).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from eomt_ood.errors import UserError
from eomt_ood.io import signal_on_parent_death


def explorer_script() -> Path:
    """The explorer script (`app/explorer.py` of a checkout, or its copy in the installed wheel)."""
    from eomt_ood.resources import app_dir

    script = app_dir() / "explorer.py"
    if not script.is_file():
        raise UserError(
            f"{script}: the explorer script is missing from this installation; reinstall eomt-ood"
        )
    return script


def check_address(host: str, port: int) -> None:
    """A `UserError` unless `host:port` can be listened on now (valid address, port free)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OverflowError):
        raise UserError(f"--host {host}: not an address of this machine (or not resolvable)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise UserError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None


def streamlit_command(port: int, host: str) -> list[str]:
    """The `streamlit run` command line of the explorer, without the run folders; through the app's
    `launch.py`, which starts Streamlit's command line with the explorer's imports warming up beside it."""
    script = explorer_script()
    return [
        sys.executable,
        str(script.parent / "launch.py"),
        "run",
        str(script),
        f"--server.address={host}",
        f"--server.port={port}",
        "--server.headless=true",
        "--browser.gatherUsageStats=false",
        "--client.toolbarMode=minimal",
        # No reload on source changes: a review tool does not need Streamlit to resolve and watch the file of
        # every module the explorer imports (work at the first page, and polling ever after without inotify).
        "--server.fileWatcherType=none",
    ]


def _child_dies_with_parent() -> None:
    signal_on_parent_death(signal.SIGTERM)


def explorer_arguments(run_dirs: Sequence[Path], allow: Sequence[Path] = ()) -> list[str]:
    """The explorer script's own arguments: the run folders, then `--allow DIR` for each allowed folder."""
    return [*map(str, run_dirs), *(item for folder in allow for item in ("--allow", str(folder)))]


def check_allowed(allow: Sequence[Path]) -> list[Path]:
    """The `--allow` folders resolved; one that is not a folder is a `UserError`."""
    for folder in allow:
        if not Path(folder).is_dir():
            raise UserError(
                f"--allow {folder}: " + ("not a folder" if Path(folder).exists() else "folder not found")
            )
    return [Path(folder).resolve() for folder in allow]


def serve_explorer(
    run_dirs: Sequence[Path], port: int = 8501, host: str = "127.0.0.1", allow: Sequence[Path] = ()
) -> int:
    """Serve the explorer on host:port for the given (resolved) run folders until stopped; returns its exit code.

    `allow`: folders whose checkpoints "Your image" may load (besides the run folders and the bundled demo);
    the explorer reads no other file."""
    command = [*streamlit_command(port, host), "--", *explorer_arguments(run_dirs, check_allowed(allow))]
    check_address(host, port)
    print(f"serving the explorer on http://{host}:{port} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    child = subprocess.Popen(
        command, preexec_fn=_child_dies_with_parent
    )  # the explorer starts no thread before this

    stopped_by: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped_by.append(signum)
        child.terminate()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        code = child.wait()
        # Stopped by a signal: say so as a shell does (128 + its number), whatever the server's own exit was.
        return 128 + stopped_by[0] if stopped_by else code
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
