"""`ltd draft build`: train an EAGLE-3 draft head for a local target (realrun.draft_head). Argparse only:
the options are checked by the build itself (`BuildConfig.validate`)."""

from __future__ import annotations

import json


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
    b.set_defaults(func=cmd_build_head)


def cmd_build_head(args) -> int:
    from realrun.draft_head import BuildConfig, TrainConfig, build, user_prompt_items
    from realrun.prompts import read_prompts

    given = {name: value for name, value in (("gen_fraction", args.gen_fraction),
                                             ("data_fraction", args.data_fraction)) if value is not None}
    train = TrainConfig(seed=args.seed, **({"ttt_steps": args.ttt_steps} if args.ttt_steps is not None else {}))
    cfg = BuildConfig(minutes=args.minutes, draft_vocab=args.draft_vocab, seed=args.seed,
                      builtin_prompts=not args.only_prompts, train=train, **given)
    user_prompts = user_prompt_items(read_prompts(args.prompts)) if args.prompts else None
    report = build(args.target, args.out, cfg, resume=args.resume, work=args.work, progress=not args.quiet,
                   user_prompts=user_prompts)
    if args.json:
        print(json.dumps(report))
    return 0
