"""`ltd pipeline`: the whole job on one pair of models, resumable stage by stage."""

from __future__ import annotations

import time
from pathlib import Path

from ltd_sim.errors import LTDError
from realrun.pipeline import BUDGETS


def add_parser(sub) -> None:
    from realrun.cli.options import add_ngram_options, add_sampling_options, add_threads_option

    p = sub.add_parser("pipeline", help="the whole job: draft head, profile, trace, pretrain, finetune, bench")
    p.add_argument("--out", default="runs/default", help="run directory (resumed when it exists)")
    p.add_argument("--target", default=None, help="local HF model dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--draft", default=None, help="an EAGLE-3 head dir to use (default: build or reuse the cached one)")
    p.add_argument("--quick", action="store_true", help="the same stages at small budgets (a first look)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default=None,
                   help="full (default), quick (= --quick), tiny (seconds; for tests on tiny models)")
    p.add_argument("--dtype", default="auto", help="the target's dtype: float32, bfloat16 (default: fp32 on CPU)")
    add_threads_option(p)
    add_sampling_options(p)  # every stage at this setting
    add_ngram_options(p)  # --ngram: hybrid traces, a fitted calibration, ngram_v1 policies (docs/ngram.md)
    # the pipeline's drafter is always an EAGLE-3 head (what `ngram_config` reads --ngram against)
    p.set_defaults(func=cmd_pipeline, draft_kind="eagle3")


def cmd_pipeline(args) -> int:
    from ltd_sim.trace import Sampling
    from profiler.device import pin_threads
    from realrun.cli.options import ngram_config
    from realrun.loading import set_threads
    from realrun.pipeline import run_pipeline

    sampling = Sampling(args.temperature, args.top_p)
    if args.quick and args.budget not in (None, "quick"):
        raise LTDError(f"--quick and --budget {args.budget} contradict each other")
    pin_threads(args.threads)
    set_threads()
    t0 = time.perf_counter()
    report = run_pipeline(Path(args.out), args.budget or ("quick" if args.quick else "full"), args.target, args.draft,
                          args.dtype, sampling, ngram_config(args))
    print(f"pipeline done in {time.perf_counter() - t0:.0f} s: {report}")
    return 0
