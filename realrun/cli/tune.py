"""`ltd tune [ppo|grid]`: Optuna studies of the PPO/feature hyperparameters and of the static grid."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    from realrun.cli.options import add_decode_options, add_ngram_options, add_sampling_options
    from realrun.tune import DEFAULT_TRIALS

    p = sub.add_parser("tune", help="Optuna: PPO + feature hyperparameters (ppo) or the static (D, V) grid (grid)")
    p.add_argument("kind", nargs="?", default="grid", choices=["ppo", "grid"], help="which study (default grid)")
    p.add_argument("--traces", required=True, help="trace folder (train and val splits are used)")
    p.add_argument("--cost", required=True, help="cost model JSON")
    p.add_argument("--out", required=True, help="run folder: optuna.db, tune_KIND.json, grid.json or policies/")
    p.add_argument("--trials", type=int, default=None,
                   help=f"trials by this worker (default: grid {DEFAULT_TRIALS['grid']}, more than its "
                        f"8 x 13 settings, so the whole grid; ppo {DEFAULT_TRIALS['ppo']})")
    p.add_argument("--storage", default=None, help="Optuna storage URL or a .journal/.log file "
                                                   "(default sqlite:///OUT/optuna.db); share it across workers")
    p.add_argument("--study", default=None, help="study name (default ltd-KIND)")
    p.add_argument("--confirm", type=int, default=0, help="confirm the best K on the real decoder (needs --draft)")
    p.add_argument("--trial-steps", type=int, default=20_000, help="ppo: stage-1 env steps per policy per trial")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (leave unset when workers share a study)")
    add_decode_options(p)
    add_ngram_options(p)  # n-gram traces: --ngram-calibration re-scores them; --confirm decodes with --ngram
    add_sampling_options(p, None, "the traces' setting; another one is refused")  # --confirm decodes at it
    p.add_argument("--prompts", default=None, help="confirmation prompts (Spec-Bench jsonl or lines; "
                                                   "their validation fifth is decoded)")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--max-new-tokens", type=int, default=64, help="per confirmation generation")
    p.add_argument("--no-chat", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from ltd_sim.trace import Sampling
    from realrun.cli.options import ngram_config
    from realrun.tune import check_options, run_tune

    sampling = None if args.temperature is None else Sampling(args.temperature, args.top_p)

    trials = check_options(args.kind, args.trials, args.confirm, args.trial_steps,
                           has_decoder=(args.draft is not None or args.draft_kind == "ngram")
                           and args.prompts is not None)
    pair = prompts = None
    if args.confirm:
        from realrun.loading import load_pair, set_threads
        from realrun.measure import encode_prompts
        from realrun.prompts import read_prompts

        texts = read_prompts(args.prompts, args.limit)
        set_threads()
        pair = load_pair(args.target, args.draft, args.draft_kind, args.device, args.dtype, ngram=ngram_config(args))
        prompts = encode_prompts(pair, texts, chat=not args.no_chat)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    summary = run_tune(args.kind, args.traces, args.cost, args.out, trials, storage=args.storage, study=args.study,
                       confirm=args.confirm, pair=pair, prompts=prompts, trial_steps=args.trial_steps,
                       max_new_tokens=args.max_new_tokens, seed=args.seed, log=log, sampling=sampling,
                       calibration=args.ngram_calibration)
    if args.json:
        print(json.dumps(summary))
    return 0
