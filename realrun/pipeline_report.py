"""The report of one `ltd pipeline` run: report.md and report.json (the budget, the device, each stage,
the simulated and the measured figures) and the plain-words recommendation."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ltd_sim.io import write_json
from ltd_sim.trace import Sampling

if TYPE_CHECKING:
    from realrun.ngram import NgramConfig
    from realrun.pipeline import StageBudget


def write_report(run_dir: Path, budget: StageBudget, summaries: dict, sampling: Sampling = Sampling(),
                 ngram: NgramConfig | None = None) -> Path:
    """report.md + report.json of the whole run: which budget made it, each stage, the figures (and,
    with `ngram`, that the drafter had n-gram branches and how their scores were calibrated)."""
    from ltd_sim.io import write_bytes
    from realrun.pipeline import SAMPLED_TRACE_SAMPLES, ngram_settings  # the stages' own settings

    bench = summaries.get("bench", {}).get("methods", {})
    sim = summaries.get("sim_eval", {}).get("methods", {})
    device = _device_line(run_dir)
    lines = [f"# LTD pipeline report: `{run_dir.name}`", "",
             f"- budget: **{budget.name}** ({', '.join(f'{k}={v}' for k, v in asdict(budget).items() if k != 'name')})",
             f"- device: {device}",
             f"- sampling: **{sampling.label()}**: every stage ran at it (traces, grid confirmation, fine-tuning, "
             "bench)" + ("" if sampling.greedy else f"; {SAMPLED_TRACE_SAMPLES} sampled continuations per trace "
                         "prompt; the bench checks each method's output law against plain sampling")]
    lines += ([ngram_line(ngram, summaries.get("calibrate", {}))] if ngram is not None else []) + [""]
    advice = recommendation(summaries)
    if advice:
        lines += ["## Recommendation", "", advice, ""]
    lines += ["## Stages", "", "| stage | seconds | skipped |", "|---|---:|---|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s.get('seconds', 0.0):.0f} | {'yes' if s.get('skipped') else 'no'} |")
    if sim:
        lines += ["", "## Simulation (held-out test traces, fitted cost model)", "",
                  "| method | tokens/s (simulated decode rate, prefill excluded) | tau | of oracle |",
                  "|---|---:|---:|---:|"]
        for name, row in sim.items():
            lines.append(f"| {name} | {row['tokens_per_s']:.2f} | {row['tau']:.2f} | {row['oracle_ratio']:.3f} |")
    if bench:
        from realrun.measure import DECODE_RATE, END_TO_END_RATE, RATE_LABELS

        lines += ["", "## Real decoder (`ltd bench`, held-out prompts, one run side by side)", "",
                  f"tokens/s and speedup: the {RATE_LABELS[END_TO_END_RATE]}; beside it the "
                  f"{RATE_LABELS[DECODE_RATE]}.", "",
                  "| method | tokens/s (end-to-end) | tokens/s (decode) | speedup vs ar | tau | lossless |",
                  "|---|---:|---:|---:|---:|---|"]
        for name, row in bench.items():
            decode = "-" if row.get(DECODE_RATE) is None else f"{row[DECODE_RATE]:.2f}"
            tau = "-" if row.get("tau") is None else f"{row['tau']:.2f}"
            lines.append(f"| {name} | {row[END_TO_END_RATE]:.2f} | {decode} | {row['speedup']:.3f} | {tau} | "
                         f"{row['lossless']} |")
        for key, pr in summaries.get("bench", {}).get("paired", {}).items():
            if key.endswith("/grid") and pr.get("ratio_of_means") is not None:
                ci = pr.get("ci90")
                lines += ["", f"{key} (paired, same questions, end-to-end rate): {pr['ratio_of_means']:.3f}"
                          + (f", 90% bootstrap interval over questions {ci[0]:.3f} - {ci[1]:.3f}" if ci else "")]
        lines += ["", "Plots and per-category tables: [bench/report.md](bench/report.md)."]
    text = "\n".join(lines) + "\n"
    write_bytes(run_dir / "report.md", text.encode())
    write_json(run_dir / "report.json", {"budget": asdict(budget), "device": device, "recommendation": advice,
                                         "sampling": sampling.to_json(),
                                         "ngram": None if ngram is None else ngram_settings(ngram),
                                         "stages": summaries})
    return run_dir / "report.md"


def ngram_line(ngram: NgramConfig, calibrate: dict) -> str:
    """The report's line on a --ngram run's drafter: the head plus n-gram branches (settings, calibration)."""
    from realrun.pipeline import CALIBRATION_FILE
    corpus = f", corpus {ngram.corpus}" if ngram.corpus else ""
    return (f"- drafter: **the EAGLE-3 head + n-gram branches** (`--ngram`: suffixes of {ngram.ngram_min} to "
            f"{ngram.ngram_max} tokens, up to {ngram.max_branches} branches{corpus}) in every decoder method "
            f"(eagle3, grid, ltd-sim, ltd); policies observe the n-gram signals (ngram_v1); n-gram nodes scored "
            f"with [{CALIBRATION_FILE}]({CALIBRATION_FILE}) (digest {calibrate.get('digest', '?')}: "
            f"{calibrate.get('note', 'not fitted yet')}), in simulation as in decoding")


def recommendation(summaries: dict) -> str | None:
    """The plain answer: which method is fastest on this device with this drafter (measured by the
    bench, end-to-end rate), and how often LTD falls back to plain decoding (its simulated cycles)."""
    from realrun.measure import END_TO_END_RATE

    bench = summaries.get("bench", {}).get("methods", {})
    rates = {n: r[END_TO_END_RATE] for n, r in bench.items() if n in ("ar", "grid", "ltd") and r.get(END_TO_END_RATE)}
    if "ar" not in rates:
        return None
    share = summaries.get("sim_eval", {}).get("methods", {}).get("ltd", {}).get("no_draft_share")
    fallback = "" if share is None else f"; LTD falls back to it (no draft, D = 0) in {100 * share:.0f}% of cycles"
    grid = bench.get("grid", {}).get("settings", {})
    plain_grid = grid.get("depth") == 0
    best = max(rates, key=rates.get)
    ltd_plain = share is not None and share >= 1.0  # LTD never drafted: it is plain decoding, its lead noise
    if best == "ar" or (best == "grid" and plain_grid) or (best == "ltd" and ltd_plain):
        return (f"On this device, with this drafter, plain decoding is fastest ({rates['ar']:.1f} tokens/s "
                f"end-to-end){fallback}" + (" and the grid search chose no draft (D = 0)" if plain_grid else "") + "."
                + _peer_note(bench, rates[best], rates["ar"]))
    name = {"grid": "the grid's static setting", "ltd": "LTD"}[best]
    setting = f" (D {grid.get('depth')}, V {grid.get('size')})" if best == "grid" else ""
    return (f"On this device, with this drafter, {name}{setting} is fastest: {rates[best]:.1f} tokens/s end-to-end, "
            f"{rates[best] / rates['ar']:.2f}x plain decoding{fallback}.") + _peer_note(bench, rates[best], rates["ar"])


PEERS = {"hf-assisted": "transformers' assisted generation", "hf-prompt-lookup": "transformers' prompt lookup"}


def _peer_note(bench: dict, best_rate: float, ar_rate: float) -> str:
    """A sentence when an external method (transformers') measured faster than the toolkit's best."""
    from realrun.measure import END_TO_END_RATE

    faster = {n: r[END_TO_END_RATE] for n, r in bench.items()
              if n in PEERS and (r.get(END_TO_END_RATE) or 0) > best_rate}
    if not faster:
        return ""
    n = max(faster, key=faster.get)
    return (f" {PEERS[n][0].upper() + PEERS[n][1:]} measured faster on the bench's questions: {faster[n]:.1f} "
            f"tokens/s ({faster[n] / ar_rate:.2f}x plain decoding, {bench[n].get('questions', '?')} questions).")


def _device_line(run_dir: Path) -> str:
    try:
        fp = json.loads((run_dir / "cost_model.json").read_text()).get("fingerprint", {})
        return ", ".join(f"{k} {fp[k]}" for k in ("device", "threads", "torch", "dtype") if k in fp) or "unknown"
    except (OSError, ValueError):
        return "unknown"
