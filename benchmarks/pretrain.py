"""Full pretraining of both policies (stage 1 and 2) and the `ltd sim eval` figures on held-out traces.

    python benchmarks/pretrain.py --traces DIR --cost F [--out DIR] [--json]
    python benchmarks/pretrain.py --synthetic [--json]     # no traces yet: synthetic trees, analytic cost

Trains on the folder's train split, selects on its val split, evaluates on its test split (the
splits of `ltd_sim.trace.split_of`), and checks the bars below: pretraining time, the policies' gain
over the best static (D, V) and their share of the oracle, in simulated tokens/s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ltd_sim import defaults
from ltd_sim.baselines import evaluate
from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.policy import decision_tables, load_policies
from ltd_sim.sim import SimTables
from ltd_sim.train import PretrainConfig, pretrain

PRETRAIN_BUDGET_S = 15 * 60  # pretraining must fit this wall-clock budget
MIN_GAIN_OVER_STATIC = 1.05  # the policies' simulated rate over the best static (D, V)
MIN_ORACLE_RATIO = 0.85  # the policies' simulated rate over the oracle's


def synthetic_tables() -> dict[str, SimTables]:
    from ltd_sim.synthetic import synthetic_sequence

    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        seqs = [synthetic_sequence(rng, 96, defaults.TOP_K, defaults.MAX_DEPTH, hit=float(rng.uniform(0.6, 1.0)),
                                     vocab=1000, max_sharp=10.0)
                for _ in range(n)]
        out[split] = SimTables.build(seqs, AnalyticCostModel())
    return out


def config_from(assignments: list[str]) -> PretrainConfig:
    """PretrainConfig defaults with FIELD=VALUE overrides (values parsed as JSON, else as text)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    kw = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        kw[name] = tuple(parsed) if isinstance(parsed, list) else parsed
    return PretrainConfig(**kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces")
    ap.add_argument("--cost")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a PretrainConfig field (repeatable), e.g. --set stage1_steps=400000")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.synthetic == bool(args.traces and args.cost):
        ap.error("give --traces DIR --cost F, or --synthetic")
    t0 = time.perf_counter()
    if args.synthetic:
        tables = synthetic_tables()
    else:
        from realrun.simulate import load_tables

        tables = {s: load_tables(args.traces, args.cost, s) for s in ("train", "val", "test")}
    build_s = time.perf_counter() - t0
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ltd-pretrain-"))
    if args.out is None or not (out / "state.json").exists():
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    cfg = config_from(args.set)
    t1 = time.perf_counter()
    pretrain(tables["train"], tables["val"], out, cfg)
    train_s = time.perf_counter() - t1
    trained = load_policies(out / "policies")
    depth_model, size_model = trained.depth_model, trained.size_model
    report = evaluate(tables["test"], decision_tables(tables["test"], depth_model, size_model))
    m = report["methods"]
    summary = {
        "pretrain_seconds": train_s, "table_build_seconds": build_s, "config": cfg.to_json(),
        "test_sequences": report["sequences"], "test_positions": report["positions"],
        "methods": m,
        "ltd_vs_best_static": m["ltd"]["tokens_per_s"] / m["best_static"]["tokens_per_s"],
        "ltd_oracle_ratio": m["ltd"]["oracle_ratio"],
        "bars": {"pretrain_under_15_min": train_s <= PRETRAIN_BUDGET_S,
                 "ltd_5pct_above_best_static":
                     m["ltd"]["tokens_per_s"] >= MIN_GAIN_OVER_STATIC * m["best_static"]["tokens_per_s"],
                 "ltd_85pct_of_oracle": m["ltd"]["oracle_ratio"] >= MIN_ORACLE_RATIO},
        "out": str(out),
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"\npretraining: {train_s:.1f} s (tables {build_s:.1f} s); test split: {report['sequences']} "
          f"sequences, {report['positions']} positions")
    for name, row in m.items():
        extra = {k: v for k, v in row.items() if k in ("depth", "size", "threshold", "skip_threshold")}
        print(f"  {name:24s} {row['tokens_per_s']:9.2f} tok/s  tau {row['tau']:5.2f}  "
              f"oracle {row['oracle_ratio']:.3f}  {extra if extra else ''}")
    print(f"ltd / best static {summary['ltd_vs_best_static']:.3f}, ltd / oracle {summary['ltd_oracle_ratio']:.3f}")
    print("bars:", json.dumps(summary["bars"]))


if __name__ == "__main__":
    main()
