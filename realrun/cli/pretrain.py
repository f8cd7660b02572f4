"""`ltd pretrain`: co-adaptive PPO pretraining of the depth and size policies in simulation."""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    from ltd_sim.train import PretrainConfig

    d = PretrainConfig()
    p = sub.add_parser("pretrain", help="train LTD policies with PPO on traces + a cost model")
    p.add_argument("--cost", required=True, help="cost model JSON (from `ltd profile`)")
    p.add_argument("--traces", required=True, help="trace folder; its train split trains, its val split selects")
    p.add_argument("--out", required=True, help="run folder: policies/, checkpoints/, tb/, state.json")
    p.add_argument("--stage1-steps", type=int, default=d.stage1_steps)
    p.add_argument("--stage2-steps", type=int, default=d.stage2_steps)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--reward", choices=["time", "throughput"], default=d.reward)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--ngram-calibration", default=None,
                   help="train on the traces' n-gram branches re-scored with this calibration (decode with it too)")
    p.add_argument("--progress", action="store_true", help="stable-baselines3 progress bars")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args) -> int:
    from ltd_sim.errors import LTDError
    from ltd_sim.train import PretrainConfig, pretrain
    from realrun.simulate import cost_device, load_tables, ngram_spec

    for name in ("stage1_steps", "stage2_steps"):
        if getattr(args, name) < 1:
            raise LTDError(f"--{name.replace('_', '-')} must be at least 1")
    if args.rounds < 0:
        raise LTDError("--rounds must be >= 0")
    cfg = PretrainConfig(stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, rounds=args.rounds,
                         reward=args.reward, seed=args.seed, progress_bar=args.progress)
    train = load_tables(args.traces, args.cost, "train", calibration=args.ngram_calibration)
    val = load_tables(args.traces, args.cost, "val", calibration=args.ngram_calibration)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    result = pretrain(train, val, args.out, cfg, log=log,
                      extra_spec={"traces": str(args.traces), "cost": str(args.cost),
                                  "device": cost_device(args.cost),
                                  **ngram_spec(args.traces, args.ngram_calibration)})
    if args.json:
        print(json.dumps({"policies": str(result.out_dir / "policies"), "best_phase": result.best_phase,
                          "val_tokens_per_s": result.val_tokens_per_s,
                          "val_best_static_tokens_per_s": result.val_best_static, "seconds": result.seconds}))
    return 0
