"""Predicted against measured cycle time: real `generate` runs, static (depth, V) settings, held-out
prompts (`realrun.prompts.default_bench_prompts`: evaluation-only HumanEval problems and the bench's
chat prompts), default target + EAGLE-3 head (the cached
default head, else the same random-init head `ltd profile` uses; with it acceptance is about 0, which
does not matter for timing).

Every cycle's measured `total_s` is compared with `predict_cycle(depth, V, context_len, top_k)` of the
profiled cost model (without policy decisions: these schedules are static). Prints the median absolute
percentage error per cycle, per generation (sums of cycles) and per phase. The first cycle of each
generation is reported apart: its first draft step is the head's prefill of the whole prompt, which is
prompt processing, not a cycle.

    python benchmarks/cost_model.py [--model runs/default/cost_model.json] [--profile quick|full]
                                    [--max-new-tokens 32] [--prompts-per-setting 2] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from ltd_sim.io import write_json, write_with

SETTINGS = [(1, 0), (1, 2), (2, 4), (3, 8), (4, 16), (5, 24), (6, 32), (8, 48), (8, 60)]


def ape(pred: float, meas: float) -> float:
    return abs(pred - meas) / meas


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/default/cost_model.json")
    ap.add_argument("--profile", choices=["quick", "full"], default="quick",
                    help="sweep to run first when --model does not exist")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--prompts-per-setting", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="accept a cost model profiled elsewhere")
    ap.add_argument("--out", default=None, help="write cycles.json and a scatter PNG here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from profiler import load_cost_model
    from realrun.decoder import DecodeConfig, generate
    from realrun.loading import load_pair, set_threads
    from realrun.models import encode_prompt
    from realrun.probes import pair_fingerprint, profile_drafter, run_profile
    from realrun.prompts import default_bench_prompts

    path = Path(args.model)
    if not path.exists():
        print(f"no cost model at {path}: profiling first ({args.profile})", file=sys.stderr)
        run_profile(preset=args.profile, out=path.parent, log=lambda m: print(m, file=sys.stderr))
    set_threads()
    pair = load_pair()
    drafter, draft_id, weights = profile_drafter(pair)
    model = load_cost_model(path, expect_fingerprint=pair_fingerprint(pair, draft_id, weights),
                            force=args.force).without_policy()
    tok = pair.target.tokenizer
    prompts = [(p["id"], p["text"]) for p in default_bench_prompts()]
    top_k = defaults.TOP_K
    rows, gens = [], []
    t0 = time.perf_counter()
    p = 0
    for depth, size in SETTINGS:
        for _ in range(args.prompts_per_setting):
            pid, text = prompts[p % len(prompts)]
            p += 1
            ids = encode_prompt(tok, text, chat=True)
            cfg = DecodeConfig(max_new_tokens=args.max_new_tokens, top_k=top_k, max_depth=depth)
            res = generate(pair.target.model, ids, drafter, cfg, StaticDepth(depth), StaticSize(size),
                           eos_ids=pair.eos_ids, context_limit=pair.context_limit)
            meas_sum = pred_sum = 0.0
            for i, c in enumerate(res.cycles):
                pred = model.predict_cycle(c.depth, c.size, c.context_len, c.top_k)
                parts = {"draft": sum(model.draft_step(s, c.top_k, c.context_len) for s in range(1, c.depth + 1)),
                         "verify": model.verify(c.size, c.context_len),
                         "overhead": model.overhead(c.depth, c.size, c.top_k)}
                rows.append({"prompt": pid, "setting": [depth, size], "cycle": i, "depth": c.depth, "size": c.size,
                             "context_len": c.context_len, "accepted": c.accepted, "measured_s": c.total_s,
                             "predicted_s": pred, "draft_s": c.draft_s, "verify_s": c.verify_s,
                             "overhead_s": c.overhead_s, **{f"pred_{k}_s": v for k, v in parts.items()}})
                if i > 0:
                    meas_sum += c.total_s
                    pred_sum += pred
            if pred_sum > 0:
                gens.append({"prompt": pid, "setting": [depth, size], "cycles": len(res.cycles) - 1,
                             "measured_s": meas_sum, "predicted_s": pred_sum, "tau": res.tau})
            print(f"  D={depth} V={size:2d} {pid:14s} {len(res.cycles):3d} cycles  measured {meas_sum:6.2f} s  "
                  f"predicted {pred_sum:6.2f} s  ({100 * (pred_sum - meas_sum) / max(meas_sum, 1e-9):+.1f}%)",
                  file=sys.stderr)
    wall = time.perf_counter() - t0
    steady = [r for r in rows if r["cycle"] > 0]
    first = [r for r in rows if r["cycle"] == 0]
    summary = {
        "cycles": len(steady), "generations": len(gens), "wall_s": round(wall, 1),
        "cost_model": str(path), "draft": draft_id, "draft_weights": weights,
        "cycle_median_ape": statistics.median(ape(r["predicted_s"], r["measured_s"]) for r in steady),
        "cycle_mean_ape": statistics.fmean(ape(r["predicted_s"], r["measured_s"]) for r in steady),
        "generation_median_ape": statistics.median(ape(g["predicted_s"], g["measured_s"]) for g in gens),
        "first_cycle_median_ape": statistics.median(ape(r["predicted_s"], r["measured_s"]) for r in first),
        "phase_median_ape": {ph: statistics.median(ape(r[f"pred_{ph}_s"], r[f"{ph}_s"]) for r in steady
                                                   if r[f"{ph}_s"] > 0)
                             for ph in ("draft", "verify", "overhead")},
        "per_setting": {},
    }
    for depth, size in SETTINGS:
        sel = [r for r in steady if r["setting"] == [depth, size]]
        if sel:
            summary["per_setting"][f"D{depth}_V{size}"] = {
                "cycles": len(sel), "measured_ms": 1e3 * statistics.median(r["measured_s"] for r in sel),
                "predicted_ms": 1e3 * statistics.median(r["predicted_s"] for r in sel),
                "median_ape": statistics.median(ape(r["predicted_s"], r["measured_s"]) for r in sel)}
    if args.out:
        out = Path(args.out)
        write_json(out / "cost_model_bench.json", {"summary": summary, "cycles": rows})
        _scatter(steady, summary, out / "cost_model_bench.png")
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"\n{len(steady)} cycles in {len(gens)} generations ({wall:.0f} s), cost model {path}")
        print(f"{'setting':>9s} {'cycles':>6s} {'measured':>9s} {'predicted':>9s} {'median APE':>10s}")
        for k, s in summary["per_setting"].items():
            print(f"{k:>9s} {s['cycles']:6d} {s['measured_ms']:7.1f}ms {s['predicted_ms']:7.1f}ms "
                  f"{100 * s['median_ape']:9.1f}%")
        ph = summary["phase_median_ape"]
        print(f"per phase median APE: draft {100 * ph['draft']:.1f}%, verify {100 * ph['verify']:.1f}%, "
              f"overhead {100 * ph['overhead']:.1f}%")
        print(f"first cycles (head prefill inside): median APE {100 * summary['first_cycle_median_ape']:.1f}%")
        print(f"per generation: median APE {100 * summary['generation_median_ape']:.1f}%")
        print(f"PER CYCLE: median absolute percentage error {100 * summary['cycle_median_ape']:.1f}% "
              f"(target <= 10%)")
    return 0


def _scatter(rows, summary, path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no GUI backend to switch

    fig = Figure(figsize=(5.5, 5), tight_layout=True)
    ax = fig.subplots()
    settings = sorted({tuple(r["setting"]) for r in rows})
    for i, s in enumerate(settings):
        sel = [r for r in rows if tuple(r["setting"]) == s]
        ax.scatter([1e3 * r["measured_s"] for r in sel], [1e3 * r["predicted_s"] for r in sel], s=8,
                   color=colormaps["viridis"](i / max(len(settings) - 1, 1)), label=f"D={s[0]} V={s[1]}")
    lim = [0, 1e3 * max(max(r["measured_s"], r["predicted_s"]) for r in rows) * 1.05]
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.plot(lim, [x * 1.1 for x in lim], "k:", lw=0.6)
    ax.plot(lim, [x * 0.9 for x in lim], "k:", lw=0.6)
    ax.set(xlim=lim, ylim=lim, xlabel="measured cycle (ms)", ylabel="predicted cycle (ms)",
           title=f"cycle time: median APE {100 * summary['cycle_median_ape']:.1f}%")
    ax.legend(fontsize=7)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LTDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
