"""Several BentoML workers in one server: how many, which GPU each drives, and whether all of them are ready.

BentoML starts `workers` processes that share one listening socket; each has its own engine, queue and model copy.
With `resources={"gpu": n}` every worker sees the same n GPUs (`CUDA_VISIBLE_DEVICES`), so each picks its own by its
1-based `bentoml.server_context.worker_index`. The worker count is decided when `service.py` is imported, in the
`bentoml serve` process and again in every worker, so it must come out the same everywhere: it is read from
RERANK_WORKERS and the GPUs visible, never from anything a worker changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

logger = logging.getLogger("bentoml")

# The one folder BentoML creates afresh at each `bentoml serve` start and hands to all of its workers (for
# Prometheus' per-process files, which it finds by `*.db`): readiness marks placed in it last exactly one start.
_SHARED_DIR = "PROMETHEUS_MULTIPROC_DIR"


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use: those `CUDA_VISIBLE_DEVICES` names when it is set, else those NVML counts.

    Counted without CUDA: the `bentoml serve` process imports `service.py` too, and a CUDA context opened there would
    hold GPU memory for the life of the server without ever running a model.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for entry in visible.split(","):
            # CUDA stops at the first entry that is not a device: "-1" or "" hide every GPU after them.
            if not entry.strip() or entry.strip().startswith("-"):
                break
            count += 1
        return count
    try:
        import pynvml  # nvidia-ml-py, a BentoML dependency

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no driver, no library, no GPU: all mean none visible
        return 0


def worker_count(setting: int, gpus: int) -> int:
    """RERANK_WORKERS when set (> 0), else one worker per visible GPU, and one on a host without any."""
    return setting if setting > 0 else max(1, gpus)


def worker_device(device: str, worker_index: int | None, gpu_count: int) -> str:
    """The device a worker runs on: `cuda` becomes `cuda:i`, the workers spread round-robin over the GPUs.

    More workers than GPUs share them (each with its own model copy): several processes to feed one GPU when one
    process cannot tokenize and serialize fast enough (docs/benchmarks.md, host-side ceiling).
    """
    if device != "cuda" or worker_index is None or gpu_count < 2:
        return device
    return f"cuda:{(worker_index - 1) % gpu_count}"


class Readiness:
    """Per-worker marks of "my models are loaded", so that any worker answering /readyz speaks for all of them.

    A worker loads its models before it accepts connections, so while one is still loading the others answer the
    probe, and without the marks they would call the server ready. A mark holds its worker's pid: a worker that died
    (BentoML does not restart workers inside a container) no longer counts as ready.
    """

    def __init__(self, workers: int, folder: Path | None = None) -> None:
        shared = os.environ.get(_SHARED_DIR)
        self.workers = workers
        self.folder = folder or (Path(shared) if shared else None)

    def _mark(self, worker_index: int) -> Path | None:
        return self.folder / f"rerank-ready-{worker_index}" if self.folder else None

    def mark_ready(self, worker_index: int | None) -> None:
        if (mark := self._mark(worker_index or 1)) is not None:
            mark.write_text(str(os.getpid()))

    def mark_leaving(self, worker_index: int | None) -> None:
        """A draining worker: the server stops counting as ready, so a load balancer sends new work elsewhere."""
        if (mark := self._mark(worker_index or 1)) is not None:
            mark.unlink(missing_ok=True)

    def ready_workers(self) -> int:
        if self.folder is None:
            return self.workers  # one process outside `bentoml serve` (tests, tools): ready once it answers
        ready = 0
        for index in range(1, self.workers + 1):
            with contextlib.suppress(OSError, ValueError):
                if _alive(int((self.folder / f"rerank-ready-{index}").read_text())):
                    ready += 1
        return ready

    def all_ready(self) -> bool:
        return self.ready_workers() == self.workers

    def lost_a_worker(self) -> bool:
        """A worker marked ready has died without draining (killed): inside a container BentoML does not start it
        again, so only restarting the server brings the capacity back."""
        if self.folder is None:
            return False
        for mark in self.folder.glob("rerank-ready-*"):
            with contextlib.suppress(OSError, ValueError):
                if not _alive(int(mark.read_text())):
                    return True
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
