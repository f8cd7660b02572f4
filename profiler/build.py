"""From measurements to a saved cost model, plots and a Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ltd_sim import defaults
from ltd_sim.io import write_json, write_text
from profiler.fit import fit_component
from profiler.model import COMPONENTS, FittedCostModel
from profiler.sweeps import PhaseProbes, SweepResult, SweepSpec, run_sweeps
from profiler.timing import OUTLIER_MADS, Timer

MODEL_FILE = "cost_model.json"
MEASUREMENTS_FILE = "measurements.json"
SUMMARY_FILE = "profile.md"


def example_settings(count: int = 6, depth: int = defaults.MAX_DEPTH, size: int = defaults.STATIC_SIZE,
                     grid: tuple[int, ...] = defaults.SIZE_GRID) -> list[tuple[int, int]]:
    """The (depth, V) cycles profile.md prices: from a plain decoding step (V = 0) up to the static
    EAGLE-3 setting, V spread evenly over the size grid and depth growing in proportion to V."""
    picks = np.linspace(0, grid.index(size), count).round().astype(int)
    return [(max(1, round(depth * grid[i] / size)), grid[i]) for i in picks]


def fit_cost_model(result: SweepResult, fingerprint: dict) -> FittedCostModel:
    comps = {}
    for name in COMPONENTS:
        ms = result.components.get(name) or []
        if not ms:
            continue
        params, cv = fit_component(name, [m.key for m in ms], [m.median for m in ms])
        comps[name] = {"params": params, "cv": cv, "points": len(ms)}
    if "draft_step" not in comps:  # a target-only profile: no drafting, no drafter bookkeeping
        comps["draft_step"] = {"params": {"x": [0.0], "y": [0.0], "coef": [], "intercept": 0.0},
                               "cv": {}, "points": 0}
        comps["overhead"] = {"params": {"x": [0.0], "y": [0.0], "coef": [], "intercept": 0.0},
                             "cv": {}, "points": 0}
    policy = result.components.get("policy") or []
    policy_s = policy[0].median if policy else 0.0
    meta = {"sweep": result.spec["name"], "sweep_wall_s": round(result.wall_s, 2),
            "outliers": result.outliers(), "samples": sum(m.n for ms in result.components.values() for m in ms)}
    return FittedCostModel(comps, policy_s, fingerprint, True, meta)


def profile_device(probes: PhaseProbes, spec: SweepSpec, timer: Timer, fingerprint: dict,
                   out_dir: str | Path, progress: bool = True, plots: bool = True) -> FittedCostModel:
    """Sweep, fit, and write cost_model.json, measurements.json, plots/*.png and profile.md."""
    out = Path(out_dir)
    result = run_sweeps(probes, spec, timer, progress=progress)
    write_json(out / MEASUREMENTS_FILE, result.to_json())
    return _fit_and_write(result, fingerprint, out, plots)


def _fit_and_write(result: SweepResult, fingerprint: dict, out: Path, plots: bool) -> FittedCostModel:
    model = fit_cost_model(result, fingerprint)
    model.save(out / MODEL_FILE)
    images = []
    if plots:
        from profiler.plots import plot_all

        images = plot_all(model, result, out / "plots")
    write_summary(model, result, out / SUMMARY_FILE, images)
    return model


def refit(out_dir: str | Path, plots: bool = True) -> FittedCostModel:
    """Refit (and re-plot) a profile from its measurements.json, keeping its fingerprint."""
    from profiler.model import load_cost_model

    out = Path(out_dir)
    result = load_measurements(out / MEASUREMENTS_FILE)
    return _fit_and_write(result, load_cost_model(out / MODEL_FILE, force=True).fingerprint, out, plots)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def write_summary(model: FittedCostModel, result: SweepResult, path: Path, images: list[Path]) -> Path:
    """profile.md: the fingerprint, the sweep, each component's CV error and a table of cycle times."""
    fp = model.fingerprint
    spec = result.spec
    lines = ["# Cost-model profile", "",
             "| fingerprint | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in fp.items()]
    lines += ["", f"Sweep `{spec['name']}`: {result.wall_s:.0f} s, {model.meta['samples']} timed samples, "
              f"{model.meta['outliers']} flagged as outliers (> {OUTLIER_MADS:g} scaled MADs from their median); "
              f"contexts {list(spec['context_lens'])}, top-k {list(spec['top_ks'])}, "
              f"{spec['warmup']} warm-up + {spec['repeats']} timed repeats per point.", "",
              "| component | points | CV MAPE | CV median APE | CV max APE |", "|---|---|---|---|---|"]
    for name, comp in model.components.items():
        cv = comp.get("cv") or {}
        lines.append(f"| {name} | {comp.get('points', 0)} | {_pct(cv.get('mape'))} | "
                     f"{_pct(cv.get('median_ape'))} | {_pct(cv.get('max_ape'))} |")
    ctx = list(spec["context_lens"])
    k = fp.get("top_k") or (spec["top_ks"][-1] if spec["top_ks"] else 0)
    lines += ["", f"Policy decision (2x64 MLP, batch 1): {model.policy_s * 1e6:.0f} us.", "",
              f"Predicted cycle time (ms) at top-k {k}, with depth + 1 policy decisions:", "",
              "| depth | V | " + " | ".join(f"ctx {c}" for c in ctx) + " |",
              "|---|---|" + "---|" * len(ctx)]
    for d, v in example_settings():
        row = " | ".join(f"{1e3 * model.predict_cycle(d, v, c, k):.1f}" for c in ctx)
        lines.append(f"| {d} | {v} | {row} |")
    lines += [""] + ngram_summary(model, result)
    if images:
        lines += [""] + [f"![{p.stem}](plots/{p.name})" for p in images]
    write_text(path, "\n".join(lines) + "\n")
    return path


def ngram_summary(model: FittedCostModel, result: SweepResult) -> list[str]:
    """profile.md's n-gram lines: the fitted (and measured) lookup-and-merge time per context for
    depth-1 and the deepest cycles, or a line saying the profile predates the term."""
    if not model.has_ngram:
        return ["N-gram phase (`--ngram`, `--draft-kind ngram`): not measured (a profile from before this "
                "term); the simulator prices it at 0 s. `ltd profile --force` measures it."]
    ms = result.components.get("ngram") or []
    measured = {(m.key["depth"], m.key["context_len"]): m.median for m in ms}
    ctx = sorted({c for _, c in measured}) or list(result.spec["context_lens"])
    depths = sorted({1, max((d for d, _ in measured), default=1)})
    lines = ["N-gram phase of a cycle with n-gram branches (one lookup of a matching suffix, one merge per "
             "draft step), added to the cycle times above, in us (fitted / measured median):", "",
             "| depth | " + " | ".join(f"ctx {c}" for c in ctx) + " |", "|---|" + "---|" * len(ctx)]
    for d in depths:
        cells = [f"{1e6 * model.ngram(c, d):.0f}" + (f" / {1e6 * measured[d, c]:.0f}" if (d, c) in measured else "")
                 for c in ctx]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return lines


def load_measurements(path: str | Path) -> SweepResult:
    """The raw sweep a profile wrote (measurements.json), for refitting without timing."""
    return SweepResult.from_json(json.loads(Path(path).read_text()))
