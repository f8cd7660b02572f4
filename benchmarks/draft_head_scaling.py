"""Tau and per-level acceptance against training data, for several saved heads in one run.

Issue 3's question when the bars are not met: what limits the head, measured as tau per level
against training tokens. Every head given is decoded on the same held-out prompts (HumanEval's
"evaluation" problems and Spec-Bench questions, greedy, static EAGLE-3 setting top-k 10 / depth 8 / V 60, as
`benchmarks/draft_head.py`), the heads one after another in one process; its training figures come
from the `build_report.json` saved beside it. Prints a table and writes a JSON, a Markdown table and
a PNG (tau of code and of the Spec-Bench mean, and acceptance of levels 1-3, against the positions
the head trained on).

    python benchmarks/draft_head_scaling.py HEAD_DIR [HEAD_DIR ...] [--per-category 2] [--humaneval 10] \
        [--max-new-tokens 64] [--out runs/head_scaling]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from realrun.draft_head.tau import heldout_prompts, static_tau

DEFAULT_QUESTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench" / "question.jsonl"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("heads", nargs="+", help="head folders (published EAGLE-3 layout, with build_report.json)")
    ap.add_argument("--target", default=None)
    ap.add_argument("--questions", default=str(DEFAULT_QUESTIONS))
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--humaneval", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default="runs/head_scaling")
    args = ap.parse_args(argv)

    from ltd_sim.errors import LTDError
    from realrun.eagle3 import load_head
    from realrun.loading import load_pair, set_threads

    set_threads()
    heads = [Path(h) for h in args.heads]
    for h in heads:
        if not (h / "build_report.json").is_file():
            raise SystemExit(f"error: {h} has no build_report.json (a head made by `ltd draft build`)")
    pair = load_pair(args.target, None)
    order = heldout_prompts(Path(args.questions) if args.questions else None, args.per_category, args.humaneval)
    from realrun.drafters import Eagle3Drafter

    rows = []
    for h in heads:
        t0 = time.monotonic()
        try:
            head = load_head(h, pair.target.model)
        except LTDError as exc:
            raise SystemExit(f"error: {exc}")
        pair.drafter = Eagle3Drafter(head, pair.target.vocab_size)
        build = json.loads((h / "build_report.json").read_text())
        m = static_tau(pair, order, args.max_new_tokens, verbose=False)
        lv, code = m.per_level_acceptance, m.per_level_acceptance_code
        rows.append({"head": str(h), "positions": build["positions"],
                     "generated_positions": build["by_source"]["gen_code"] + build["by_source"]["gen_chat"],
                     "positions_seen": build["train_positions_seen"], "train_steps": build["train_steps"],
                     "tau_code": m.tau_per_category.get("humaneval"),
                     "tau_spec_bench_mean": round(m.tau_spec_bench_mean, 3),
                     "level_acceptance": [lv[k] for k in sorted(lv)],
                     "level_acceptance_code": [code[k] for k in sorted(code)],
                     "tau_per_category": m.tau_per_category, "cycles": len(m.records),
                     "seconds": round(time.monotonic() - t0, 1)})
        r = rows[-1]
        print(f"{h.name:38s} {r['positions']:7d} pos ({r['generated_positions']:6d} generated), "
              f"{r['positions_seen']:7d} seen: tau code {r['tau_code']:.2f}, Spec-Bench {r['tau_spec_bench_mean']:.2f}, "
              f"levels 1-4 {r['level_acceptance'][:4]}  ({r['seconds']:.0f} s)", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "head_scaling.json").write_text(json.dumps({"prompts": len(order), "max_new_tokens": args.max_new_tokens,
                                                       "heads": rows}, indent=1))
    lines = ["| head | positions (generated) | positions seen | steps | tau code | tau Spec-Bench | "
             "acceptance level 1 / 2 / 3 / 4 |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lv = " / ".join(f"{x:.3f}" for x in r["level_acceptance"][:4])
        lines.append(f"| {Path(r['head']).name} | {r['positions']:,} ({r['generated_positions']:,}) | "
                     f"{r['positions_seen']:,} | {r['train_steps']} | {r['tau_code']:.2f} | "
                     f"{r['tau_spec_bench_mean']:.2f} | {lv} |")
    (out / "head_scaling.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "head_scaling.png")
    print(f"wrote {out}/head_scaling.json, .md, .png")
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["positions_seen"])
    x = [r["positions_seen"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(x, [r["tau_code"] for r in rows], "o-", label="code (HumanEval 80+)")
    a.plot(x, [r["tau_spec_bench_mean"] for r in rows], "s-", label="Spec-Bench mean")
    a.set(xscale="log", xlabel="training positions seen", ylabel="tau (top-k 10, depth 8, V 60)",
          title="tau against training")
    a.legend()
    for lvl in range(3):
        b.plot(x, [r["level_acceptance"][lvl] for r in rows], "o-", label=f"level {lvl + 1}")
    b.set(xscale="log", xlabel="training positions seen", ylabel="share of cycles accepting the level",
          title="per-level acceptance against training")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
