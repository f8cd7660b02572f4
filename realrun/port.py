"""`ltd port`: move LTD from the device a run was made on (run A) to this one (run B).

A device is whatever changes the cost curves: the hardware, the torch threads and the dtype
(DESIGN.md, "Devices and rates"). Porting costs one profile and a simulator retrain:

    profile here -> traces (A's, when valid here; else re-traced) -> pretrain in simulation -> sim eval
    (ported and A's policies, on B's cost model) -> grid searched on B -> [short fine-tune] -> bench

A's traces are valid here when the target and drafter weights (digests) and the dtype match: greedy
outputs and draft trees depend on those, not on the hardware or the thread count. The stages are
`realrun.pipeline`'s own (same markers, so `ltd pipeline --out B` later finds them current), each
timed. The bench runs plain decoding, the grid searched on B, the ported policies and A's policies
unchanged, side by side. OUT/port.md and OUT/port.json (written atomically) hold the time of each
stage, the trace decision and why, and both the simulated and the measured figures.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ltd_sim.errors import LTDError
from ltd_sim.io import read_json, replace_dir, write_bytes, write_json
from realrun.pipeline import BUDGETS, Pipeline, digest, grid_setting, trace_origin

ORIGIN_KEYS = ("target_digest", "draft_digest", "dtype")


@dataclass(frozen=True)
class PortOptions:
    source: Path  # run A
    out: Path  # run B (this device)
    budget: str = "quick"  # the pipeline budget of B's stages (profile preset, PPO steps, grid, bench)
    target: str | None = None
    draft: str | None = None  # default: A's head
    dtype: str | None = None
    finetune_minutes: float = 0.0  # 0: no fine-tune (ported = the simulator's policies)
    bench_questions: int | None = None  # default: the budget's
    bench_tokens: int | None = None
    trace_prompts: int | None = None  # when re-tracing (default: the budget's)
    trace_tokens: int | None = None


@dataclass
class TraceCheck:
    valid: bool
    reason: str


def source_origin(src: Path) -> dict:
    """What A's traces were recorded with (ORIGIN_KEYS), from their manifest; runs older than these
    keys leave them out."""
    manifest = src / "traces" / "manifest.json"
    data = read_json(manifest, "run A's trace manifest") if manifest.is_file() else {}
    return {k: data[k] for k in ORIGIN_KEYS if k in data}


def check_traces(src: Path, here: dict) -> TraceCheck:
    """Whether A's traces hold for this run: same target and drafter weights, same dtype."""
    if not any((src / "traces").glob("seq_*.npz")):
        return TraceCheck(False, f"{src / 'traces'} holds no traces")
    origin = source_origin(src)
    missing = [k for k in ORIGIN_KEYS if k not in origin]
    if missing:
        return TraceCheck(False, f"A's trace manifest does not record {', '.join(missing)} (traced before "
                                 "`ltd port` existed), so their validity here is unknown")
    diffs = [f"{k} {origin[k]} there, {here[k]} here" for k in ORIGIN_KEYS if origin[k] != here[k]]
    if diffs:
        why = "; ".join(diffs)
        if origin["dtype"] != here["dtype"]:
            why += " (the dtype changes the target's numerics, so its greedy outputs and draft trees)"
        return TraceCheck(False, why)
    return TraceCheck(True, "same target and drafter weights, same dtype")


def source_policies(src: Path) -> Path:
    """A's policies: fine-tuned when A has them, else the simulator's."""
    for sub in ("finetune/policies", "pretrain/policies"):
        if (src / sub / "spec.json").is_file():
            return src / sub
    raise LTDError(f"{src} holds no policies (finetune/policies or pretrain/policies); run `ltd pipeline` there")


def source_head(src: Path) -> str | None:
    """The EAGLE-3 head A used (its report), so that B keeps the same drafter by default."""
    report = src / "report.json"
    if report.is_file():
        head = read_json(report, "run A's report").get("stages", {}).get("draft", {}).get("head")
        if head and (Path(head) / "config.json").is_file():
            return head
    return None


def _copy_traces(src: Path, dst: Path) -> dict:
    with replace_dir(dst) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
    return {"reused_from": str(src), "files": sum(1 for _ in dst.glob("seq_*.npz"))}


