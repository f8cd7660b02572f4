"""Baselines on the same traces and cost model as the policies, and the one evaluation table.

- every static (D, V) of the grid, (0, 0) "no draft" included; `eagle3` is EAGLE-3's default
  (MAX_DEPTH, STATIC_SIZE); `best_static` the fastest of the grid on the evaluated traces;
- `oracle`: the DP's fastest schedule (same action set, D = 0 and V = 0 included): the physical limit;
- heuristics from the literature, each tuned (threshold and V from the grid) on the evaluated traces
  themselves, the most favourable choice for them:
  * `confidence_stop`: stop after the step whose best node's conditional probability falls under a
    threshold (DISCO's confidence stop; transformers' `assistant_confidence_threshold`);
  * `entropy_stop`: stop when the entropy of the draft distribution behind the best node exceeds a
    threshold (AdaEDL's and SVIP's entropy-based stops, from the draft's top-k log-probs);
  * `confidence_skip`: `confidence_stop`, plus no speculation at all (V = 0: verify the root alone)
    when the first step's best node falls under a second threshold: the cheapest way to predict
    the cycles that would accept nothing, from the draft's own confidence;
  * `transformers_heuristic`: transformers' `num_assistant_tokens_schedule="heuristic"`: start at 5
    draft tokens, +2 after a cycle that accepted all of them, -1 (at least 1) otherwise;
  * `ngram_match` (traces with n-gram branches): the serving engines' prompt-lookup rule: draft a static
    (D, V) when the context's suffix matched earlier text with at least m tokens, else do not draft
    (m, D and V tuned together).
"""

from __future__ import annotations

import numpy as np

from ltd_sim import defaults
from ltd_sim.errors import LTDError
from ltd_sim.sim import (SimResult, SimTables, autoregressive, first_stop, oracle, simulate, simulate_tables,
                         static_grid)

EAGLE3 = defaults.EAGLE3_SETTING
CONFIDENCE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SCHEDULE_START = defaults.ASSISTANT_TOKENS


def size_index(grid, size: int) -> int:
    if size not in grid:
        raise LTDError(f"V = {size} is not in the size grid {tuple(grid)}")
    return list(grid).index(size)


def _best_over_sizes(t: SimTables, depth_at: np.ndarray) -> tuple[SimResult, int]:
    runs = [simulate_tables(t, depth_at, np.full(t.num_positions, g)) for g in range(len(t.grid))]
    g = int(np.argmax([r.tokens_per_s for r in runs]))
    return runs[g], g


def confidence_stop(t: SimTables) -> tuple[SimResult, dict]:
    best = None
    for thr in CONFIDENCE_THRESHOLDS:
        res, g = _best_over_sizes(t, first_stop(t.conf < thr, t.dmax))
        if best is None or res.tokens_per_s > best[0].tokens_per_s:
            best = (res, {"threshold": thr, "size": t.grid[g]})
    return best


SKIP_THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def confidence_skip(t: SimTables, stop: dict | None = None) -> tuple[SimResult, dict] | None:
    """`stop`: confidence_stop's chosen parameters (searched here when not given). None when the
    size grid has no V = 0 (then there is nothing to skip to)."""
    if 0 not in t.grid:
        return None
    if stop is None:
        _, stop = confidence_stop(t)
    depth_at = first_stop(t.conf < stop["threshold"], t.dmax)
    best = None
    for skip in SKIP_THRESHOLDS:
        unsure = t.conf[:, 0] < skip
        for g in range(len(t.grid)):
            res = simulate_tables(t, depth_at, np.where(unsure, t.grid.index(0), g))
            if best is None or res.tokens_per_s > best[0].tokens_per_s:
                best = (res, {**stop, "size": t.grid[g], "skip_threshold": skip})
    return best


def entropy_stop(t: SimTables) -> tuple[SimResult, dict]:
    levels = np.unique(np.quantile(t.entropy, np.linspace(0.05, 0.95, 10)).round(4))
    best = None
    for thr in levels:
        res, g = _best_over_sizes(t, first_stop(t.entropy > thr, t.dmax))
        if best is None or res.tokens_per_s > best[0].tokens_per_s:
            best = (res, {"threshold": float(thr), "size": t.grid[g]})
    return best


