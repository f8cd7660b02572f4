"""Sampling (T > 0) in simulation: how the best static (D, V) moves with temperature, and whether LTD
trained at a temperature beats the best static there (issue 14's measurement; docs/sampling.md).

    python benchmarks/sampling_sim.py --run runs/i14 --cost runs/A/cost_model.json \
        --prompts 30 --tokens 64 --samples 2 --temperatures 0 0.7 1.0

Stages (each resumes: traces skip recorded sequences, pretraining resumes from its state.json):
  1. record traces of the default pair on the default trace prompts at every temperature
     (`samples` sampled continuations per prompt at T > 0), RUN/traces_T<t>/;
  2. pretrain LTD in simulation on each temperature's train split (validated on its val split),
     RUN/ltd_T<t>/policies;
  3. pretrain one policy on all temperatures' train splits together (validated on all val splits),
     RUN/ltd_mixed/policies: the "one policy for every temperature" design, against per-temperature ones;
  4. on each temperature's held-out test split: the oracle, autoregressive, the best static setting of
     that split, the static setting tuned on greedy traces (best on the greedy train + val splits) run at
     this temperature, the heuristics, LTD trained at this temperature, LTD trained greedy, LTD trained
     on the mix.
Writes RUN/sampling_sim.json and RUN/sampling_sim.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ltd_sim.io import write_bytes, write_json


def record(run: Path, temperatures: list[float], top_p: float, n_prompts: int, tokens: int, samples: int) -> None:
    from ltd_sim.trace import Sampling
    from realrun.loading import load_pair, set_threads
    from realrun.models import encode_prompt
    from realrun.pipeline import trace_origin
    from realrun.prompts import default_trace_prompts
    from realrun.record import record_prompts

    set_threads()
    pair = load_pair(None, "default", "eagle3")
    prompts = default_trace_prompts(n_prompts)
    for t in temperatures:
        sampling = Sampling(t, top_p)
        summary = record_prompts(pair, prompts, trace_dir(run, t), lambda x: encode_prompt(pair.target.tokenizer, x),
                                 tokens, sampling=sampling, samples=samples if t > 0 else 1, seed=0,
                                 info=trace_origin(pair, pair.draft_path))
        print(f"T={t}: {summary}", file=sys.stderr)


TRACES_RUN: Path | None = None  # --traces-from: read another run's traces (one recording, several cost models)


def trace_dir(run: Path, t: float) -> Path:
    return (TRACES_RUN or run) / f"traces_T{t:g}"


def policy_dir(run: Path, t: float) -> Path:
    return run / f"ltd_T{t:g}"


def train_policies(run: Path, cost: str, temperatures: list[float], stage1: int, stage2: int, rounds: int) -> None:
    from ltd_sim.train import PretrainConfig, pretrain
    from realrun.simulate import cost_device, load_tables

    for t in temperatures:
        traces = str(trace_dir(run, t))
        cfg = PretrainConfig(stage1_steps=stage1, stage2_steps=stage2, rounds=rounds)
        res = pretrain(load_tables(traces, cost, "train"), load_tables(traces, cost, "val"), policy_dir(run, t),
                       cfg, log=lambda m: print(m, file=sys.stderr),
                       extra_spec={"traces": traces, "cost": cost, "device": cost_device(cost)})
        print(f"T={t}: LTD val {res.val_tokens_per_s:.2f} tok/s, best static {res.val_best_static:.2f}",
              file=sys.stderr)


def train_mixed(run: Path, cost_path: str, temperatures: list[float], stage1: int, stage2: int, rounds: int) -> None:
    from ltd_sim.sim import SimTables
    from ltd_sim.train import PretrainConfig, pretrain
    from ltd_sim.trace import load_traces
    from realrun.simulate import cost_device, load_cost

    cost = load_cost(cost_path)
    tables = {split: SimTables.build([s for t in temperatures for s in load_traces(trace_dir(run, t), split)], cost)
              for split in ("train", "val")}
    cfg = PretrainConfig(stage1_steps=stage1, stage2_steps=stage2, rounds=rounds)
    res = pretrain(tables["train"], tables["val"], run / "ltd_mixed", cfg, log=lambda m: print(m, file=sys.stderr),
                   extra_spec={"traces": [str(trace_dir(run, t)) for t in temperatures], "cost": cost_path,
                               "device": cost_device(cost_path)})
    print(f"mixed: LTD val {res.val_tokens_per_s:.2f} tok/s, best static {res.val_best_static:.2f}", file=sys.stderr)


def _schedule(tables, policies: Path):
    from ltd_sim.policy import PolicyController, decision_tables

    ctrl = PolicyController(str(policies / "policies"))
    ctrl.check_compatible(tables.top_k, tables.max_depth)
    return decision_tables(tables, ctrl.depth_model, ctrl.size_model, ctrl.spec.asks_before_draft)


def evaluate_all(run: Path, cost_path: str, temperatures: list[float]) -> dict:
    from ltd_sim.baselines import evaluate
    from ltd_sim.sim import SimTables, simulate_static, simulate_tables, static_grid
    from ltd_sim.trace import load_traces
    from realrun.simulate import load_cost

    cost = load_cost(cost_path)
    greedy = min(temperatures)  # the greedy reference (T = 0 when listed)
    tuning = SimTables.build(load_traces(trace_dir(run, greedy), "train")
                             + load_traces(trace_dir(run, greedy), "val"), cost)
    grid = static_grid(tuning)
    greedy_static = max(grid, key=lambda k: grid[k].tokens_per_s)
    out = {"greedy_tuned_static": list(greedy_static), "temperatures": {}}
    for t in temperatures:
        test = SimTables.build(load_traces(trace_dir(run, t), "test"), cost)
        report = evaluate(test, _schedule(test, policy_dir(run, t)))
        rows = report["methods"]
        a_rate, o_rate = rows["autoregressive"]["tokens_per_s"], rows["oracle"]["tokens_per_s"]
        best_rate = rows["best_static"]["tokens_per_s"]
        d, v = greedy_static
        res = simulate_static(test, d, test.grid.index(v) if d else 0)
        rows["greedy_tuned_static"] = {"tokens_per_s": res.tokens_per_s, "tau": res.tau, "depth": d, "size": v,
                                       "speedup": res.tokens_per_s / a_rate, "oracle_ratio": res.tokens_per_s / o_rate}
        other = _schedule(test, policy_dir(run, greedy))
        res = simulate_tables(test, *other)
        rows["ltd_trained_greedy"] = {"tokens_per_s": res.tokens_per_s, "tau": res.tau,
                                      "speedup": res.tokens_per_s / a_rate, "oracle_ratio": res.tokens_per_s / o_rate,
                                      "vs_best_static": res.tokens_per_s / best_rate}
        res = simulate_tables(test, *_schedule(test, run / "ltd_mixed"))
        rows["ltd_trained_on_mix"] = {"tokens_per_s": res.tokens_per_s, "tau": res.tau,
                                      "speedup": res.tokens_per_s / a_rate, "oracle_ratio": res.tokens_per_s / o_rate,
                                      "vs_best_static": res.tokens_per_s / best_rate}
        out["temperatures"][f"{t:g}"] = {"sequences": report["sequences"], "positions": report["positions"],
                                         "methods": rows, "static_grid": report["static_grid"]}
    return out


def markdown(result: dict, cost: str) -> str:
    lines = [f"Cost model: `{cost}`. Held-out test split of each temperature's traces. "
             f"Static setting tuned on greedy traces: (D, V) = {tuple(result['greedy_tuned_static'])}.", ""]
    temps = list(result["temperatures"])
    names = ["oracle", "best_static", "greedy_tuned_static", "ltd", "ltd_trained_greedy", "ltd_trained_on_mix",
             "confidence_stop",
             "confidence_skip", "entropy_stop", "transformers_heuristic", "eagle3", "autoregressive"]
    lines += ["| method | " + " | ".join(f"T = {t} tok/s (tau)" for t in temps) + " |",
              "|---|" + "---|" * len(temps)]
    for name in names:
        cells = []
        for t in temps:
            row = result["temperatures"][t]["methods"].get(name)
            if row is None:
                cells.append("-")
                continue
            setting = f" D{row['depth']} V{row['size']}" if "depth" in row and "size" in row else ""
            tau = row.get("tau")
            cells.append(f"{row['tokens_per_s']:.2f} ({tau:.2f}){setting}" if tau is not None
                         else f"{row['tokens_per_s']:.2f}{setting}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| T | LTD / best static | LTD trained greedy / best static | LTD trained on the mix / best static "
              "| greedy-tuned static / best static | oracle / best static |",
              "|---|---|---|---|---|---|"]
    for t in temps:
        m = result["temperatures"][t]["methods"]
        best = m["best_static"]["tokens_per_s"]
        lines.append(f"| {t} | {m['ltd']['tokens_per_s'] / best:.3f} | "
                     f"{m['ltd_trained_greedy']['tokens_per_s'] / best:.3f} | "
                     f"{m['ltd_trained_on_mix']['tokens_per_s'] / best:.3f} | "
                     f"{m['greedy_tuned_static']['tokens_per_s'] / best:.3f} | "
                     f"{m['oracle']['tokens_per_s'] / best:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--cost", required=True, help="cost model JSON of this device (from `ltd profile`)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.7, 1.0])
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--prompts", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--stage1-steps", type=int, default=30_000)
    ap.add_argument("--stage2-steps", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--skip-record", action="store_true")
    ap.add_argument("--traces-from", default=None, help="use this run folder's traces (implies --skip-record)")
    args = ap.parse_args()
    run = Path(args.run)
    if args.traces_from:
        global TRACES_RUN
        TRACES_RUN = Path(args.traces_from)
        args.skip_record = True
    temps = sorted(args.temperatures)
    if not args.skip_record:
        record(run, temps, args.top_p, args.prompts, args.tokens, args.samples)
    train_policies(run, args.cost, temps, args.stage1_steps, args.stage2_steps, args.rounds)
    train_mixed(run, args.cost, temps, args.stage1_steps, args.stage2_steps, args.rounds)
    result = evaluate_all(run, args.cost, temps)
    write_json(run / "sampling_sim.json", result)
    md = markdown(result, args.cost)
    write_bytes(run / "sampling_sim.md", md.encode())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
