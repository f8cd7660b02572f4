"""Trace-driven simulation from files: load a cost model and traces, evaluate every method (the library
behind `ltd sim`, `ltd pretrain`, `ltd tune` and the pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltd_sim.errors import LTDError


def load_cost(path: str):
    """A cost model JSON: the profiler's fitted models, or ltd_sim's synthetic analytic model."""
    from ltd_sim.cost_model import ANALYTIC_KIND, AnalyticCostModel

    from ltd_sim.io import read_json

    p = Path(path)
    data = read_json(p, "--cost")
    if isinstance(data, dict) and data.get("kind") == ANALYTIC_KIND:
        return AnalyticCostModel.from_json(data)
    from profiler import load_cost_model  # the profiler's fitted models (imported only when needed)

    return load_cost_model(p)


def cost_device(cost_path: str) -> dict:
    """The device a cost model was profiled on (hardware, threads, dtype, torch; empty for the analytic
    model): what the policies trained on it record as the device they were made for."""
    from profiler.model import device_of

    return device_of(getattr(load_cost(cost_path), "fingerprint", {}) or {})


def load_calibration(path: str | None):
    """An n-gram calibration file (`--ngram-calibration`), or None."""
    from ltd_sim.ngram_calibration import NgramCalibration

    return NgramCalibration.load(path) if path else None


def load_tables(traces: str, cost_path: str, split: str = "all", mix_sampling: bool = False,
                calibration: str | None = None, spec=None):
    """Simulator tables of one split; `calibration`: re-score the traces' n-gram branches with that file."""
    from ltd_sim.sim import SimTables
    from ltd_sim.trace import load_traces

    cal = load_calibration(calibration)
    cost = load_cost(cost_path)
    return SimTables.build(load_traces(traces, split, mix_sampling), cost, spec=spec, calibration=cal)


def fit_ngram_calibration(traces: str, out: str | Path, split: str = "train") -> dict:
    """`ltd sim calibrate`: measure r(m, i) (docs/ngram.md) on one split of n-gram or hybrid traces, write
    the calibration JSON to `out`, and return a summary (cells, counts, the fitted table's head)."""
    from ltd_sim.ngram_calibration import fit_calibration
    from ltd_sim.trace import load_traces

    seqs = load_traces(traces, split, mix_sampling=True)
    if not seqs[0].has_ngram:
        raise LTDError(f"{traces} holds traces of a draft model alone: record them with --ngram or "
                       "--draft-kind ngram to calibrate n-gram scores")
    rows = max(int(max((s.ngram_match.max(initial=0) for s in seqs))), 1)
    cols = seqs[0].max_depth
    pairs = ((s.tree(p), s.continuation(p)) for s in seqs for p in range(s.num_positions))
    cal, reached = fit_calibration(pairs, rows, cols)
    cal.save(out)
    return {"out": str(out), "rows": rows, "cols": cols, "note": cal.note, "digest": cal.digest(),
            "reached": reached.tolist(), "rate": np.exp(cal.log_rate).round(3).tolist()}


def ngram_spec(traces: str, calibration: str | None) -> dict:
    """What policies trained on `traces` record of their n-gram source: the trace folder's n-gram settings
    and the calibration they were trained with (its digest), so that decoding with another says so."""
    from ltd_sim.io import read_json
    from ltd_sim.trace import MANIFEST

    manifest = Path(traces) / MANIFEST
    settings = read_json(manifest, "trace manifest").get("ngram") if manifest.is_file() else None
    if settings is None:
        return {}
    cal = load_calibration(calibration)
    return {"ngram": {**settings, "calibration": cal.digest() if cal is not None else settings.get("calibration")}}


def run_sim_eval(traces: str, cost: str, split: str = "all", policy: str | None = None,
                 mix_sampling: bool = False, calibration: str | None = None) -> dict:
    """Every baseline, the oracle and (with `policy`) the LTD policies on one split of the traces; the
    report names the sampling settings the traces were recorded at. `calibration`: re-score the
    traces' n-gram branches with it."""
    from ltd_sim.baselines import evaluate
    from ltd_sim.features import check_ngram_match
    from ltd_sim.policy import PolicyController, decision_tables
    from ltd_sim.sim import SimTables
    from ltd_sim.trace import load_traces, sampling_of

    controller = PolicyController(policy) if policy else None  # fail before the work
    cal = load_calibration(calibration)
    seqs = load_traces(traces, split, mix_sampling)
    spec = None
    if controller is not None:
        check_ngram_match(controller.spec, seqs[0].has_ngram, f"the policies in {policy}")
        spec = controller.spec
    tables = SimTables.build(seqs, load_cost(cost), spec=spec, calibration=cal)
    schedule = None
    if controller is not None:
        controller.check_compatible(tables.top_k, tables.max_depth)
        schedule = decision_tables(tables, controller.depth_model, controller.size_model,
                                   controller.spec.asks_before_draft)
    report = evaluate(tables, schedule)
    report["sampling"] = [s.to_json() for s in sampling_of(seqs)]
    return report


def serving_sweep(traces: str, cost_path: str, split: str, policy: str | None, rates: list[float],
                  n_requests: int, max_batch: int, calibration: str | None = None) -> list[dict]:
    """The simpy serving simulation of no speculation, the best static setting, EAGLE-3's and (with `policy`)
    LTD over arrival `rates`: goodput and latency percentiles per (schedule, rate)."""
    from ltd_sim.baselines import EAGLE3
    from ltd_sim.policy import PolicyController, decision_tables
    from ltd_sim.serving import Schedule, sweep
    from ltd_sim.sim import SimTables, static_grid
    from ltd_sim.trace import load_traces

    if not rates or min(rates) <= 0 or n_requests < 1 or max_batch < 1:
        raise LTDError("--rates must be positive, --requests and --max-batch at least 1")
    controller = PolicyController(policy) if policy else None  # fail before the work
    cost = load_cost(cost_path)
    tables = SimTables.build(load_traces(traces, split), cost, spec=controller.spec if controller else None,
                             calibration=load_calibration(calibration))
    grid = static_grid(tables)
    best = max(grid, key=lambda k: grid[k].tokens_per_s)
    schedules = [Schedule.static(tables, 1, 0, "no speculation (1,0)"),
                 Schedule.static(tables, *best, f"best static {best}"),
                 Schedule.static(tables, min(EAGLE3[0], tables.max_depth), EAGLE3[1], "eagle3")]
    if controller is not None:
        schedules.append(Schedule("ltd", *decision_tables(tables, controller.depth_model, controller.size_model,
                                                          controller.spec.asks_before_draft)))
    return sweep(tables, cost, schedules, rates, n_requests=n_requests, max_batch=max_batch)
