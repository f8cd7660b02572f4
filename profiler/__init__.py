"""The hardware profiler: times the real decoder's phases (callables handed in by `realrun`), fits
step-following cost models with scikit-learn, and saves them as versioned JSON with a fingerprint.

Public API: `load_cost_model(path, expect_fingerprint=None, force=False)` -> `FittedCostModel`.
"""

from profiler.build import fit_cost_model, profile_device
from profiler.model import FORMAT_VERSION, FittedCostModel, load_cost_model, make_fingerprint
from profiler.sweeps import SweepSpec, run_sweeps
from profiler.timing import Measurement, Timer

__all__ = ["FORMAT_VERSION", "FittedCostModel", "Measurement", "SweepSpec", "Timer", "fit_cost_model",
           "load_cost_model", "make_fingerprint", "profile_device", "run_sweeps"]
