"""The bench's report: report.json's content, report.md, the plots, each file written atomically.

Every figure names its rate: the headline tokens/s, speedups and paired ratios use the end-to-end rate
(prefill included; docs/bench.md, "Which rate"), and the decode rate (prefill excluded) stands beside it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ltd_sim.io import write_bytes, write_json
from realrun.bench.questions import Question
from realrun.bench.run import HEADLINE_RATE, PEER_METHODS, BenchConfig, method_summaries
from realrun.bench.stats import QuestionRun, paired_ratio, summarize
from realrun.measure import DECODE_RATE, END_TO_END_RATE, RATE_LABELS

PLOTS = ("tokens_per_s.png", "acceptance.png", "tau_by_category.png")


def build_report(runs: dict[str, list[QuestionRun]], checks: dict, qs: list[Question],
                 settings: dict[str, dict], max_depth: int, cfg: BenchConfig, fingerprint: dict,
                 grid_info: dict | None) -> dict:
    """report.json's content: per method, per category, paired ratios, the device, the settings, every run."""
    names = list(runs)
    categories = {}
    for cat in dict.fromkeys(q.category for q in qs):
        here = {n: [r for r in runs[n] if r[0].category == cat] for n in names}
        rows = {}
        for name in names:
            s = summarize(here[name], max_depth)
            rows[name] = {END_TO_END_RATE: s[END_TO_END_RATE], DECODE_RATE: s[DECODE_RATE], "tau": s["tau"],
                          "runs": s["runs"],
                          "speedup": paired_ratio(here[name], here["ar"], HEADLINE_RATE, resamples=0)["ratio_of_means"]}
        categories[cat] = {"questions": sum(q.category == cat for q in qs), "methods": rows}
    # paired comparisons (same questions and repeats) with a bootstrap interval over questions: the
    # claim "A is x% faster than B" needs its spread on a machine whose speed drifts between runs
    baselines = [b for b in ("grid", "ar") if b in names]
    paired = {f"{a}/{b}": paired_ratio(runs[a], runs[b], HEADLINE_RATE) for b in baselines for a in names
              if a != b and not (b == "grid" and a in ("ar",) + PEER_METHODS)}
    return {
        "methods": method_summaries(runs, checks, settings, max_depth), "device": fingerprint,
        "categories": categories, "paired": paired, "grid": grid_info,
        "settings": {"max_new_tokens": cfg.max_new_tokens, "repeats": cfg.repeats, "warmups": cfg.warmups,
                     "questions": len(qs), "peer_questions": cfg.peer_questions, "methods": names, "greedy": cfg.sampling.greedy,
                     "sampling": cfg.sampling.to_json(), "sampling_label": cfg.sampling.label(),
                     **({} if cfg.sampling.greedy else {"seed": cfg.seed, "law_seeds": cfg.law_seeds}),
                     "headline_rate": HEADLINE_RATE, "rates": RATE_LABELS,
                     "timing": "the decoder's device-synced clock (transformers' generate: perf_counter after a "
                               "device sync around the whole call)",
                     "speedup": f"ratio of means of the {RATE_LABELS[HEADLINE_RATE]} vs ar in the same run"},
        "runs": [{"method": n, "question": q.qid, "category": q.category, "repeat": rep,
                  "new_tokens": len(r.tokens), "wall_s": r.wall_s, "decode_s": r.decode_s}
                 for n in names for q, rep, r in runs[n]],
    }


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _verdict(m: dict) -> str:
    """The lossless column: greedy equality, or (T > 0) the distributional check's p-values."""
    law = m.get("law")
    if law is not None:
        if law["logprob_p"] is None and law["token_p"] is None:
            return "reference"
        ps = f"log-prob p {_fmt(law['logprob_p'], '.3f')}, token p {_fmt(law['token_p'], '.3f')}"
        return f"{'yes' if law['passed'] else '**NO**'} ({ps})"
    return "yes" if m["exact_match"] else ("yes (near-ties)" if m["lossless"] else "**NO**")


