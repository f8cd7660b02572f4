"""N-gram branches in simulation: held-out LTD vs the best static setting vs the oracle, for the head
alone, the hybrid tree (head + n-grams) and n-grams alone, on traces of the same prompts (issue 15;
docs/ngram.md, "In simulation").

    python benchmarks/ngram_sim.py --cost runs/A/cost_model.json --out runs/i15h \
        --hybrid runs/i15h/traces_hybrid --ngram runs/i15h/traces_ngram \
        --hybrid-policy runs/i15h/pretrain_hybrid/policies --ngram-policy runs/i15h/pretrain_ngram/policies \
        --hybrid-calibration runs/i15h/cal_hybrid.json --ngram-calibration runs/i15h/cal_ngram.json

The head-alone tables are the hybrid traces with their n-gram nodes removed (the head's own tree and
scores are recorded in them). "either" is the oracle over the union of the hybrid decoder's and the
n-gram-alone decoder's actions at every position (both traces follow the same target output): what a
hybrid decoder whose policy may also skip the head (n-gram branches only, no head forward) could reach.
Writes OUT/ngram_sim.json and OUT/ngram_sim.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ltd_sim.io import write_bytes, write_json


def head_only(seqs):
    """The head's own trees of hybrid traces: n-gram-only nodes dropped, merged nodes keep the head's score."""
    from ltd_sim.tree import SOURCE_HEAD
    from ltd_sim.trace import HEAD, TraceSequence
    from ltd_sim.tree import DraftTree

    out = []
    for s in seqs:
        trees = []
        for p in range(s.num_positions):
            t = s.tree(p)
            keep = np.flatnonzero((t.sources & SOURCE_HEAD) != 0)
            keep = np.concatenate(([0], keep))
            where = np.full(t.num_nodes, -1)
            where[keep] = np.arange(len(keep))
            parents = np.where(t.parents[keep] < 0, -1, where[np.maximum(t.parents[keep], 0)])
            trees.append(DraftTree(t.tokens[keep], parents.astype(np.int32),
                                   np.concatenate(([0.0], t.head_scores[keep[1:]])).astype(np.float32), t.steps[keep]))
        out.append(TraceSequence.from_trees(trees, s.output, s.context_lens, s.top_k, s.max_depth, s.meta,
                                            s.sampling, HEAD))
    return out


def either_oracle(a, b) -> float:
    """tokens/s of the DP over the union of two tables' actions (same positions)."""
    from ltd_sim.sim import SimTables

    assert isinstance(a, SimTables) and np.array_equal(a.seq_end, b.seq_end)
    D, G = a.max_depth, len(a.grid)
    tokens = time = 0.0
    for s in range(a.num_sequences):
        lo, hi = int(a.seq_start[s]), int(a.seq_end[s])
        n = hi - lo
        cols_acc, cols_cost = [], []
        for t in (a, b):
            valid = (np.arange(D)[None, :] < t.dmax[lo:hi, None]).repeat(G, axis=1)
            cols_acc.append(t.acc[lo:hi].reshape(n, D * G).astype(np.int64))
            cols_cost.append(np.where(valid, t.cost[lo:hi].reshape(n, D * G), np.inf))
        acc = np.concatenate(cols_acc + [np.zeros((n, 1), np.int64)], axis=1)
        cost = np.concatenate(cols_cost + [np.minimum(a.no_draft_cost[lo:hi], b.no_draft_cost[lo:hi])[:, None]], axis=1)
        best = np.zeros(n + 1)
        for i in range(n - 1, -1, -1):
            best[i] = np.min(cost[i] + best[i + np.minimum(acc[i] + 1, n - i)])
        tokens += n
        time += best[0]
    return tokens / time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cost", required=True)
    ap.add_argument("--hybrid", required=True)
    ap.add_argument("--ngram", required=True)
    ap.add_argument("--hybrid-policy")
    ap.add_argument("--ngram-policy")
    ap.add_argument("--hybrid-calibration")
    ap.add_argument("--ngram-calibration")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from ltd_sim.baselines import evaluate
    from ltd_sim.policy import PolicyController, decision_tables
    from ltd_sim.sim import SimTables
    from ltd_sim.trace import load_traces
    from realrun.simulate import load_calibration, load_cost

    cost = load_cost(args.cost)
    hybrid_seqs = load_traces(args.hybrid, args.split)
    ngram_seqs = load_traces(args.ngram, args.split)
    if [s.output.tolist() for s in hybrid_seqs] != [s.output.tolist() for s in ngram_seqs]:
        print("the two trace folders do not follow the same outputs", file=sys.stderr)
        return 2
    regimes = {
        "head alone": (head_only(hybrid_seqs), None, None),
        "head + n-grams": (hybrid_seqs, args.hybrid_policy, args.hybrid_calibration),
        "n-grams alone": (ngram_seqs, args.ngram_policy, args.ngram_calibration),
    }
    rows, tables = {}, {}
    for name, (seqs, policy, cal) in regimes.items():
        ctrl = PolicyController(policy) if policy else None
        t = SimTables.build(seqs, cost, spec=ctrl.spec if ctrl else None, calibration=load_calibration(cal))
        tables[name] = t
        schedule = decision_tables(t, ctrl.depth_model, ctrl.size_model, ctrl.spec.asks_before_draft) if ctrl else None
        rows[name] = evaluate(t, schedule)["methods"]
        print(f"{name}: done", file=sys.stderr)
    ar = rows["head alone"]["autoregressive"]["tokens_per_s"]
    either = either_oracle(tables["head + n-grams"], tables["n-grams alone"])
    result = {"split": args.split, "positions": tables["head alone"].num_positions, "regimes": rows,
              "either_oracle_tokens_per_s": either, "autoregressive_tokens_per_s": ar}
    lines = [f"Simulated on the {args.split} split ({result['positions']} positions), tokens/s and x plain "
             f"decoding ({ar:.2f} tok/s):", "",
             "| regime | best static | best heuristic | LTD | oracle |", "|---|---|---|---|---|"]
    for name, m in rows.items():
        heur = max((k for k in m if k not in ("oracle", "autoregressive", "best_static", "eagle3", "ltd")),
                   key=lambda k: m[k]["tokens_per_s"])
        bs = m["best_static"]
        ltd = f"{m['ltd']['tokens_per_s']:.2f} ({m['ltd']['tokens_per_s'] / ar:.3f}x)" if "ltd" in m else "-"
        lines.append(f"| {name} | {bs['tokens_per_s']:.2f} ({bs['tokens_per_s'] / ar:.3f}x; D {bs['depth']}, "
                     f"V {bs['size']}) | {heur} {m[heur]['tokens_per_s']:.2f} ({m[heur]['tokens_per_s'] / ar:.3f}x) | "
                     f"{ltd} | {m['oracle']['tokens_per_s']:.2f} ({m['oracle']['tokens_per_s'] / ar:.3f}x) |")
    lines += ["", f"Oracle over both decoders' actions (head + n-grams, or n-grams alone, per cycle): "
              f"{either:.2f} tok/s ({either / ar:.3f}x)."]
    out = Path(args.out)
    write_json(out / "ngram_sim.json", result)
    write_bytes(out / "ngram_sim.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
