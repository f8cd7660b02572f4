"""`ltd finetune`: continue PPO from the simulator's policies on the real decoder (resumable)."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    from realrun.cli.options import add_decode_options, add_sampling_options, add_threads_option
    from realrun.finetune import DEFAULT_STEPS, FinetuneConfig

    d = FinetuneConfig()
    p = sub.add_parser("finetune", help="fine-tune LTD policies with PPO on the real decoder")
    add_decode_options(p)
    add_threads_option(p)
    add_sampling_options(p)
    p.add_argument("--policy", required=True, help="policy folder to start from (from `ltd pretrain`: OUT/policies)")
    p.add_argument("--out", required=True, help="run folder: policies/ (best validated), checkpoints/, state.json, tb/")
    p.add_argument("--prompts", required=True,
                   help="Spec-Bench jsonl or text lines; split by order 3/5 train, 1/5 validation, 1/5 left out")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help=f"env steps in all (default {DEFAULT_STEPS})")
    budget.add_argument("--minutes", type=float, default=None, help="wall-clock budget, validation included")
    p.add_argument("--rounds", type=int, default=d.rounds, help="(depth, size) phase rounds")
    p.add_argument("--n-steps", type=int, default=d.n_steps, help="env steps per PPO update")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="per generation")
    p.add_argument("--reward", choices=["time", "throughput"], default=None,
                   help="default: the reward the policies were pretrained with")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-chat", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the run already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args) -> int:
    from ltd_sim.trace import split_prompts
    from profiler.device import pin_threads
    from realrun.finetune import FinetuneConfig, check_options, run_finetune
    from realrun.loading import load_pair, set_threads
    from realrun.measure import encode_prompts
    from realrun.prompts import read_prompts

    cfg = FinetuneConfig(rounds=args.rounds, n_steps=args.n_steps, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, max_new_tokens=args.max_new_tokens,
                         reward=args.reward, seed=args.seed, temperature=args.temperature, top_p=args.top_p)
    steps, minutes = check_options(args.policy, args.out, args.steps, args.minutes, cfg,
                                   has_draft=args.draft is not None, resume=args.resume)
    prompts = read_prompts(args.prompts, args.limit)
    split_prompts(prompts)  # too few prompts fail before the models load
    pin_threads(args.threads)
    set_threads()
    pair = load_pair(args.target, args.draft, args.draft_kind, args.device, args.dtype)
    ids = encode_prompts(pair, prompts, chat=not args.no_chat)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    summary = run_finetune(pair, args.policy, args.out, ids, steps=steps, minutes=minutes, cfg=cfg,
                           resume=True, progress=not args.no_progress, log=log)
    if args.json:
        print(json.dumps(summary))
    return 0
