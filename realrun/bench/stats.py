"""The bench's statistics: per-method summaries (both rates, tau, acceptance, policy cost) and paired
ratios with a bootstrap interval over questions."""

from __future__ import annotations

import numpy as np

from realrun.bench.questions import Question
from realrun.measure import DECODE_RATE, END_TO_END_RATE, Measurement, Run

#: (question, repeat, run): one timed generation of one method
QuestionRun = tuple[Question, int, Run]


def acceptance_by_position(cycles: list, max_depth: int) -> list[float]:
    """P(accepted length >= j) for j = 1..max_depth over the speculative cycles (V > 0)."""
    spec = [c for c in cycles if c.size > 0]
    if not spec:
        return []
    acc = np.array([c.accepted for c in spec])
    return [float(np.mean(acc >= j)) for j in range(1, max_depth + 1)]


def summarize(runs: list[QuestionRun], max_depth: int) -> dict:
    """One method's figures over `runs`: both rates (ratios of totals), tau, the tree shape, policy cost."""
    total = Measurement.of([r for _, _, r in runs])
    out = {"runs": total.runs, "new_tokens": total.new_tokens, "wall_s": total.wall_s, "decode_s": total.decode_s,
           END_TO_END_RATE: total.end_to_end_tokens_per_s, DECODE_RATE: total.decode_tokens_per_s,
           "tau": total.tau}
    per_run = [r.end_to_end_tokens_per_s for _, _, r in runs if r.wall_s > 0]
    if per_run:
        out[f"{END_TO_END_RATE}_median"] = float(np.median(per_run))
    cycles = [c for _, _, r in runs for c in (r.cycles or [])]
    out["acceptance_by_position"] = acceptance_by_position(cycles, max_depth)
    if cycles:
        # per verify, before the max-new-tokens cut clips the last cycle: so tau = 1 + sum(acceptance)
        out["tau"] = float(np.mean([c.accepted + 1 for c in cycles]))
        out["mean_depth"] = float(np.mean([c.depth for c in cycles]))
        out["mean_size"] = float(np.mean([c.size for c in cycles]))
        out["speculation_off"] = float(np.mean([c.size == 0 for c in cycles]))
        out["draft_s"] = float(sum(c.draft_s for c in cycles))
        out["verify_s"] = float(sum(c.verify_s for c in cycles))
    out["policy_s"] = total.policy_s
    out["policy_calls"] = total.policy_calls
    out["policy_overhead"] = total.policy_fraction
    return out


def _tokens_seconds(run: Run, rate: str) -> tuple[float, float] | None:
    if rate == DECODE_RATE:
        return None if run.decode_s is None else (run.decode_tokens, run.decode_s)
    return len(run.tokens), run.wall_s


def paired_ratio(runs_a: list[QuestionRun], runs_b: list[QuestionRun], rate: str = END_TO_END_RATE,
                 resamples: int = 2000, seed: int = 0) -> dict:
    """A's `rate` over B's on the (question, repeat) pairs both ran: the ratio of means (total tokens /
    total seconds), a 90% bootstrap interval over questions (repeats of a question move together;
    `resamples=0`: none) and the median per-question ratio."""
    a = {(q.qid, rep): _tokens_seconds(r, rate) for q, rep, r in runs_a}
    b = {(q.qid, rep): _tokens_seconds(r, rate) for q, rep, r in runs_b}
    keys = [k for k in a if k in b and a[k] and b[k] and a[k][1] > 0 and b[k][1] > 0]
    if not keys:
        return {"rate": rate, "ratio_of_means": None, "ci90": None, "median_per_question": None, "pairs": 0}
    qids = list(dict.fromkeys(k[0] for k in keys))
    # per question: [tokens A, seconds A, tokens B, seconds B] summed over its repeats
    sums = np.zeros((len(qids), 4))
    for k in keys:
        sums[qids.index(k[0])] += (*a[k], *b[k])

    def ratio(rows: np.ndarray) -> float:
        t = rows.sum(0)
        return (t[0] / t[1]) / (t[2] / t[3]) if t[1] > 0 and t[3] > 0 and t[2] > 0 else float("nan")

    ci = None
    if len(qids) >= 3 and resamples > 0:
        rng = np.random.default_rng(seed)
        boot = np.array([ratio(sums[rng.integers(0, len(qids), len(qids))]) for _ in range(resamples)])
        ci = [float(np.nanpercentile(boot, 5)), float(np.nanpercentile(boot, 95))]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_q = (sums[:, 0] / sums[:, 1]) / (sums[:, 2] / sums[:, 3])
    return {"rate": rate, "ratio_of_means": float(ratio(sums)), "ci90": ci,
            "median_per_question": float(np.median(per_q)), "pairs": len(keys)}
