"""Trace-driven simulation from files: load a cost model and traces, evaluate every method (the library
behind `ltd sim`, `ltd pretrain`, `ltd tune` and the pipeline)."""

from __future__ import annotations

from pathlib import Path

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


def load_tables(traces: str, cost_path: str, split: str = "all", mix_sampling: bool = False):
    from ltd_sim.sim import SimTables
    from ltd_sim.trace import load_traces

    cost = load_cost(cost_path)
    return SimTables.build(load_traces(traces, split, mix_sampling), cost)


def run_sim_eval(traces: str, cost: str, split: str = "all", policy: str | None = None,
                 mix_sampling: bool = False) -> dict:
    """Every baseline, the oracle and (with `policy`) the LTD policies on one split of the traces; the
    report names the sampling settings the traces were recorded at."""
    from ltd_sim.baselines import evaluate
    from ltd_sim.policy import PolicyController, decision_tables
    from ltd_sim.sim import SimTables
    from ltd_sim.trace import load_traces, sampling_of

    controller = PolicyController(policy) if policy else None  # fail before the work
    seqs = load_traces(traces, split, mix_sampling)
    tables = SimTables.build(seqs, load_cost(cost))
    schedule = None
    if controller is not None:
        controller.check_compatible(tables.top_k, tables.max_depth)
        schedule = decision_tables(tables, controller.depth_model, controller.size_model,
                                   controller.spec.asks_before_draft)
    report = evaluate(tables, schedule)
    report["sampling"] = [s.to_json() for s in sampling_of(seqs)]
    return report


def serving_sweep(traces: str, cost_path: str, split: str, policy: str | None, rates: list[float],
                  n_requests: int, max_batch: int) -> list[dict]:
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
    tables = SimTables.build(load_traces(traces, split), cost)
    grid = static_grid(tables)
    best = max(grid, key=lambda k: grid[k].tokens_per_s)
    schedules = [Schedule.static(tables, 1, 0, "no speculation (1,0)"),
                 Schedule.static(tables, *best, f"best static {best}"),
                 Schedule.static(tables, min(EAGLE3[0], tables.max_depth), EAGLE3[1], "eagle3")]
    if controller is not None:
        schedules.append(Schedule("ltd", *decision_tables(tables, controller.depth_model, controller.size_model,
                                                          controller.spec.asks_before_draft)))
    return sweep(tables, cost, schedules, rates, n_requests=n_requests, max_batch=max_batch)
