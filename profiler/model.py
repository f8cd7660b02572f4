"""The fitted cost model: the `ltd_sim.cost_model.CostModel` protocol, saved as versioned JSON.

File layout (format_version 1):
  {"format_version": 1, "kind": "ltd-cost-model",
   "fingerprint": {device, torch, dtype, target, draft, draft_weights, top_k, date, ...},
   "components": {name: {"params": {x, y, coef, intercept}, "cv": {mape, median_ape, ...}}},
   "policy_s": seconds per policy decision, "include_policy": true, "meta": {...}}
Components: draft_step, verify, overhead (always), batch_forward and ngram (when measured; files from
before the n-gram term lack "ngram" and still load: `ngram()` is then 0).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

import numpy as np

from ltd_sim.cost_model import predict_cycle
from ltd_sim.errors import LTDError
from ltd_sim.io import write_json
from profiler.fit import ARGS, FEATURES, predict_params

FORMAT_VERSION = 1
KIND = "ltd-cost-model"
COMPONENTS = ("draft_step", "verify", "overhead", "batch_forward", "ngram")
#: fingerprint fields that must match for a model to describe this machine and these models; a device
#: is whatever changes the cost curves: the hardware, the torch threads and the dtype
MATCH_FIELDS = ("device", "threads", "torch", "dtype", "target", "draft")
#: the fields that name a device (what a policy records about where it was made)
DEVICE_FIELDS = ("device", "threads", "dtype", "torch")


def device_name(device) -> str:
    """A readable id of the hardware timings depend on (GPU name, or CPU model and thread count)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model} ({torch.get_num_threads()} threads)"


def make_fingerprint(device, dtype, target: str, draft: str, draft_weights: str = "", top_k: int = 0,
                     **extra) -> dict:
    import torch

    return {"device": device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "dtype": str(dtype).replace("torch.", ""),
            "target": target, "draft": draft, "draft_weights": draft_weights, "top_k": int(top_k),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}


def fingerprint_mismatch(have: dict, expect: dict) -> list[str]:
    """The MATCH_FIELDS on which `have` differs from `expect` (fields `expect` leaves out are not checked)."""
    return [f"{k}: profiled {have[k]!r}, current {expect[k]!r}" if k in have else
            f"{k}: not recorded (an older profile), current {expect[k]!r}"
            for k in MATCH_FIELDS if k in expect and expect[k] is not None and have.get(k) != expect[k]]


def device_of(fingerprint: dict) -> dict:
    """The device part of a fingerprint (hardware, threads, dtype, torch)."""
    return {k: fingerprint[k] for k in DEVICE_FIELDS if k in fingerprint}


def device_label(fingerprint: dict) -> str:
    d = device_of(fingerprint)
    return f"{d.get('device', '?')}, {d.get('threads', '?')} threads, {d.get('dtype', '?')}"


def device_mismatch(made_for: dict | None, here: dict, what: str = "these policies") -> str | None:
    """One line when `what` was made for another device than `here` (None when they match, or when
    `made_for` records no device: an artifact from before devices were recorded)."""
    if not made_for:
        return None
    diffs = [k for k in DEVICE_FIELDS if k in made_for and k in here and made_for[k] != here[k]]
    if not diffs:
        return None
    return (f"note: {what} were made for {device_label(made_for)}; this run is on {device_label(here)} "
            f"(differs in {', '.join(diffs)}; `ltd port` re-profiles and retrains for this device)")


