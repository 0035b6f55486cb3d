"""torch's intra-op threads for a server (--threads).

A server process runs its event loop (accepting connections, parsing JSON, tokenizing to count
and bound requests) on one thread and each served model's batches on a worker thread, and
each batch fans out over torch's intra-op threads. With torch's default (one thread per core)
a busy model's threads take every core, and their OpenMP threads spin between the small
batches a server runs: the event loop, which feeds the next batch, waits for a core. Leaving
it one core is what keeps requests flowing (benchmarks/serve.py --threads-compare measures it; the
numbers are in docs/server.md).
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (taskset, containers' cpusets)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """All cores but one (for the event loop), at least one, at most torch's own default."""
    import torch

    return max(1, min(usable_cores() - 1, torch.get_num_threads()))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads for every thread of the process (workers start later and
    inherit it); returns the number used."""
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    used = threads or default_threads()
    torch.set_num_threads(used)
    return used
