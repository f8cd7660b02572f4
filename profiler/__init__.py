"""The hardware profiler: times the real decoder's phases (callables handed in by `realrun`), fits
step-following cost models with scikit-learn, and saves them as versioned JSON with a fingerprint.

Public API: `load_cost_model(path, expect_fingerprint=None, force=False)` -> `FittedCostModel`.

The names below load on first use (PEP 562), so that `realrun.decoder` can import the shared clock
(`profiler.timing`) without loading scikit-learn, which fitting needs and decoding does not.
"""

from __future__ import annotations

import importlib

_HOMES = {"fit_cost_model": "profiler.build", "profile_device": "profiler.build",
          "FORMAT_VERSION": "profiler.model", "FittedCostModel": "profiler.model",
          "load_cost_model": "profiler.model", "make_fingerprint": "profiler.model",
          "SweepSpec": "profiler.sweeps", "run_sweeps": "profiler.sweeps",
          "Measurement": "profiler.timing", "Timer": "profiler.timing"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'profiler' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
