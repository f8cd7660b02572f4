"""`ltd sim eval`: every baseline, the DP oracle and (optionally) LTD policies on traces + a cost model."""

from __future__ import annotations

import json
from pathlib import Path

from ltd_sim.errors import LTDError


def load_cost(path: str):
    """A cost model JSON: the profiler's fitted models, or ltd_sim's synthetic analytic model."""
    from ltd_sim.cost_model import ANALYTIC_KIND, AnalyticCostModel

    from ltd_sim.atomic import read_json

    p = Path(path)
    data = read_json(p, "--cost")
    if isinstance(data, dict) and data.get("kind") == ANALYTIC_KIND:
        return AnalyticCostModel.from_json(data)
    from profiler import load_cost_model  # the profiler's fitted models (imported only when needed)

    return load_cost_model(p)


def load_tables(traces: str, cost_path: str, split: str = "all"):
    from ltd_sim.sim import SimTables
    from ltd_sim.trace import load_traces

    cost = load_cost(cost_path)
    return SimTables.build(load_traces(traces, split), cost)


def add_parser(sub) -> None:
    p = sub.add_parser("sim", help="trace-driven simulation")
    s = p.add_subparsers(dest="sim_command", required=True)
    e = s.add_parser("eval", help="oracle, static grid, heuristics and LTD policies on traces")
    e.add_argument("--cost", required=True, help="cost model JSON (from `ltd profile`)")
    e.add_argument("--traces", required=True, help="trace folder (from `ltd trace`)")
    e.add_argument("--policy", default=None, help="policy folder (from `ltd pretrain`: OUT/policies)")
    e.add_argument("--split", default="all", choices=["all", "train", "val", "test"],
                   help="which sequences of the folder (the split pretraining uses; default all)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_sim_eval)

    v = s.add_parser("serve", help="simpy serving simulation: goodput and latency vs load")
    v.add_argument("--cost", required=True)
    v.add_argument("--traces", required=True)
    v.add_argument("--policy", default=None)
    v.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    v.add_argument("--rates", default="1,2,4,8,16", help="arrival rates, requests/s, comma-separated")
    v.add_argument("--requests", type=int, default=64)
    v.add_argument("--max-batch", type=int, default=16)
    v.add_argument("--plot", default=None, help="PNG path")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_sim_serve)


def run_sim_eval(traces: str, cost: str, split: str = "all", policy: str | None = None) -> dict:
    """Every baseline, the oracle and (with `policy`) the LTD policies on one split of the traces."""
    from ltd_sim.baselines import evaluate
    from ltd_sim.policy import PolicyController, decision_tables

    controller = PolicyController(policy) if policy else None  # fail before the work
    tables = load_tables(traces, cost, split)
    schedule = None
    if controller is not None:
        controller.check_compatible(tables.top_k, tables.max_depth)
        schedule = decision_tables(tables, controller.depth_model, controller.size_model)
    return evaluate(tables, schedule)


def cmd_sim_eval(args) -> int:
    report = run_sim_eval(args.traces, args.cost, args.split, args.policy)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['sequences']} sequences, {report['positions']} positions")
    print(f"{'method':24s} {'tok/s':>9s} {'tau':>6s} {'oracle':>7s} {'vs AR':>6s}  params")
    for name, row in report["methods"].items():
        params = {k: v for k, v in row.items() if k not in ("tokens_per_s", "tau", "oracle_ratio", "speedup_vs_ar")}
        print(f"{name:24s} {row['tokens_per_s']:9.2f} {row['tau']:6.2f} {row['oracle_ratio']:7.3f} "
              f"{row['speedup_vs_ar']:6.3f}  {params if params else ''}")
    return 0


def cmd_sim_serve(args) -> int:
    from ltd_sim.baselines import EAGLE3
    from ltd_sim.policy import PolicyController, decision_tables
    from ltd_sim.serving import Schedule, plot, sweep
    from ltd_sim.sim import static_grid

    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        raise LTDError(f"--rates must be numbers separated by commas, got {args.rates!r}") from None
    if not rates or min(rates) <= 0 or args.requests < 1 or args.max_batch < 1:
        raise LTDError("--rates must be positive, --requests and --max-batch at least 1")
    controller = PolicyController(args.policy) if args.policy else None
    cost = load_cost(args.cost)
    from ltd_sim.sim import SimTables
    from ltd_sim.trace import load_traces

    tables = SimTables.build(load_traces(args.traces, args.split), cost)
    grid = static_grid(tables)
    best = max(grid, key=lambda k: grid[k].tokens_per_s)
    schedules = [Schedule.static(tables, 1, 0, "no speculation (1,0)"),
                 Schedule.static(tables, *best, f"best static {best}"),
                 Schedule.static(tables, min(EAGLE3[0], tables.max_depth), EAGLE3[1], "eagle3")]
    if controller is not None:
        schedules.append(Schedule("ltd", *decision_tables(tables, controller.depth_model, controller.size_model)))
    rows = sweep(tables, cost, schedules, rates, n_requests=args.requests, max_batch=args.max_batch)
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        print(json.dumps({"rows": rows, "plot": args.plot}))
    else:
        for r in rows:
            print(f"{r['schedule']:24s} rate {r['rate']:6.2f}  goodput {r['goodput_tokens_per_s']:8.2f} tok/s  "
                  f"p50 {r['latency_p50']:7.2f}s  p90 {r['latency_p90']:7.2f}s  p99 {r['latency_p99']:7.2f}s")
    return 0
