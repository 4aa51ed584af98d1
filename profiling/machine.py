"""What a measurement ran on, named once for the sweep, the comparisons and the benchmarks: the CPU model and
cores, a device's name, the load average, free memory, the git commit, the hypervisor's steal (/proc/stat)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import List, Optional

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def physical_cores() -> Optional[int]:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where it cannot be read."""
    try:
        cores, phys, core = set(), None, None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
            elif not line.strip():
                if core is not None:
                    cores.add((phys, core))
                phys = core = None
        return len(cores) or None
    except OSError:
        return None


def device_name(device) -> str:
    """The CPU model, or the CUDA device's name."""
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (rounded to 0.01), or None where the system has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def memory_available() -> Optional[int]:
    """Bytes the kernel could hand out now (MemAvailable in /proc/meminfo), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def git_commit() -> Optional[str]:
    """The checkout's HEAD, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def cpu_times() -> Optional[List[int]]:
    """Aggregate CPU jiffies from /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    try:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_fraction(before: Optional[List[int]], after: Optional[List[int]]) -> Optional[float]:
    """The share of CPU time the hypervisor took between two `cpu_times()` readings."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])
    return (after[7] - before[7]) / total if total > 0 else None
