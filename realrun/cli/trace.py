"""`ltd trace`: record draft-tree traces of the target's greedy output (resumable, per prompt)."""

from __future__ import annotations

import json

from ltd_sim import defaults
from ltd_sim.errors import LTDError


def add_parser(sub) -> None:
    from realrun.cli.options import add_decode_options

    p = sub.add_parser("trace", help="record draft-tree traces for the simulator")
    add_decode_options(p)
    p.add_argument("--prompts", required=True, help="Spec-Bench jsonl (question_id, category, turns) or text lines")
    p.add_argument("--out", required=True, help="trace folder (seq_NNNNN.npz + manifest.json)")
    p.add_argument("--max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS)
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--top-k", type=int, default=defaults.TOP_K)
    p.add_argument("--depth", type=int, default=defaults.MAX_DEPTH, help="max depth recorded")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trace)


def cmd_trace(args) -> int:
    from realrun.decoder import DecodeConfig
    from realrun.loading import load_pair, set_threads
    from realrun.models import encode_prompt
    from realrun.prompts import read_prompts
    from realrun.record import record_prompts

    if args.draft is None:
        raise LTDError("`ltd trace` needs a draft model: --draft DIR (or --draft default)")
    if args.limit is not None and args.limit < 1:
        raise LTDError(f"--limit must be at least 1, got {args.limit}")
    DecodeConfig(max_new_tokens=args.max_new_tokens, top_k=args.top_k, max_depth=args.depth).validate(True)
    prompts = read_prompts(args.prompts, args.limit)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    else:
        set_threads()
    pair = load_pair(args.target, args.draft, args.draft_kind, args.device, args.dtype)
    encode = lambda text: encode_prompt(pair.target.tokenizer, text, chat=not args.no_chat)  # noqa: E731
    info = {"target": str(pair.target.path), "draft": str(pair.draft_path), "draft_kind": pair.draft_kind,
            "prompts": str(args.prompts), "chat": not args.no_chat}
    summary = record_prompts(pair, prompts, args.out, encode, args.max_new_tokens, args.top_k, args.depth,
                             progress=not args.no_progress, info=info)
    print(json.dumps(summary) if args.json else
          f"recorded {summary['recorded']} sequences ({summary['positions']} positions), "
          f"skipped {summary['skipped']} already there -> {summary['out']}")
    return 0