def render_markdown(report: dict) -> str:
    """report.md: the device, the protocol, the method table, paired ratios, categories, mismatches."""
    dev, st, methods = report["device"], report["settings"], report["methods"]
    headline = RATE_LABELS[st["headline_rate"]]
    lines = ["# ltd bench", "",
             f"Device: {dev['device']}, torch {dev['torch']}, {dev['dtype']}, {dev.get('threads')} threads "
             f"(load average {_fmt((dev.get('loadavg_start') or [None])[0])} at start, "
             f"{_fmt((dev.get('loadavg_end') or [None])[0])} at end). Target {dev['target']}, draft {dev['draft'] or '-'}; "
             f"{dev['date']}.", "",
             f"{st['questions']} questions x {st['repeats']} repeats ({st['warmups']} warm-ups per method), "
             f"{st.get('sampling_label', 'greedy')}, at most {st['max_new_tokens']} new tokens; "
             "methods interleaved per question; "
             f"timing: {st['timing']}; speedup = {st['speedup']}"
             + (f"; {', '.join(n for n in PEER_METHODS if n in methods)} on the first {st['peer_questions']} "
                "questions only (speedup against ar on those)" if st.get("peer_questions") else "") + ".", "",
             f"tok/s is the **{headline}**; the decode rate (prefill excluded) stands beside it "
             "(none for hf-assisted: transformers' generate has no prefill boundary to read).", "",
             "| method | tok/s (end-to-end) | tok/s (decode) | speedup | decode speedup | tau | lossless "
             "| policy overhead | accept@1 | accept@2 | accept@3 | settings |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for name, m in methods.items():
        acc = (m.get("acceptance_by_position") or []) + [None] * 3
        flag = _verdict(m)
        lines.append(f"| {name} | {m[END_TO_END_RATE]:.2f} | {_fmt(m[DECODE_RATE])} | {_fmt(m['speedup'], '.3f')} | "
                     f"{_fmt(m['decode_speedup'], '.3f')} | {_fmt(m['tau'])} | {flag} | "
                     f"{100 * m['policy_overhead']:.2f}% | {_fmt(acc[0])} | {_fmt(acc[1])} | {_fmt(acc[2])} | "
                     f"{json.dumps(m['settings'])} |")
    if report.get("paired"):
        lines += ["", f"## Paired ratios ({headline}; same questions; 90% bootstrap interval over questions)", "",
                  "| A / B | ratio of means | 90% interval | median per question | pairs |", "|---|---:|---|---:|---:|"]
        for key, pr in report["paired"].items():
            ci = pr.get("ci90")
            lines.append(f"| {key} | {_fmt(pr['ratio_of_means'], '.3f')} | "
                         f"{'-' if not ci else f'{ci[0]:.3f} - {ci[1]:.3f}'} | "
                         f"{_fmt(pr['median_per_question'], '.3f')} | {pr['pairs']} |")
    g = report.get("grid")
    if g:
        lines += ["", f"Grid setting: D={g['depth']}, V={g['size']} ({g['source']}"
                  + (f" by the {RATE_LABELS[g['selected_by']]} on {', '.join(g['sweep_questions'])}, "
                     f"{g['sweep_tokens']} tokens each)" if g.get("sweep") else ")")]
    lines += ["", f"## Per category (speedup vs ar, {headline}; tau)", "",
              "| category | questions | " + " | ".join(methods) + " |",
              "|---|---:|" + "---:|" * len(methods)]
    for cat, c in report["categories"].items():
        cells = [f"{_fmt(c['methods'][n]['speedup'], '.3f')} ({_fmt(c['methods'][n]['tau'])})"
                 if c["methods"][n]["runs"] else "-" for n in methods]
        lines.append(f"| {cat} | {c['questions']} | " + " | ".join(cells) + " |")
    bad = [(n, x) for n, m in methods.items() for x in m["mismatches"]]
    if bad:
        lines += ["", "## Output mismatches against ar", ""]
        for n, x in bad:
            lines.append(f"- {n}, {x['question']} (repeat {x['repeat']}), position {x['position']}: "
                         f"near-tie {x['near_tie']}, gap {_fmt(x.get('gap'), '.2e')}")
    lines += ["", f"![{headline}](plots/tokens_per_s.png)", "", "![acceptance](plots/acceptance.png)", "",
              "![tau per category](plots/tau_by_category.png)", ""]
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_report(report: dict) -> dict[str, bytes]:
    """The three plots as PNG bytes, by file name (`PLOTS`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    names = list(methods)
    headline = RATE_LABELS[report["settings"]["headline_rate"]]
    out = {}
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    bars = ax.bar(names, [methods[n][END_TO_END_RATE] for n in names], color="tab:blue")
    for b, n in zip(bars, names):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{methods[n]['speedup'] or 0:.2f}x",
                ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("tokens/s, end-to-end")
    ax.set_title(f"{headline} (speedup vs ar) - {report['device']['device']}", fontsize=9)
    out["tokens_per_s.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n in names:
        acc = methods[n].get("acceptance_by_position") or []
        if acc:
            ax.plot(range(1, len(acc) + 1), acc, marker="o", label=n)
    ax.set_xlabel("draft position")
    ax.set_ylabel("P(accepted)")
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:  # no method drafted (plain decoding everywhere): nothing to label
        ax.legend(fontsize=8)
    ax.set_title("per-position acceptance", fontsize=9)
    out["acceptance.png"] = _png(fig)
    plt.close(fig)

    cats = list(report["categories"])
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(cats) + 2), 3.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        taus = [report["categories"][c]["methods"][n]["tau"] or 0 for c in cats]
        ax.bar(np.arange(len(cats)) + i * width, taus, width, label=n)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2)
    ax.set_xticklabels(cats)
    ax.set_ylabel("tau (tokens per target forward)")
    ax.legend(fontsize=8)
    ax.set_title("tau per category", fontsize=9)
    out["tau_by_category.png"] = _png(fig)
    plt.close(fig)
    return out


def write_report(report: dict, out_dir: str | Path) -> list[str]:
    """report.json, report.md and plots/*.png, each written atomically; returns their paths."""
    out = Path(out_dir)
    files = []
    for name, data in plot_report(report).items():
        write_bytes(out / "plots" / name, data)
        files.append(str(out / "plots" / name))
    write_bytes(out / "report.md", render_markdown(report).encode())
    files += [str(out / "report.md"), str(out / "report.json")]
    write_json(out / "report.json", {**report, "files": files})
    return files


OUTPUT_CORPUS = "outputs_corpus.json"


def write_output_corpus(pair, ar_runs: list, out_dir) -> Path:
    """The target's own outputs (ar, first repeat) as an ltd-ngram-corpus file: a later run's n-gram
    source can search them (`--ngram-corpus BENCH/outputs_corpus.json`, docs/ngram.md)."""
    from realrun.ngram import write_corpus

    path = Path(out_dir) / OUTPUT_CORPUS
    tokenizer = pair.target.tokenizer
    write_corpus(path, [run.tokens for _, rep, run in ar_runs if rep == 0], pair.target.vocab_size,
                 tokenizer if hasattr(tokenizer, "get_vocab") else None)
    return path
