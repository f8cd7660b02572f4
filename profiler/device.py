"""The device setting a command runs on (DESIGN.md, "Devices and rates"): torch threads and dtype.

On a CPU the thread count is part of the device: a one-core and a two-core machine have different
cost curves. `pin_threads(n)` makes this process an n-core machine: its CPU affinity is cut to n cores
(so that every later "every core" default, `realrun.loading.set_threads()` included, counts n) and
torch gets n threads. Fingerprints (`profiler.model.make_fingerprint`) then record n.
"""

from __future__ import annotations

import os

from ltd_sim.errors import LTDError


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def pin_threads(threads: int | None) -> int:
    """Restrict this process to `threads` cores and torch to `threads` threads (None: leave every core).
    Returns the thread count in force; a count outside 1..cores is a one-line LTDError."""
    import torch

    cores = available_cores()
    if threads is None:
        return torch.get_num_threads()
    if not 1 <= threads <= len(cores):
        raise LTDError(f"--threads must be in 1..{len(cores)} (the cores this process may use), got {threads}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores[:threads])
    torch.set_num_threads(threads)
    return threads


def dtype_name(dtype: str | None, device: str = "cpu") -> str:
    """The dtype a run loads its target in, by name (`realrun.models.pick_dtype`'s choice for "auto")."""
    if dtype in (None, "auto"):
        return "float32" if not str(device or "cpu").startswith("cuda") else "bfloat16"
    name = str(dtype).replace("torch.", "")
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
