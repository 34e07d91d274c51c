"""How many CPU threads a run should use: the cores free right now, not every core.

torch's default is one thread per core. Its threads wait for each other at the end of every
parallel region, so when another program keeps a core busy (a laptop, a shared server) each
step waits for the thread that lost its core: measured on a 2-core VM, a toysim study took
6 s alone and 36–210 s beside one CPU-bound process with two threads, 8.5–8.9 s with one.
Every entry point therefore picks its thread count once, at start-up, from the cores that
are idle then; ``--threads`` / ``OMP_NUM_THREADS`` still decide when given. Results depend
on the thread count only in their last digits (docs/tutorial.md, "How far results move
between machines"); fullscale records the count and ``--resume`` restores it.

Docs: docs/tutorial.md (Speed). Tests: tests/test_machine.py. Benchmark: ``python -m shared.loadbench``.
"""

from __future__ import annotations

import functools
import os
import time

import torch

__all__ = ["usable_cores", "idle_cores", "default_threads", "apply_threads"]

WINDOW_S = 0.1
"""How long the idle time of the cores is sampled (seconds)."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one). Docs: docs/tutorial.md (Speed)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cpu_times(text: str) -> tuple[int, int]:
    """(idle, total) jiffies from the aggregate ``cpu`` line of /proc/stat (proc(5):
    user nice system idle iowait irq softirq steal …; idle time is idle + iowait)."""
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])


def idle_cores(window_s: float = WINDOW_S) -> float | None:
    """How many cores' worth of CPU time went unused over the last ``window_s`` seconds
    (Linux: /proc/stat, sampled twice); elsewhere the cores minus the 1-minute load average;
    None when the OS tells neither. Docs: docs/tutorial.md (On a busy machine)."""
    n = os.cpu_count() or 1
    try:
        with open("/proc/stat") as f:
            idle0, total0 = _cpu_times(f.read())
        time.sleep(window_s)
        with open("/proc/stat") as f:
            idle1, total1 = _cpu_times(f.read())
        if total1 > total0:
            return n * (idle1 - idle0) / (total1 - total0)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return max(0.0, n - os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=1)
def default_threads() -> int:
    """The thread count a run takes when none is given: ``OMP_NUM_THREADS`` when set, else
    the usable cores that are idle at the first call (rounded, at least 1). Measured once
    per process, so every study of one command uses the same count."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = usable_cores()
    free = idle_cores()
    if free is None:
        return cores
    return max(1, min(cores, int(free + 0.5)))


def apply_threads(threads: int = 0) -> int:
    """Set torch's CPU thread count: ``threads`` when > 0, else ``default_threads()``; returns it.
    Docs: docs/tutorial.md (On a busy machine)."""
    n = threads if threads > 0 else default_threads()
    torch.set_num_threads(n)
    return n