class FittedCostModel:
    """Per-phase seconds from fitted step-plus-linear curves (implements ltd_sim's CostModel)."""

    def __init__(self, components: dict, policy_s: float, fingerprint: dict, include_policy: bool = True,
                 meta: dict | None = None):
        missing = [c for c in ("draft_step", "verify", "overhead") if c not in components]
        if missing:
            raise ValueError(f"cost model lacks components {missing}")
        self.components = components
        self.policy_s = float(policy_s)
        self.fingerprint = dict(fingerprint)
        self.include_policy = include_policy
        self.meta = dict(meta or {})

    def _eval(self, name: str, *args) -> float:
        X = FEATURES[name](*args)
        return max(float(predict_params(self.components[name]["params"], X)[0]), 0.0)

    # ---- the CostModel protocol ----
    def draft_step(self, step: int, top_k: int, context_len: int) -> float:
        return self._eval("draft_step", step, top_k, context_len)

    def verify(self, size: int, context_len: int) -> float:
        return self._eval("verify", size, context_len)

    def overhead(self, depth: int, size: int, top_k: int) -> float:
        """Fixed work plus, with `include_policy`, depth + 1 policy decisions (one per step, one for V)."""
        fixed = self._eval("overhead", depth, size, top_k)
        return fixed + (self.policy_s * (depth + 1) if self.include_policy else 0.0)

    def ngram(self, context_len: int, depth: int | None = None) -> float:
        """The n-gram lookup and its merges into a tree of `depth` steps (None: the deepest profiled,
        where the fitted step function is clipped); 0.0 for a profile from before this term
        (`has_ngram` tells the two apart)."""
        if not self.has_ngram:
            return 0.0
        return self._eval("ngram", context_len, np.inf if depth is None else depth)

    @property
    def has_ngram(self) -> bool:
        return "ngram" in self.components

    def predict_cycle(self, depth: int, size: int, context_len: int, top_k: int) -> float:
        return predict_cycle(self, depth, size, context_len, top_k)

    # ---- extras: the batch cost the serving simulation reads (ltd_sim.serving.batched_verify) ----
    @property
    def has_batch_forward(self) -> bool:
        """Whether the profile measured batched forwards (a sweep with batch points)."""
        return "batch_forward" in self.components

    def batch_forward(self, batch: int, tokens: int) -> float:
        """A target forward of `batch` sequences x `tokens` new tokens (serving simulation)."""
        if not self.has_batch_forward:
            raise LTDError("this cost model has no batch_forward component (profile again)")
        return self._eval("batch_forward", batch, tokens)

    def cv_errors(self) -> dict:
        return {k: v.get("cv", {}) for k, v in self.components.items()}

    def without_policy(self) -> "FittedCostModel":
        """The same model for static schedules (no policy is asked)."""
        return FittedCostModel(self.components, self.policy_s, self.fingerprint, False, self.meta)

    def to_json(self) -> dict:
        return {"format_version": FORMAT_VERSION, "kind": KIND, "fingerprint": self.fingerprint,
                "components": self.components, "policy_s": self.policy_s,
                "include_policy": self.include_policy, "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> "FittedCostModel":
        return cls(d["components"], d["policy_s"], d["fingerprint"], d.get("include_policy", True), d.get("meta"))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model's JSON atomically; returns the path."""
        write_json(path, self.to_json())
        return Path(path)


def _n_linear(name: str) -> int:
    return FEATURES[name](*[1] * len(ARGS[name])).shape[1] - 1


def _check_params(comps: dict) -> None:
    for name, comp in comps.items():
        p = comp["params"]
        x, y = np.asarray(p["x"], dtype=float), np.asarray(p["y"], dtype=float)
        if x.ndim != 1 or x.shape != y.shape or x.size == 0 or not np.all(np.isfinite(x)) \
                or not np.all(np.isfinite(y)) or np.any(np.diff(x) < 0):
            raise ValueError(f"component {name!r} has malformed step thresholds")
        if name in FEATURES and len(p["coef"]) not in (0, _n_linear(name)):
            raise ValueError(f"component {name!r} has {len(p['coef'])} linear terms, expected {_n_linear(name)}")
        float(p["intercept"])


def load_cost_model(path: str | os.PathLike, expect_fingerprint: dict | None = None,
                    force: bool = False) -> FittedCostModel:
    """Load a cost model JSON. A corrupted or version-mismatched file raises LTDError (one line);
    so does a fingerprint that differs from `expect_fingerprint` on device, torch, dtype or models,
    unless `force`."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise LTDError(f"no cost model at {path}; run `ltd profile --out {path.parent}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LTDError(f"corrupted cost model at {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise LTDError(f"corrupted cost model at {path}: not an LTD cost model file")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise LTDError(f"cost model at {path} has format version {version!r}; this toolkit reads "
                       f"{FORMAT_VERSION} (run `ltd profile --force` to re-profile)")
    try:
        model = FittedCostModel.from_json(raw)
        _check_params(model.components)
        float(model.policy_s)
        if not isinstance(model.fingerprint, dict):
            raise TypeError("fingerprint is not an object")
    except (KeyError, TypeError, ValueError) as exc:
        raise LTDError(f"corrupted cost model at {path}: {type(exc).__name__}: {exc}") from None
    if expect_fingerprint and not force:
        diffs = fingerprint_mismatch(model.fingerprint, expect_fingerprint)
        if diffs:
            raise LTDError(f"cost model at {path} was profiled elsewhere ({'; '.join(diffs)}); "
                           "profile this device with `ltd profile`, or force it")
    return model
