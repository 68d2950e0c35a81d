"""How many CPU threads torch gets when ``--threads`` is not given.

torch's default is one thread per core of the machine, whatever else runs there. On a machine
shared with other jobs the threads then wait for each other at every parallel region: on 2 cores
shared with one other job, the embedded default ran 4-5x slower at torch's default than with one
thread, with identical metrics. So the count is the cores this process may run on
(``os.sched_getaffinity``) minus the load already on them (the 1-minute load average, rounded),
at least 1::

    threads = max(1, min(cores, round(cores - load)))

The count changes float reductions, so a run records the count it used (``threads`` in
config.json) and a resume uses it again. ``python benchmarks/threads.py`` measures a short run at
``--threads 1``, at this default and at torch's default.
"""
from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def current_load() -> float:
    """The 1-minute load average (runnable processes), 0 where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_threads(cores: int, load: float) -> int:
    """Threads for ``cores`` usable cores that already carry ``load`` runnable processes."""
    return max(1, min(cores, round(cores - load)))


def auto_threads() -> tuple[int, str]:
    """(thread count, the reason in words) for this machine now."""
    cores, load = available_cores(), current_load()
    n = choose_threads(cores, load)
    return n, f"{cores} usable cores, load {load:.1f}"