def run_port(opts: PortOptions, log=print) -> dict:
    """Port run A to this device into run B; returns port.json's content."""
    src, out = Path(opts.source), Path(opts.out)
    if not src.is_dir():
        raise LTDError(f"--from {src} is not a run folder")
    if src.resolve() == out.resolve():
        raise LTDError("--out must be another folder than --from")
    if opts.budget not in BUDGETS:
        raise LTDError(f"unknown budget {opts.budget!r}; choose one of {', '.join(sorted(BUDGETS))}")
    if opts.finetune_minutes < 0:
        raise LTDError("--finetune-minutes must be >= 0")
    a_policy = source_policies(src)  # fail before any work
    budget = replace(BUDGETS[opts.budget], finetune_minutes=opts.finetune_minutes,
                     trace_prompts=opts.trace_prompts or BUDGETS[opts.budget].trace_prompts,
                     trace_tokens=opts.trace_tokens or BUDGETS[opts.budget].trace_tokens)
    if min(budget.trace_prompts, budget.trace_tokens) < 1:
        raise LTDError("--trace-prompts and --trace-tokens must be at least 1")
    t_start = time.perf_counter()
    p = Pipeline(out, budget, opts.target, opts.draft or source_head(src), log=log, dtype=opts.dtype)
    out.mkdir(parents=True, exist_ok=True)
    p.head = p.draft_head()
    head_digest = digest(p.head / "model.safetensors")
    dev = p.device
    profile_config = {"preset": budget.profile_preset, "head": head_digest, "device": dev}
    p.stage("profile", profile_config, p.profile)
    try:
        check_cost_here(p)
    except LTDError as exc:  # a foreign or stale cost model under a current marker: rebuilt, never used
        log(f"[profile] refused: {exc}")
        (out / "stages" / "profile.json").unlink(missing_ok=True)
        p.stage("profile", profile_config, p.profile)
        check_cost_here(p)

    here = trace_origin(p.pair(), p.head)
    check = check_traces(src, here)
    trace_config = {"prompts": budget.trace_prompts, "tokens": budget.trace_tokens, "head": head_digest,
                    "dtype": dev["dtype"]}
    if check.valid:
        log(f"[trace] reusing {src / 'traces'}: {check.reason}")
        p.stage("trace", {**trace_config, "from": str(src.resolve()), "origin": here},
                lambda: _copy_traces(src / "traces", p.trace_dir), work=p.trace_dir)
    else:
        log(f"[trace] re-tracing on this device: {check.reason}")
        p.stage("trace", trace_config, p.trace, work=p.trace_dir)

    inputs = {"traces": digest(p.trace_dir), "cost": digest(p.cost_path)}
    sim_policy = Path(p.stage("pretrain", {"budget": asdict(budget), **inputs}, p.pretrain,
                              work=out / "pretrain")["policies"])
    p.stage("sim_eval", {"policies": digest(sim_policy), **inputs}, lambda: p.sim_eval(sim_policy))
    p.stage("sim_unported", {"policies": digest(a_policy), **inputs}, lambda: sim_unported(p, a_policy))
    grid = grid_setting(p.stage("grid", {"trials": budget.grid_trials, "device": dev, **inputs}, p.grid,
                                work=out / "tune"))
    ported = sim_policy
    if opts.finetune_minutes > 0:
        ported = out / "finetune" / "policies"
        p.stage("finetune", {"minutes": budget.finetune_minutes, "policies": digest(sim_policy), "device": dev},
                lambda: p.finetune(sim_policy), work=out / "finetune")
    p.stage("port_bench", {"ported": digest(ported), "unported": digest(a_policy), "grid": list(grid), "device": dev,
                           "questions": opts.bench_questions or budget.bench_questions,
                           "tokens": opts.bench_tokens or budget.bench_tokens},
            lambda: port_bench(p, ported, a_policy, grid, opts))
    report = port_report(src, out, p, check, time.perf_counter() - t_start, a_policy, ported)
    write_port_report(out, report)
    log(f"port: {src} -> {out} in {report['seconds']:.0f} s; report {out / 'port.md'}")
    return report


def check_cost_here(p: Pipeline) -> None:
    """B's cost model must describe this device: a foreign or stale one is refused here (one line)."""
    from profiler import load_cost_model
    from realrun.probes import pair_fingerprint, profile_drafter

    pair = p.pair()
    _, draft_id, weights = profile_drafter(pair)
    load_cost_model(p.cost_path, expect_fingerprint=pair_fingerprint(pair, draft_id, weights))


def sim_unported(p: Pipeline, a_policy: Path) -> dict:
    """A's policies run unchanged in simulation on B's cost model and test traces (the unported figure)."""
    from realrun.simulate import run_sim_eval

    table = run_sim_eval(str(p.trace_dir), str(p.cost_path), "test", str(a_policy))
    write_json(p.run_dir / "sim_unported.json", table)
    return table


