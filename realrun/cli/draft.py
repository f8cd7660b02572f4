"""`ltd draft build`: train an EAGLE-3 draft head for a local target (realrun.draft_build)."""

from __future__ import annotations

import json

from ltd_sim.errors import LTDError


def add_parser(sub) -> None:
    d = sub.add_parser("draft", help="draft heads: build (train) an EAGLE-3 head for a target")
    dsub = d.add_subparsers(dest="draft_command", required=True)
    b = dsub.add_parser("build", help="train an EAGLE-3 head offline, in a bounded time, and cache it")
    b.add_argument("--target", default=None, help="local Hugging Face model dir (default: SmolLM2-135M-Instruct)")
    b.add_argument("--out", default=None, help="where to save the head (default: the cache, where "
                   "`ltd generate --draft default` finds it, for the default target)")
    b.add_argument("--minutes", type=float, default=30.0, help="budget of the whole build (data and training)")
    b.add_argument("--resume", action="store_true", help="continue an interrupted build from its work folder")
    b.add_argument("--work", default=None, help="work folder (default: beside --out)")
    b.add_argument("--draft-vocab", type=int, default=8192, help="reduced draft vocabulary size")
    b.add_argument("--ttt-steps", type=int, default=None, help="unrolled training steps (default: the tree depth)")
    b.add_argument("--gen-fraction", type=float, default=None,
                   help="share of the budget by which generation ends (default 0.33; of the new minutes "
                   "when a finished build is given more)")
    b.add_argument("--data-fraction", type=float, default=None,
                   help="share by which all data (features, extra teacher-forced text) is made (default 0.47)")
    b.add_argument("--prompts", default=None, help="your own prompts (Spec-Bench jsonl or one per line): "
                   "the target's responses to them are generated first, before the built-in prompts")
    b.add_argument("--only-prompts", action="store_true", help="train on the --prompts alone, "
                   "not on the built-in prompt sets too")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.add_argument("--json", action="store_true", help="print the build report as JSON")
    b.set_defaults(func=cmd_draft_build)


def cmd_draft_build(args) -> int:
    from ltd_sim import defaults
    from realrun.draft_build import BuildConfig, TrainConfig, build

    if args.minutes <= 0:
        raise LTDError(f"--minutes must be positive, got {args.minutes}")
    if args.draft_vocab < 16:
        raise LTDError(f"--draft-vocab must be at least 16, got {args.draft_vocab}")
    steps = args.ttt_steps if args.ttt_steps is not None else defaults.MAX_DEPTH
    if not 1 <= steps <= 16:
        raise LTDError(f"--ttt-steps must be in 1..16, got {steps}")
    cfg = BuildConfig(minutes=args.minutes, draft_vocab=args.draft_vocab, seed=args.seed,
                      train=TrainConfig(ttt_steps=steps, seed=args.seed))
    gen = cfg.gen_fraction if args.gen_fraction is None else args.gen_fraction
    data = cfg.data_fraction if args.data_fraction is None else args.data_fraction
    if not 0 <= gen <= data < 1:
        raise LTDError(f"need 0 <= --gen-fraction <= --data-fraction < 1, got {gen} and {data}")
    cfg.gen_fraction, cfg.data_fraction = gen, data
    if args.only_prompts and not args.prompts:
        raise LTDError("--only-prompts needs --prompts FILE")
    cfg.builtin_prompts = not args.only_prompts
    user_prompts = None
    if args.prompts:
        from realrun.draft_build import user_prompt_items
        from realrun.prompts import read_prompts

        user_prompts = user_prompt_items(read_prompts(args.prompts))
    report = build(args.target, args.out, cfg, resume=args.resume, work=args.work, progress=not args.quiet,
                   user_prompts=user_prompts)
    if args.json:
        print(json.dumps(report))
    return 0
