"""`ltd bench`: methods side by side on held-out prompts, Spec-Bench protocol (see realrun.bench)."""

from __future__ import annotations

import json
from pathlib import Path

from ltd_sim import defaults


def add_parser(sub) -> None:
    from realrun.bench import METHODS, SWEEP_QUESTIONS, SWEEP_TOKENS
    from realrun.bench.run import LAW_SEEDS
    from realrun.cli.options import add_decode_options, add_ngram_options, add_sampling_options

    p = sub.add_parser("bench", help="benchmark decoding methods side by side (Spec-Bench protocol)")
    add_decode_options(p)
    add_ngram_options(p)  # the decoder methods draft with n-gram branches (alone with --draft-kind ngram)
    add_sampling_options(p)
    p.add_argument("--seed", type=int, default=0, help="T > 0: the run seed every generation's seed derives from")
    p.add_argument("--law-seeds", type=int, default=LAW_SEEDS,
                   help="T > 0: short runs per method for the distributional check's first-cycle token test")
    p.add_argument("--questions", default=None,
                   help="Spec-Bench jsonl (question_id, category, turns), {\"prompt\"} jsonl or text lines; default: "
                        "the built-in held-out set, HumanEval 80-163 (coding) + a chat set (chat)")
    p.add_argument("--categories", default=None, help="comma-separated categories to keep")
    p.add_argument("--limit", type=int, default=None, help="questions per category (the first N)")
    p.add_argument("--methods", default="ar,eagle3,grid", help=f"comma-separated, of {','.join(METHODS)}")
    p.add_argument("--policy", default=None, help="fine-tuned policy folder (method ltd)")
    p.add_argument("--sim-policy", default=None, help="simulation-pretrained policy folder (method ltd-sim)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--grid", default=None, help="static D,V for method grid (default: a measured sweep)")
    g.add_argument("--grid-from", default=None,
                   help="JSON with the grid setting: `ltd sim eval --json` output (best_static) or a bench report")
    p.add_argument("--sweep-questions", type=int, default=SWEEP_QUESTIONS,
                   help="questions the grid sweep measures on (when no --grid/--grid-from)")
    p.add_argument("--sweep-tokens", type=int, default=SWEEP_TOKENS, help="new tokens per grid-sweep generation")
    p.add_argument("--hf-draft", default=None,
                   help="lm draft dir for hf-assisted (default: the target's first quarter of layers)")
    p.add_argument("--hf-tokens", type=int, default=defaults.ASSISTANT_TOKENS,
                   help="hf-assisted draft tokens per cycle (constant schedule); hf-prompt-lookup's "
                        "prompt_lookup_num_tokens")
    p.add_argument("--max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS)
    p.add_argument("--peer-questions", type=int, default=None,
                   help="run the slow reference peers (eagle3, hf-assisted) on the first N questions only")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmups", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for report.md, report.json, plots/ (default: no files)")
    p.add_argument("--threads", type=int, default=None,
                   help="run on N cores with N torch threads: the device setting (default: every core; "
                        "on a loaded machine 1 is far faster)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from realrun.bench import (
        BenchConfig,
        encode_questions,
        grid_from_file,
        read_questions,
        run_bench,
    )
    from profiler.device import pin_threads
    from realrun.cli.options import ngram_config
    from realrun.loading import NGRAM_KIND, load_pair, set_threads
    from realrun.measure import END_TO_END_RATE

    cfg = BenchConfig(methods=args.methods, policy_dir=args.policy, sim_policy_dir=args.sim_policy,
                      grid_setting=grid_from_file(args.grid_from) if args.grid_from else args.grid,
                      max_new_tokens=args.max_new_tokens, repeats=args.repeats, warmups=args.warmups,
                      hf_draft=args.hf_draft, hf_tokens=args.hf_tokens, sweep_questions=args.sweep_questions,
                      sweep_tokens=args.sweep_tokens, peer_questions=args.peer_questions,
                      temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                      law_seeds=args.law_seeds).validate()
    cats = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    records = read_questions(args.questions, cats, args.limit)
    pin_threads(args.threads)
    set_threads(args.threads)
    draft = args.draft if args.draft_kind == NGRAM_KIND else cfg.draft_for(args.draft)
    pair = load_pair(args.target, draft, args.draft_kind, args.device, args.dtype, ngram=ngram_config(args))
    questions = encode_questions(records, pair.target.tokenizer)
    report = run_bench(pair, questions, cfg, out_dir=args.out, progress=not args.no_progress and not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "runs"}))
        return 0
    print(f"{report['settings']['questions']} questions x {report['settings']['repeats']} repeats on "
          f"{report['device']['device']}, {report['settings']['sampling_label']}; "
          "tok/s = end-to-end rate (prefill included)")
    print(f"{'method':12s} {'tok/s':>8s} {'speedup':>8s} {'tau':>6s}  lossless  policy")
    for name, m in report["methods"].items():
        tau = "-" if m["tau"] is None else f"{m['tau']:.2f}"
        print(f"{name:12s} {m[END_TO_END_RATE]:8.2f} {m['speedup'] or 0:8.3f} {tau:>6s}  {str(m['lossless']):8s}  "
              f"{100 * m['policy_overhead']:.2f}%")
    for key, pr in report.get("paired", {}).items():
        if key.endswith("/grid") and pr["ratio_of_means"] is not None:
            ci = pr["ci90"]
            print(f"{key:12s} {pr['ratio_of_means']:.3f}" + (f" (90% interval {ci[0]:.3f} - {ci[1]:.3f})" if ci else ""))
    if report.get("files"):
        print(f"report: {Path(args.out) / 'report.md'}")
    return 0
