"""`ltd profile`: measure this device's decoder phases and fit the cost model the simulator uses."""

from __future__ import annotations


def add_parser(sub) -> None:
    from realrun.cli.options import add_ngram_options, add_threads_option

    p = sub.add_parser("profile", help="profile the decoder's phases on this device; fit and save a cost model")
    p.add_argument("--target", default=None, help="local Hugging Face model dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--draft", default=None,
                   help="draft dir, or 'default' (default: the cached EAGLE-3 head, else a random-init one)")
    p.add_argument("--draft-kind", choices=["lm", "eagle3"], default=None)
    p.add_argument("--out", default="runs/default", help="run directory (cost_model.json, plots/, profile.md)")
    p.add_argument("--quick", action="store_true", help="a short sweep (under 3 minutes on a 2-core CPU)")
    p.add_argument("--preset", choices=["tiny", "quick", "full"], default=None,
                   help="sweep size (default: full, or quick with --quick)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 (default: fp32 on CPU, bf16 on CUDA)")
    add_threads_option(p)
    add_ngram_options(p)  # the n-gram settings whose phase is timed (always measured; defaults without --ngram)
    p.add_argument("--force", action="store_true", help="re-profile over an existing cost model")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--refit", action="store_true", help="refit and re-plot from --out's measurements.json (no timing)")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    from pathlib import Path

    from profiler.build import MODEL_FILE, SUMMARY_FILE
    from profiler.device import pin_threads
    from realrun.cli.options import ngram_config
    from realrun.probes import refit_profile, run_profile

    if args.refit:
        _print_cv(refit_profile(args.out, plots=not args.no_plots))
        return 0
    preset = args.preset or ("quick" if args.quick else "full")
    pin_threads(args.threads)
    done = run_profile(args.target, args.draft, args.draft_kind, args.device, args.dtype, preset,
                       args.out, args.force, plots=not args.no_plots, ngram=ngram_config(args))
    if done.reused:
        return 0
    out = Path(args.out)
    print(f"profiled in {done.wall_s:.0f} s ({done.model.meta['outliers']} outlier samples flagged)")
    _print_cv(done.model)
    print(f"wrote {out / MODEL_FILE}, {out / SUMMARY_FILE}" + ("" if args.no_plots else f", {out / 'plots'}/"))
    return 0


def _print_cv(model) -> None:
    for name, cv in model.cv_errors().items():
        if cv.get("mape") is not None:
            print(f"  {name:14s} CV MAPE {100 * cv['mape']:5.1f}%   median APE {100 * cv['median_ape']:5.1f}%")
