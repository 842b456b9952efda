"""A server that cannot serve its default model stops, with one clear line and a non-zero exit, instead of having its
workers restarted for ever (BentoML's supervisor restarts a worker whose start-up failed, which reloads the model each
time and never answers a probe). Kubernetes, Docker and compose then show the failure where operators look.

The supervisor (`bentoml serve`'s own process) and the workers are separate processes: a worker that cannot load the
default model leaves the message in a file named after the supervisor's pid and sends it SIGTERM; the supervisor stops
its workers as on any SIGTERM, prints the message, and exits with status 1.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

logger = logging.getLogger("bentoml")

_SUPERVISOR_PID = "RERANK_SUPERVISOR_PID"
EXIT_CANNOT_SERVE = 1


def _report_file(supervisor_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"rerank-cannot-serve-{supervisor_pid}"


def supervise() -> None:
    """In the supervisor, before it starts workers: listen for a worker that cannot serve."""
    report = _report_file(os.getpid())
    report.unlink(missing_ok=True)
    os.environ[_SUPERVISOR_PID] = str(os.getpid())  # workers inherit the supervisor's environment
    atexit.register(_exit_if_reported, report)


def _exit_if_reported(report: Path) -> None:
    try:
        message = report.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    report.unlink(missing_ok=True)
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_CANNOT_SERVE)  # the supervisor itself ended normally (SIGTERM): only this sets the status


def cannot_serve(message: str) -> NoReturn:
    """In a worker: the server cannot serve at all. Stop it (through the supervisor when there is one)."""
    supervisor = os.environ.get(_SUPERVISOR_PID)
    if supervisor and supervisor.isdigit():
        _report_file(int(supervisor)).write_text(message, encoding="utf-8")
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(supervisor), signal.SIGTERM)
    else:
        print(f"error: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(EXIT_CANNOT_SERVE)