def transformers_schedule(t: SimTables, size_g: int, start: int = SCHEDULE_START) -> SimResult:
    num = np.full(t.num_sequences, min(start, t.max_depth), np.int64)

    def choose(p, seq):
        return num[seq], np.full(len(seq), size_g)

    def feedback(seq, depth, accepted):
        full = accepted >= depth
        num[seq] = np.clip(np.where(full, num[seq] + 2, num[seq] - 1), 1, t.max_depth)

    return simulate(t, choose, feedback)


def transformers_heuristic(t: SimTables) -> tuple[SimResult, dict]:
    runs = [transformers_schedule(t, g) for g in range(len(t.grid))]
    g = int(np.argmax([r.tokens_per_s for r in runs]))
    return runs[g], {"start": SCHEDULE_START, "size": t.grid[g]}


def ngram_match(t: SimTables) -> tuple[SimResult, dict] | None:
    """Draft a static (D, V) only where the n-gram match is at least m tokens long (None without
    n-gram traces)."""
    if t.ngram_match is None:
        return None
    best = None
    for m in np.unique(t.ngram_match[t.ngram_match > 0]):
        drafts = t.ngram_match >= m
        for d in range(1, t.max_depth + 1):
            depth_at = np.where(drafts, d, 0)
            for g in range(len(t.grid)):
                res = simulate_tables(t, depth_at, np.full(t.num_positions, g))
                if best is None or res.tokens_per_s > best[0].tokens_per_s:
                    best = (res, {"min_match": int(m), "depth": d, "size": t.grid[g]})
    return best


def no_draft_share(t: SimTables, depth_at: np.ndarray, size_at: np.ndarray) -> float:
    """The share of a schedule's cycles that do not draft (D = 0: plain decoding steps)."""
    counts = np.zeros(2, np.int64)  # [no-draft cycles, all cycles]

    def choose(p, seq):
        d = np.clip(depth_at[p], 0, t.dmax[p])
        return d, size_at[p, np.maximum(d, 1) - 1] if np.ndim(size_at) == 2 else size_at[p]

    def feedback(seq, depth, accepted):
        counts[0] += int((depth == 0).sum())
        counts[1] += len(seq)

    simulate(t, choose, feedback)
    return float(counts[0] / max(counts[1], 1))


def _row(res: SimResult, oracle_rate: float, ar_rate: float, **extra) -> dict:
    return {"tokens_per_s": res.tokens_per_s, "tau": res.tau, "oracle_ratio": res.tokens_per_s / oracle_rate,
            "speedup_vs_ar": res.tokens_per_s / ar_rate, **extra}


def evaluate(t: SimTables, policy_schedule: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """All methods on these tables: {"methods": {NAME: {"tokens_per_s", "tau", "oracle_ratio", ...}}}.

    `policy_schedule` = (depth per position [P], size index per position and depth [P, D]) of the
    LTD policies (see `ltd_sim.policy.decision_tables`)."""
    orc, _, _ = oracle(t)
    ar = autoregressive(t)
    o_rate, a_rate = orc.tokens_per_s, ar.tokens_per_s
    grid = static_grid(t)
    best_key = max(grid, key=lambda k: grid[k].tokens_per_s)
    eagle = (min(EAGLE3[0], t.max_depth), EAGLE3[1])  # traces recorded shallower: their deepest
    methods = {
        "oracle": _row(orc, o_rate, a_rate),
        "autoregressive": _row(ar, o_rate, a_rate),
        "eagle3": _row(grid[eagle], o_rate, a_rate, depth=eagle[0], size=eagle[1]) if eagle in grid else None,
        "best_static": _row(grid[best_key], o_rate, a_rate, depth=best_key[0], size=best_key[1]),
    }
    stop = confidence_stop(t)
    found = {"confidence_stop": stop, "confidence_skip": confidence_skip(t, stop[1]),  # one stop search
             "entropy_stop": entropy_stop(t), "transformers_heuristic": transformers_heuristic(t),
             "ngram_match": ngram_match(t)}
    for name, res in found.items():
        if res is not None:
            methods[name] = _row(res[0], o_rate, a_rate, **res[1])
    if policy_schedule is not None:
        res = simulate_tables(t, *policy_schedule)
        methods["ltd"] = _row(res, o_rate, a_rate, no_draft_share=no_draft_share(t, *policy_schedule))
        methods["ltd"]["vs_best_static"] = res.tokens_per_s / grid[best_key].tokens_per_s
    methods = {k: v for k, v in methods.items() if v is not None}
    return {"methods": methods, "positions": t.num_positions, "sequences": t.num_sequences,
            "static_grid": {f"{d},{v}": r.tokens_per_s for (d, v), r in grid.items()}}
