"""`ltd port`: move a run's LTD to this device (profile, reuse or redo traces, retrain, bench)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    from realrun.cli.options import add_threads_option
    from realrun.pipeline import BUDGETS

    p = sub.add_parser("port", help="port a run to this device: profile, reuse traces, pretrain, grid, bench")
    p.add_argument("--from", dest="source", required=True, help="the run made on the other device (run A)")
    p.add_argument("--out", required=True, help="the run for this device (run B; resumed when it exists)")
    p.add_argument("--target", default=None, help="local HF model dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--draft", default=None, help="EAGLE-3 head dir (default: the one run A used)")
    p.add_argument("--dtype", default="auto", help="the target's dtype here: float32, bfloat16 (default: fp32 on CPU)")
    add_threads_option(p)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="quick",
                   help="stage budgets (profile preset, PPO steps, grid trials, bench size); default quick")
    p.add_argument("--finetune-minutes", type=float, default=0.0,
                   help="a short fine-tune on the real decoder after pretraining (default 0: none)")
    p.add_argument("--bench-questions", type=int, default=None, help="default: the budget's")
    p.add_argument("--bench-tokens", type=int, default=None, help="new tokens per bench generation (default: the budget's)")
    p.add_argument("--trace-prompts", type=int, default=None, help="prompts to trace when A's traces do not "
                   "hold here (default: the budget's)")
    p.add_argument("--trace-tokens", type=int, default=None, help="new tokens per traced prompt (default: the budget's)")
    p.add_argument("--json", action="store_true", help="print port.json")
    p.set_defaults(func=cmd_port)


def cmd_port(args) -> int:
    from profiler.device import pin_threads
    from realrun.loading import set_threads
    from realrun.port import PortOptions, run_port

    pin_threads(args.threads)
    set_threads()
    report = run_port(PortOptions(Path(args.source), Path(args.out), args.budget, args.target, args.draft,
                                  args.dtype, args.finetune_minutes, args.bench_questions, args.bench_tokens,
                                  args.trace_prompts, args.trace_tokens))
    if args.json:
        print(json.dumps(report))
    return 0
