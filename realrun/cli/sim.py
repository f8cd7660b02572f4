"""`ltd sim eval`: every baseline, the DP oracle and (optionally) LTD policies on traces + a cost model."""

from __future__ import annotations

import json

from ltd_sim.errors import LTDError


def add_parser(sub) -> None:
    p = sub.add_parser("sim", help="trace-driven simulation")
    s = p.add_subparsers(dest="sim_command", required=True)
    e = s.add_parser("eval", help="oracle, static grid, heuristics and LTD policies on traces")
    e.add_argument("--cost", required=True, help="cost model JSON (from `ltd profile`)")
    e.add_argument("--traces", required=True, help="trace folder (from `ltd trace`)")
    e.add_argument("--policy", default=None, help="policy folder (from `ltd pretrain`: OUT/policies)")
    e.add_argument("--split", default="all", choices=["all", "train", "val", "test"],
                   help="which sequences of the folder (the split pretraining uses; default all)")
    e.add_argument("--mix-sampling", action="store_true",
                   help="allow traces recorded at different temperatures / top-p in one evaluation")
    e.add_argument("--ngram-calibration", default=None,
                   help="re-score the traces' n-gram branches with this calibration (from `ltd sim calibrate`)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_sim_eval)

    c = s.add_parser("calibrate", help="fit n-gram scores (acceptance rate by match length and depth) on traces")
    c.add_argument("--traces", required=True, help="trace folder recorded with --ngram or --draft-kind ngram")
    c.add_argument("--split", default="train", choices=["all", "train", "val", "test"])
    c.add_argument("--out", required=True, help="calibration JSON to write (use it as --ngram-calibration)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_sim_calibrate)

    v = s.add_parser("serve", help="simpy serving simulation: goodput and latency vs load")
    v.add_argument("--cost", required=True)
    v.add_argument("--traces", required=True)
    v.add_argument("--policy", default=None)
    v.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    v.add_argument("--rates", default="1,2,4,8,16", help="arrival rates, requests/s, comma-separated")
    v.add_argument("--requests", type=int, default=64)
    v.add_argument("--max-batch", type=int, default=16)
    v.add_argument("--plot", default=None, help="PNG path")
    v.add_argument("--ngram-calibration", default=None, help="re-score the traces' n-gram branches with it")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_sim_serve)

    t = s.add_parser("transfer", help="the simulated transfer matrix: each run's policies on every run's device")
    t.add_argument("--runs", nargs="+", required=True, help="run folders (cost_model.json, traces/, pretrain/policies)")
    t.add_argument("--split", default="test", choices=["all", "train", "val", "test"])
    t.add_argument("--out", default=None, help="folder for transfer.md and transfer.json")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_sim_transfer)


def cmd_sim_eval(args) -> int:
    from realrun.simulate import run_sim_eval

    from ltd_sim.trace import Sampling

    report = run_sim_eval(args.traces, args.cost, args.split, args.policy, args.mix_sampling,
                          args.ngram_calibration)
    if args.json:
        print(json.dumps(report))
        return 0
    sampling = "; ".join(Sampling.from_json(x).label() for x in report["sampling"])
    print(f"{report['sequences']} sequences, {report['positions']} positions, traces at {sampling}")
    print(f"{'method':24s} {'tok/s':>9s} {'tau':>6s} {'oracle':>7s} {'vs AR':>6s}  params")
    for name, row in report["methods"].items():
        params = {k: v for k, v in row.items() if k not in ("tokens_per_s", "tau", "oracle_ratio", "speedup_vs_ar")}
        print(f"{name:24s} {row['tokens_per_s']:9.2f} {row['tau']:6.2f} {row['oracle_ratio']:7.3f} "
              f"{row['speedup_vs_ar']:6.3f}  {params if params else ''}")
    return 0


def cmd_sim_calibrate(args) -> int:
    from realrun.simulate import fit_ngram_calibration

    summary = fit_ngram_calibration(args.traces, args.out, args.split)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['note']} -> {summary['out']} (digest {summary['digest']})")
    print("acceptance rate r(m, i): rows match length m = 1.., columns branch position i = 1..")
    for m, (rates, counts) in enumerate(zip(summary["rate"], summary["reached"]), start=1):
        print(f"m={m:<3d} " + " ".join(f"{r:.2f}({n})" for r, n in zip(rates, counts)))
    return 0


def cmd_sim_serve(args) -> int:
    from ltd_sim.serving import plot
    from realrun.simulate import serving_sweep

    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        raise LTDError(f"--rates must be numbers separated by commas, got {args.rates!r}") from None
    rows = serving_sweep(args.traces, args.cost, args.split, args.policy, rates, args.requests, args.max_batch,
                         args.ngram_calibration)
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        print(json.dumps({"rows": rows, "plot": args.plot}))
    else:
        for r in rows:
            print(f"{r['schedule']:24s} rate {r['rate']:6.2f}  goodput {r['goodput_tokens_per_s']:8.2f} tok/s  "
                  f"p50 {r['latency_p50']:7.2f}s  p90 {r['latency_p90']:7.2f}s  p99 {r['latency_p99']:7.2f}s")
    return 0


def cmd_sim_transfer(args) -> int:
    from pathlib import Path

    from realrun.port import transfer_matrix, write_transfer_matrix

    matrix = transfer_matrix([Path(r) for r in args.runs], args.split)
    if args.out:
        write_transfer_matrix(matrix, Path(args.out))
    if args.json:
        print(json.dumps(matrix))
        return 0
    for c in matrix["cells"]:
        print(f"{Path(c['policies_from']).name:>24s} -> {Path(c['device']).name:24s} {c['tokens_per_s']:8.2f} tok/s  "
              f"vs ported {c['vs_ported']:.3f}  vs best static {c['vs_best_static']:.3f}  "
              f"vs plain {c['vs_autoregressive']:.3f}  no-draft {100 * c['no_draft_share']:.0f}%")
    return 0
