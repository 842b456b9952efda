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
from typing import Literal

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


CpuClass = Literal["amx", "avx512-bf16", "avx2", "other"]
# What each class means, in the words the import's one-line choice and the README's CPU table use.
CPU_CLASSES: dict[CpuClass, str] = {
    "amx": "AMX bfloat16 tiles (Intel Xeon 4th generation and later)",
    "avx512-bf16": "AVX-512 with bfloat16 and VNNI, no AMX (AMD Zen 4 and 5, Intel Cooper Lake)",
    "avx2": "AVX2 without AVX-512 bfloat16 (older Intel and AMD, most desktops)",
    "other": "neither AVX2 nor the above (another architecture)",
}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The feature flags /proc/cpuinfo lists for the first CPU (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_class(flags: frozenset[str] | None = None) -> CpuClass:
    """The class of CPU that decides the fastest CPU path: bfloat16 matrix units, bfloat16 vector instructions, or
    neither (docs/benchmarks.md, CPU backends by CPU class)."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags and "avx512_vnni" in flags:
        return "avx512-bf16"
    return "avx2" if "avx2" in flags else "other"


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether bfloat16 arithmetic runs natively here; elsewhere oneDNN would emulate it, slower than float32."""
    return cpu_class(flags) in ("amx", "avx512-bf16")


def has_amx_bf16() -> bool:
    """Whether the CPU has AMX bfloat16 tile units (Intel Xeon 4th generation and later), which run torch's bfloat16
    matrix products several times faster than float32 (docs/benchmarks.md, CPU backends)."""
    return cpu_class() == "amx"
