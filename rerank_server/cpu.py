"""How many CPU threads this process may use: the CPUs it is pinned to, bounded by its container's CPU quota.

torch, ONNX Runtime and OpenVINO size their thread pools from the host's cores, ignoring a cgroup quota (`docker run
--cpus 2`, Kubernetes `limits.cpu`): on a 32-core host a 2-CPU container would run 16 threads on 2 CPUs' time, and
lose most of it to preemption. So the server sets every runtime's thread count from this number.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def _quota_v2(cgroup: Path) -> float | None:
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) / int(period)


def _quota_v1(cgroup: Path) -> float | None:
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def quota(cgroup: Path = _CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (`2.5` for `--cpus 2.5`), or None without one."""
    return _quota_v2(cgroup) if (cgroup / "cpu.max").exists() else _quota_v1(cgroup)


@lru_cache(maxsize=1)
def usable_cpus() -> int:
    """CPUs this process can use: its affinity set, capped by the quota rounded down (at least 1)."""
    pinned = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = quota()
    # Rounded down: 2.5 CPUs of time run 2 busy threads without throttling; 3 would be preempted half the time.
    return max(1, min(pinned, math.floor(limit))) if limit else max(1, pinned)


@lru_cache(maxsize=1)
def has_amx_bf16() -> bool:
    """Whether the CPU has AMX bfloat16 tile units (Intel Xeon 4th generation and later), which run torch's bfloat16
    matrix products several times faster than float32 (docs/benchmarks.md, CPU backends)."""
    try:
        return " amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