def port_bench(p: Pipeline, ported: Path, unported: Path, grid: tuple[int, int], opts: PortOptions) -> dict:
    """Plain decoding, the grid searched on B, the ported policies (`ltd`) and A's policies unchanged
    (`ltd-sim`'s slot), side by side on held-out questions."""
    from realrun.bench import BenchConfig, encode_questions, run_bench
    from realrun.prompts import default_bench_prompts

    b = p.budget
    questions = encode_questions(default_bench_prompts(opts.bench_questions or b.bench_questions),
                                 p.pair().target.tokenizer)
    cfg = BenchConfig(methods=("ar", "grid", "ltd-sim", "ltd"), policy_dir=ported, sim_policy_dir=unported,
                      grid_setting=grid, max_new_tokens=opts.bench_tokens or b.bench_tokens, repeats=b.bench_repeats)
    report = run_bench(p.pair(), questions, cfg, out_dir=p.run_dir / "port_bench", log=p.log)
    return {"methods": report["methods"], "paired": report["paired"], "headline_rate": report["settings"]["headline_rate"]}


NAMES = {"ar": "plain decoding", "grid": "grid searched here", "ltd": "LTD ported", "ltd-sim": "LTD unported (A's)"}


def port_report(src: Path, out: Path, p: Pipeline, check: TraceCheck, seconds: float, a_policy: Path,
                ported: Path) -> dict:
    s = p.summaries
    sim = s.get("sim_eval", {}).get("methods", {})
    unported = s.get("sim_unported", {}).get("methods", {}).get("ltd")
    simulated = {k: sim[k] for k in ("oracle", "best_static", "autoregressive", "ltd") if k in sim}
    if unported is not None:
        simulated["ltd_unported"] = unported
    bench = s.get("port_bench", {})
    stage_seconds = sum(v.get("seconds", 0.0) for v in s.values())  # skipped stages: the time they took when run
    return {"format": "ltd-port", "version": 1, "from": str(src), "out": str(out), "seconds": seconds,
            "stage_seconds": stage_seconds,
            "device_from": _device(src), "device_here": _device(out), "traces": asdict(check),
            "policies": {"ported": str(ported), "unported": str(a_policy)},
            "stages": {k: {"seconds": v.get("seconds", 0.0), "skipped": v.get("skipped", False)} for k, v in s.items()},
            "simulated": simulated, "measured": {k: bench.get(k) for k in ("methods", "paired", "headline_rate")}}


def _device(run: Path) -> dict:
    from profiler.model import device_of

    try:
        return device_of(json.loads((run / "cost_model.json").read_text()).get("fingerprint", {}))
    except (OSError, ValueError):
        return {}


def write_port_report(out: Path, r: dict) -> None:
    from profiler.model import device_label

    lines = [f"# LTD port: `{r['from']}` -> `{r['out']}`", "",
             f"- from: {device_label(r['device_from']) if r['device_from'] else 'unknown'}",
             f"- here: {device_label(r['device_here']) if r['device_here'] else 'unknown'}",
             f"- traces: {'reused' if r['traces']['valid'] else 're-traced'} ({r['traces']['reason']})",
             f"- the port's stages took {r['stage_seconds']:.0f} s in all (this invocation {r['seconds']:.0f} s; "
             "a skipped stage counts the time it took when it ran)", "", "## Stages", "", "| stage | seconds | skipped |", "|---|---:|---|"]
    lines += [f"| {k} | {v['seconds']:.1f} | {'yes' if v['skipped'] else 'no'} |" for k, v in r["stages"].items()]
    if r["simulated"]:
        lines += ["", "## Simulation (test traces, this device's cost model; decode rate)", "",
                  "| method | tokens/s | vs plain decoding | of oracle |", "|---|---:|---:|---:|"]
        for k, row in r["simulated"].items():
            lines.append(f"| {k} | {row['tokens_per_s']:.2f} | {row['speedup_vs_ar']:.3f} | {row['oracle_ratio']:.3f} |")
    methods = (r["measured"] or {}).get("methods") or {}
    if methods:
        from realrun.measure import DECODE_RATE, END_TO_END_RATE

        lines += ["", "## Real decoder (`ltd bench`; end-to-end rate, decode rate beside it)", "",
                  "| method | tokens/s (end-to-end) | tokens/s (decode) | speedup vs plain | lossless |",
                  "|---|---:|---:|---:|---|"]
        for k, row in methods.items():
            lines.append(f"| {NAMES.get(k, k)} | {row[END_TO_END_RATE]:.2f} | {row.get(DECODE_RATE) or 0:.2f} | "
                         f"{row['speedup'] or 0:.3f} | {row['lossless']} |")
        for key, pr in (r["measured"].get("paired") or {}).items():
            if pr.get("ratio_of_means") is None:
                continue
            a, b = key.split("/")
            ci = pr.get("ci90")
            lines.append(f"- {NAMES.get(a, a)} / {NAMES.get(b, b)}: {pr['ratio_of_means']:.3f}"
                         + (f" (90% interval {ci[0]:.3f} - {ci[1]:.3f})" if ci else " (too few questions for an interval)"))
    write_bytes(out / "port.md", ("\n".join(lines) + "\n").encode())
    write_json(out / "port.json", r)


