"""`ltd trace`: record draft-tree traces of the target's greedy or sampled output (resumable, per prompt)."""

from __future__ import annotations

import json

from ltd_sim import defaults


def add_parser(sub) -> None:
    from realrun.cli.options import add_decode_options, add_ngram_options

    p = sub.add_parser("trace", help="record draft-tree traces for the simulator")
    add_decode_options(p)
    add_ngram_options(p)
    p.add_argument("--prompts", required=True, help="Spec-Bench jsonl (question_id, category, turns) or text lines")
    p.add_argument("--out", required=True, help="trace folder (seq_NNNNN.npz + manifest.json)")
    p.add_argument("--max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS)
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--top-k", type=int, default=defaults.TOP_K)
    p.add_argument("--depth", type=int, default=defaults.MAX_DEPTH, help="max depth recorded")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="record continuations the target samples at this temperature (default 0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each (prompt, sample) derives its own")
    p.add_argument("--samples", type=int, default=1, help="sampled continuations per prompt (T > 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trace)


def cmd_trace(args) -> int:
    from realrun.cli.options import ngram_config
    from realrun.record import run_trace

    summary = run_trace(args.prompts, args.out, args.target, args.draft, args.draft_kind, args.device, args.dtype,
                        max_new_tokens=args.max_new_tokens, limit=args.limit, top_k=args.top_k,
                        max_depth=args.depth, chat=not args.no_chat, threads=args.threads,
                        progress=not args.no_progress, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed, samples=args.samples, ngram=ngram_config(args))
    print(json.dumps(summary) if args.json else
          f"recorded {summary['recorded']} sequences ({summary['positions']} positions), "
          f"skipped {summary['skipped']} already there, {summary['sampling']} -> {summary['out']}")
    return 0
