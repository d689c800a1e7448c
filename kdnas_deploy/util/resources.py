"""What this process may use of the machine: CPUs (affinity mask and cgroup quota, not the host's core count) and
memory (what is available now, within the cgroup's limit).

`os.cpu_count()` counts the host: a container given 2 CPUs on a 64-core node reads 64, fingerprints as a 64-CPU
machine and starts 64 compute threads on 2 CPUs' worth of time. Memory is checked before a model is built, so an
architecture that cannot fit is refused in one line instead of the machine swapping or the kernel killing the run.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

from kdnas_deploy.util.errors import KdnasError

_CGROUP = Path("/sys/fs/cgroup")


def _quota_cpus(root: Path = _CGROUP) -> float | None:
    """The cgroup's CPU limit in CPUs (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`); None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = _CGROUP) -> int:
    """CPUs this process can run on at once: the smaller of its affinity mask and its cgroup quota (rounded up)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = _quota_cpus(root)
    if quota is not None and quota > 0:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


@lru_cache(maxsize=1)
def cpu_budget() -> int:
    """`usable_cpus()` for this process, read once."""
    return usable_cpus()


def available_memory(root: Path = _CGROUP, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes this process could still allocate: the kernel's MemAvailable, capped by the cgroup's free limit; None
    where neither can be read (not Linux)."""
    found: list[int] = []
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


def ensure_memory(needed_bytes: float, what: str) -> None:
    """One line, before anything is allocated, when `what` needs more memory than the machine has available."""
    have = available_memory()
    if have is not None and needed_bytes > have:
        raise KdnasError(f"{what} needs about {needed_bytes / 2**30:.1f} GiB of memory; "
                         f"{have / 2**30:.1f} GiB is available here")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
