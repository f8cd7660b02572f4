"""The timing harness: the one device-aware clock, warm-ups, repeats, medians with spread, outliers.

On CUDA, work is asynchronous: a `Timer` records CUDA events and reads them after one
synchronisation. On CPU it reads `time.perf_counter` (after a synchronisation that is a no-op there).
`Timer.now()` is the plain wall clock after a synchronisation: the decoder (`realrun.decoder`) reads
its per-cycle phase times with it, so the profiler and the decoder share one clock.
A probe is a callable `probe(timer) -> list[float]`: it runs one repetition of the work it measures,
using `timer.mark()` around the timed segments, and returns the segment durations (one number for
most probes; one per draft step for the draft probe). Untimed set-up stays outside the marks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

Probe = Callable[["Timer"], list]

#: a sample is flagged as an outlier beyond this many scaled MADs from the median
OUTLIER_MADS = 4.0


def cpu_busy_fraction(seconds: float = 0.5) -> float | None:
    """Share of all CPU time used over the next `seconds` while this process sleeps (Linux
    /proc/stat): what other processes take. None where /proc/stat is unreadable."""

    def read():
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return None if total <= 0 else 1.0 - (idle1 - idle0) / total


class Timer:
    """Marks and elapsed times on one device: CUDA events on GPU, perf_counter after sync on CPU."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        """Wait for the device's queued work (a no-op on CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """Wall-clock seconds once the device has finished its queued work.

        For code that reads the clock between phases and acts on the values (the decoder's cycle
        records); `mark`/`elapsed` are cheaper where only durations are needed."""
        self.sync()
        return time.perf_counter()

    def mark(self):
        """A point in time: a recorded CUDA event on GPU, perf_counter seconds on CPU."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed(self, start, end) -> float:
        """Seconds between two marks (synchronises first on CUDA)."""
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return end - start

    def durations(self, marks: list) -> list[float]:
        """Consecutive segment durations of a list of marks."""
        return [self.elapsed(a, b) for a, b in zip(marks, marks[1:])]


@dataclass
class Measurement:
    """Robust summary of repeated samples of one quantity, with its coordinates."""

    key: dict  # coordinates, e.g. {"size": 8, "context_len": 256}
    median: float
    p25: float
    p75: float
    mad: float
    n: int
    outliers: int  # samples further than OUTLIER_MADS scaled MADs from the median
    samples: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Measurement":
        return cls(**d)


def summarize(key: dict, samples) -> Measurement:
    x = np.asarray(samples, dtype=np.float64)
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med))) * 1.4826  # consistent with the std for normal noise
    scale = max(mad, 0.02 * med, 1e-9)  # a floor: timers quantise, and a zero MAD flags everything
    outliers = int(np.sum(np.abs(x - med) > OUTLIER_MADS * scale))
    return Measurement(dict(key), med, float(np.percentile(x, 25)), float(np.percentile(x, 75)), mad,
                       len(x), outliers, [float(v) for v in x])


def repeat(probe: Probe, timer: Timer, warmup: int, repeats: int) -> list[list[float]]:
    """Run `probe` `warmup` times untimed, then `repeats` times; return each repetition's segments."""
    for _ in range(warmup):
        probe(timer)
    timer.sync()
    return [list(probe(timer)) for _ in range(repeats)]


def repeat_interleaved(probes: list[Probe], timer: Timer, warmup: int, repeats: int,
                       seed: int = 0, on_call=None) -> list[list[list[float]]]:
    """Like `repeat` for several probes at once, in a fresh random order every round, so that a burst
    of load from other processes spreads over all points instead of spoiling one of them."""
    rng = np.random.default_rng(seed)
    tick = on_call or (lambda: None)
    for probe in probes:
        for _ in range(warmup):
            probe(timer)
            tick()
    timer.sync()
    out: list[list[list[float]]] = [[] for _ in probes]
    for _ in range(repeats):
        for i in rng.permutation(len(probes)):
            out[i].append(list(probes[i](timer)))
            tick()
    return out


def time_callable(fn: Callable[[], object], timer: Timer, warmup: int = 3, repeats: int = 10,
                  key: dict | None = None) -> Measurement:
    """Time a plain callable end to end (the harness puts the marks around it)."""
    def probe(t: Timer):
        a = t.mark()
        fn()
        b = t.mark()
        return [t.elapsed(a, b)]

    reps = repeat(probe, timer, warmup, repeats)
    return summarize(key or {}, [r[0] for r in reps])
