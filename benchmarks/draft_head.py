"""Benchmark a trained EAGLE-3 draft head on prompts it never trained on.

  python benchmarks/draft_head.py --cost COST.json [--draft DIR] [--target PATH] \
      [--questions spec_bench.jsonl] [--per-category 3] [--humaneval 10] [--max-new-tokens 96] \
      [--minutes 15] [--side-by-side 6] [--context 160] [--out report.json]
  python benchmarks/draft_head.py --static D,V ...      # time one static setting against AR only

1. Static EAGLE-3 setting (top-k 10, depth 8, V 60), greedy, on HumanEval's "evaluation" problems
   (code) and every Spec-Bench category (when the question file is there): mean tau per category and
   per-level acceptance (share of cycles that accept level 1, 2, ...). Every cycle's full depth-8 tree
   is kept (`realrun.draft_head.tau`).
2. Under greedy decoding the tree of depth D is the first D steps of the depth-8 tree, so tau of every
   static (depth, V) is replayed exactly on those trees. Cycle time comes from the cost model (`--cost`,
   a profiler or analytic cost-model JSON: `predict_cycle`); the best predicted setting is then run
   side by side with autoregressive decoding (same prompts, interleaved) and its tokens/s compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from realrun.draft_head.tau import heldout_prompts, static_tau

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench" / "question.jsonl"


def side_by_side(args, pair, order, best: dict, k: int, eagle: tuple[int, int]) -> dict:
    """AR vs the best static setting vs the EAGLE-3 default, same prompts, the order of the three rotated
    per prompt (so that none always runs first, after the previous prompt's slowest method)."""
    from realrun.bench import Question, paired_ratio
    from realrun.measure import Run
    from realrun.decoder import DecodeConfig, generate
    from realrun.models import encode_prompt

    target, tok = pair.target.model, pair.target.tokenizer
    runs = {"ar": None, "best": (best["depth"], best["size"]), "eagle_10_8_60": eagle}
    timed = defaultdict(list)  # name -> [(Question, 0, Run)]
    mismatches = 0
    picks = [order[i] for i in np.linspace(0, len(order) - 1, min(args.side_by_side, len(order))).astype(int)]
    print(f"\nside by side on {len(picks)} prompts, order rotated per prompt ...", flush=True)
    names = list(runs)
    for pi, (cat, prompt) in enumerate(picks):
        ids = encode_prompt(tok, prompt)
        q = Question(f"p{pi}", cat, ids)
        outs = {}
        for name in names[pi % 3:] + names[:pi % 3]:
            setting = runs[name]
            if setting is None:
                r = generate(target, ids, None, DecodeConfig(max_new_tokens=args.max_new_tokens),
                             eos_ids=pair.eos_ids, context_limit=pair.context_limit)
            else:
                d, v = setting
                r = generate(target, ids, pair.drafter, DecodeConfig(max_new_tokens=args.max_new_tokens, top_k=k,
                                                                     max_depth=d),
                             StaticDepth(d), StaticSize(v), eos_ids=pair.eos_ids, context_limit=pair.context_limit)
            outs[name] = r.token_ids
            timed[name].append((q, 0, Run(tokens=r.token_ids, wall_s=r.wall_s)))
        mismatches += sum(outs[n] != outs["ar"] for n in outs if n != "ar")
    rate = {n: sum(len(r.tokens) for _, _, r in v) / sum(r.wall_s for _, _, r in v) for n, v in timed.items()}
    print("tokens/s (total tokens / total wall):", {n: round(v, 2) for n, v in rate.items()})
    speedup = {n: round(rate[n] / rate["ar"], 3) for n in rate if n != "ar"}
    paired = paired_ratio(timed["best"], timed["ar"])
    ci = paired["ci90"]
    print("speedup vs autoregressive:", speedup, f"(outputs differing from AR: {mismatches}); best/ar median per "
          f"prompt {paired['median_per_question']:.3f}" + (f", 90% interval {ci[0]:.3f} - {ci[1]:.3f}" if ci else ""))
    return {"best_static": best, "tokens_per_s": rate, "speedup_vs_ar": speedup, "paired_best_vs_ar": paired,
            "side_by_side_prompts": len(picks), "outputs_differing_from_ar": mismatches}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draft", default="default")
    ap.add_argument("--target", default=None)
    ap.add_argument("--questions", default=str(DEFAULT_QUESTIONS))
    ap.add_argument("--per-category", type=int, default=3)
    ap.add_argument("--humaneval", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--side-by-side", type=int, default=6, help="prompts for the AR vs best-static timing")
    ap.add_argument("--minutes", type=float, default=15.0, help="stop adding prompts after this long")
    ap.add_argument("--cost", default=None, help="cost-model JSON (`ltd profile`) that predicts each static "
                    "setting's cycle time")
    ap.add_argument("--context", type=int, default=160, help="context length the cycle times are predicted at")
    ap.add_argument("--static", default=None, metavar="D,V",
                    help="skip the tau and replay parts: time this static setting against AR side by side")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.static:
        try:
            args.static = tuple(int(x) for x in args.static.split(","))
        except ValueError:
            args.static = ()
        if len(args.static) != 2 or args.static[0] < 1 or args.static[1] < 0:
            ap.error("--static takes DEPTH,V with depth >= 1 and V >= 0, e.g. --static 1,2")
    elif not args.cost:
        ap.error("--cost COST.json is needed to pick the best static setting (or give --static D,V)")

    from realrun.loading import load_pair, set_threads
    from realrun.simulate import load_cost

    cost = load_cost(args.cost) if args.cost else None
    set_threads()
    t_start = time.monotonic()
    pair = load_pair(args.target, args.draft, "eagle3")
    order = heldout_prompts(Path(args.questions) if args.questions else None, args.per_category, args.humaneval)
    k, depth, size = defaults.TOP_K, defaults.MAX_DEPTH, defaults.STATIC_SIZE
    if args.static:
        best = {"depth": args.static[0], "size": args.static[1], "source": "--static"}
        report = side_by_side(args, pair, order, best, k, (depth, size))
        report.update(wall_s=round(time.monotonic() - t_start, 1), threads=torch.get_num_threads(),
                      load_avg=os.getloadavg())
        write_report(args.out, report)
        print(json.dumps({k: report[k] for k in ("best_static", "speedup_vs_ar", "paired_best_vs_ar")}))
        return 0
    measured = static_tau(pair, order, args.max_new_tokens, deadline=t_start + args.minutes * 60 * 0.75)
    tau_cat = measured.tau_per_category
    print("\ntau per category (static 10/8/60):")
    for c, v in sorted(tau_cat.items()):
        print(f"  {c:15s} {v:.2f}")
    print(f"  code (humaneval) {tau_cat.get('humaneval', float('nan')):.2f}   mean over Spec-Bench categories "
          f"{measured.tau_spec_bench_mean:.2f}")
    print("per-level acceptance (share of cycles accepting level l):", measured.per_level_acceptance)

    # ---- replay every static (depth, V) on the recorded trees, predict time, pick the best --------
    ar_cycle = cost.predict_cycle(0, 0, args.context, k)
    grid = []
    for d in range(1, depth + 1):
        for v in (v for v in defaults.SIZE_GRID if v > 0):
            tau = measured.replay(d, v)
            sec = cost.predict_cycle(d, v, args.context, k)
            grid.append({"depth": d, "size": v, "tau": round(tau, 3), "pred_speedup": round(tau / sec * ar_cycle, 3)})
    grid.sort(key=lambda g: -g["pred_speedup"])
    best = grid[0]
    print(f"best predicted static ({args.cost}): depth {best['depth']}, V {best['size']}, tau {best['tau']}, "
          f"predicted {best['pred_speedup']:.2f}x")

    sbs = side_by_side(args, pair, order, best, k, (depth, size))
    report = {"tau_per_category": tau_cat, "tau_code": tau_cat.get("humaneval"),
              "tau_spec_bench_mean": round(measured.tau_spec_bench_mean, 3),
              "per_level_acceptance": measured.per_level_acceptance,
              "per_level_acceptance_code": measured.per_level_acceptance_code, "cycles": len(measured.records),
              "cost_model": args.cost, "context": args.context, "static_grid_top10": grid[:10],
              **sbs, "max_new_tokens": args.max_new_tokens,
              "wall_s": round(time.monotonic() - t_start, 1), "threads": torch.get_num_threads(),
              "load_avg": os.getloadavg()}
    write_report(args.out, report)
    print(json.dumps({k: report[k] for k in ("tau_code", "tau_spec_bench_mean", "best_static", "speedup_vs_ar")}))
    return 0


def write_report(out: str | None, report: dict) -> None:
    if out:
        from ltd_sim.io import write_json

        write_json(out, report)


if __name__ == "__main__":
    sys.exit(main())