# --------------------------------------------------------------------------------------------
# The simulated transfer matrix
# --------------------------------------------------------------------------------------------

def run_policies(run: Path) -> Path:
    """A run's policies for the transfer matrix: the simulator's (what a port retrains)."""
    for sub in ("pretrain/policies", "finetune/policies"):
        if (run / sub / "spec.json").is_file():
            return run / sub
    raise LTDError(f"{run} holds no policies (pretrain/policies); run `ltd pipeline` or `ltd port` there")


def transfer_matrix(runs: list[Path], split: str = "test") -> dict:
    """Every ordered pair (A, B) of runs (devices), in simulation on B's traces and B's cost model:
    A's policies unchanged, B's own policies (ported), B's best static setting (the grid, D = 0
    included, tuned on these traces: the most favourable choice for it), plain decoding and the oracle."""
    from ltd_sim.baselines import evaluate, no_draft_share
    from ltd_sim.policy import PolicyController, decision_tables
    from ltd_sim.sim import SimTables, simulate_tables
    from ltd_sim.trace import load_traces
    from realrun.simulate import load_cost

    if len(runs) < 2:
        raise LTDError("the transfer matrix needs at least two runs (devices)")
    ctrls = {str(r): PolicyController(run_policies(r)) for r in runs}  # fail before the work
    devices = {str(r): _device(r) for r in runs}
    cells = []
    for b in runs:
        tables = SimTables.build(load_traces(b / "traces", split), load_cost(str(b / "cost_model.json")))
        base = evaluate(tables)["methods"]
        for a in runs:
            ctrl = ctrls[str(a)]
            schedule = decision_tables(tables, ctrl.depth_model, ctrl.size_model, ctrl.spec.asks_before_draft)
            rate = simulate_tables(tables, *schedule).tokens_per_s
            cells.append({"policies_from": str(a), "device": str(b), "tokens_per_s": rate,
                          "no_draft_share": no_draft_share(tables, *schedule),
                          "best_static": base["best_static"]["tokens_per_s"],
                          "best_static_setting": [base["best_static"]["depth"], base["best_static"]["size"]],
                          "autoregressive": base["autoregressive"]["tokens_per_s"],
                          "oracle": base["oracle"]["tokens_per_s"]})
    own = {c["device"]: c["tokens_per_s"] for c in cells if c["policies_from"] == c["device"]}
    for c in cells:
        c["vs_ported"] = c["tokens_per_s"] / own[c["device"]]
        c["vs_best_static"] = c["tokens_per_s"] / c["best_static"]
        c["vs_autoregressive"] = c["tokens_per_s"] / c["autoregressive"]
        c["of_oracle"] = c["tokens_per_s"] / c["oracle"]
    return {"split": split, "devices": devices, "cells": cells}


def write_transfer_matrix(matrix: dict, out: Path) -> None:
    """transfer.md + transfer.json (atomic)."""
    from profiler.model import device_label

    names = {r: f"{Path(r).name}" for r in matrix["devices"]}
    lines = ["# Simulated transfer matrix", "", f"Simulated decode rate on each device's {matrix['split']} traces "
             "and cost model. Rows: whose policies; columns: the device they run on.", "",
             "| run | device |", "|---|---|"]
    lines += [f"| {names[r]} | {device_label(d) if d else 'unknown'} |" for r, d in matrix["devices"].items()]
    lines += ["", "| policies from -> run on | tokens/s | vs ported (B's own) | vs best static on B | vs plain decoding "
              "| of oracle | no-draft cycles |", "|---|---:|---:|---:|---:|---:|---:|"]
    for c in matrix["cells"]:
        lines.append(f"| {names[c['policies_from']]} -> {names[c['device']]} | {c['tokens_per_s']:.2f} | "
                     f"{c['vs_ported']:.3f} | {c['vs_best_static']:.3f} | {c['vs_autoregressive']:.3f} | "
                     f"{c['of_oracle']:.3f} | {100 * c['no_draft_share']:.0f}% |")
    lines += ["", "| device | plain decoding | best static (D, V) | oracle |", "|---|---:|---|---:|"]
    seen = set()
    for c in matrix["cells"]:
        if c["device"] not in seen:
            seen.add(c["device"])
            d, v = c["best_static_setting"]
            lines.append(f"| {names[c['device']]} | {c['autoregressive']:.2f} | {c['best_static']:.2f} ({d}, {v}) | "
                         f"{c['oracle']:.2f} |")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "transfer.md", ("\n".join(lines) + "\n").encode())
    write_json(out / "transfer.json", matrix)
