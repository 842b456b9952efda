"""A server that cannot serve its default model stops, with one clear line and a non-zero exit, instead of having its
workers restarted for ever (BentoML's supervisor restarts a worker whose start-up failed, which reloads the model each
time and never answers a probe). Kubernetes, Docker and compose then show the failure where operators look.

The supervisor (`bentoml serve`'s own process) and the workers are separate processes: a worker that cannot load the
default model leaves the message in a file in a folder only the supervisor's user can enter (made afresh, under an
unpredictable name, by the supervisor) and sends it SIGTERM; the supervisor stops its workers as on any SIGTERM, prints
the message, and exits with status 1.

Kept because BentoML 1.4.39 restarts a worker whose start-up failed, for ever (tests/test_startup.py).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

logger = logging.getLogger("bentoml")

_SUPERVISOR_PID = "RERANK_SUPERVISOR_PID"
_SUPERVISOR_REPORT = "RERANK_SUPERVISOR_REPORT"
EXIT_CANNOT_SERVE = 1


def supervise() -> None:
    """In the supervisor, before it starts workers: listen for a worker that cannot serve."""
    folder = Path(tempfile.mkdtemp(prefix="rerank-supervisor-"))  # mode 0700, a name nobody can guess
    report = folder / "cannot-serve"
    # Workers inherit the supervisor's environment.
    os.environ[_SUPERVISOR_PID] = str(os.getpid())
    os.environ[_SUPERVISOR_REPORT] = str(report)
    atexit.register(_exit_if_reported, report)


def _exit_if_reported(report: Path) -> None:
    try:
        message = report.read_text(encoding="utf-8")
    except FileNotFoundError:
        message = ""
    shutil.rmtree(report.parent, ignore_errors=True)
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(EXIT_CANNOT_SERVE)  # the supervisor itself ended normally (SIGTERM): only this sets the status


def cannot_serve(message: str) -> NoReturn:
    """In a worker: the server cannot serve at all. Stop it (through the supervisor when there is one)."""
    supervisor, report = os.environ.get(_SUPERVISOR_PID, ""), os.environ.get(_SUPERVISOR_REPORT, "")
    written = False
    if supervisor.isdigit() and report:
        with contextlib.suppress(OSError):  # never through a link, never over a file someone else put there
            handle = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(message)
            written = True
    if written:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(supervisor), signal.SIGTERM)
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(EXIT_CANNOT_SERVE)
