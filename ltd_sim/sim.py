"""The trace-driven simulator: per-position tables, schedule replay, and the DP oracle.

`SimTables.build(traces, cost_model)` turns recorded trees into dense tables over every position p,
depth D (1..max_depth) and size index g (into SIZE_GRID): the exact accepted length (from the one tree
arithmetic, `accepted_length_table`), the cycle's time from the cost model, and the observation of
the tree after D steps (from the one feature function). A simulated cycle, an env step and the oracle
are then array lookups.

A sequence with output length L has P = L - 1 positions (output[0] comes from the prefill). A cycle
at position p with (D, V) commits min(accepted + 1, remaining) tokens and moves to p + committed.

D = 0 is the "no draft" action: no draft forward, the root alone verified, one token committed, at
the cost of a plain decoding step (`ar_cost`). The drafter catches up on the tokens committed
meanwhile at its next drafted cycle; that catch-up is not priced (an EAGLE-3 head feeds a few more
tokens in its first step's one forward).

Traces with n-gram branches (docs/ngram.md): every cycle of such a decoder looks the context up
before deciding and merges the branches into the tree after every head step (the cost model's `ngram`
term at the cycle's depth; at depth 1 for D = 0 cycles and for an n-gram source without a model, which
merges once), and an n-gram source without a model drafts for free (its "steps" are trie levels: no
draft forward is priced).
A calibration other than the recording's re-scores the recorded trees exactly (`rescore`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ltd_sim import defaults
from ltd_sim.cost_model import CostModel, ngram_seconds
from ltd_sim.errors import LTDError
from ltd_sim.features import FeatureSpec, check_ngram_match, observe, pre_draft_observation, spec_for, step_stats
from ltd_sim.ngram_calibration import NgramCalibration, rescore
from ltd_sim.trace import HEAD, NGRAM, Sampling, TraceSequence, sampling_of
from ltd_sim.tree import accepted_length_table


@dataclass
class SimTables:
    acc: np.ndarray  # int16 [P, D, G]: draft tokens accepted
    vsize: np.ndarray  # int32 [P, D, G]: V actually verified (clipped to the pool)
    cost: np.ndarray  # float64 [P, D, G]: cycle seconds
    feats: np.ndarray  # float32 [P, D, F]: observation after D steps
    conf: np.ndarray  # float32 [P, D]: best step-D node's conditional probability (heuristics)
    entropy: np.ndarray  # float32 [P, D]: entropy of the distribution that step D drew from (heuristics)
    dmax: np.ndarray  # int16 [P]: depth of the recorded tree (0: nothing to draft, an n-gram source without a match)
    context: np.ndarray  # int64 [P]
    seq_start: np.ndarray  # int64 [S]
    seq_end: np.ndarray  # int64 [S]: exclusive; a sequence is done when its position reaches this
    ar_cost: np.ndarray  # float64 [P]: plain decoding (no drafter) at p
    grid: tuple
    top_k: int
    max_depth: int
    spec: FeatureSpec
    sampling: tuple[Sampling, ...] = (Sampling(),)  # the settings the traces were recorded at
    # float32 [P, F]: the observation before the first draft step (the "no draft" decision, D = 0)
    feats0: np.ndarray | None = None
    draft_sources: str = HEAD  # the traces' draft sources (trace.HEAD, NGRAM, HYBRID)
    # float64 [P]: a "no draft" cycle of this decoder (plain decoding, plus the n-gram lookup when it
    # has an n-gram source); None: ar_cost
    nodraft_cost: np.ndarray | None = None
    ngram_match: np.ndarray | None = None  # int32 [P]: the n-gram match length (n-gram traces only)

    @property
    def num_positions(self) -> int:
        return len(self.dmax)

    @property
    def num_sequences(self) -> int:
        return len(self.seq_start)

    @property
    def remaining(self) -> np.ndarray:
        return np.repeat(self.seq_end, self.seq_end - self.seq_start) - np.arange(self.num_positions)

    def ar_rate(self) -> float:
        return float(self.num_positions / self.ar_cost.sum())

    @classmethod
    def build(cls, traces: list[TraceSequence], cost: CostModel, grid=defaults.SIZE_GRID,
              spec: FeatureSpec | None = None, calibration: NgramCalibration | None = None) -> "SimTables":
        """Tables of `traces` under `cost`. `spec`: the feature set (default: paper_v2, or ngram_v1 for
        traces with n-gram branches); `calibration`: re-score the n-gram branches with it."""
        if not traces:
            raise LTDError("no trace sequences to simulate")
        top_k, max_depth = traces[0].top_k, traces[0].max_depth
        if any((t.top_k, t.max_depth) != (top_k, max_depth) for t in traces):
            raise LTDError("trace sequences mix (top_k, max_depth) settings")
        sources = traces[0].draft_sources
        if any(t.draft_sources != sources for t in traces):
            raise LTDError("trace sequences mix draft sources (head, ngram, head+ngram)")
        has_ngram = sources != HEAD
        if calibration is not None and not has_ngram:
            raise LTDError("an n-gram calibration re-scores n-gram branches, and these traces have none "
                           "(recorded without --ngram or --draft-kind ngram)")
        spec = spec or spec_for(has_ngram, top_k=top_k, max_depth=max_depth, size_grid=tuple(grid))
        check_ngram_match(spec, has_ngram, f"the feature set {spec.name}")
        sizes = np.asarray(grid, dtype=np.int64)
        counts = np.array([t.num_positions for t in traces], dtype=np.int64)
        P, D, G = int(counts.sum()), max_depth, len(sizes)
        acc = np.zeros((P, D, G), np.int16)
        vsize = np.zeros((P, D, G), np.int32)
        feats = np.zeros((P, D, spec.dim), np.float32)
        conf = np.zeros((P, D), np.float32)
        entropy = np.zeros((P, D), np.float32)
        dmax = np.zeros(P, np.int16)
        context = np.concatenate([t.context_lens for t in traces]).astype(np.int64)
        feats0 = np.zeros((P, spec.dim), np.float32)
        match = np.zeros(P, np.int32)
        row = 0
        for t in traces:
            for p in range(t.num_positions):
                tree = t.tree(p)
                if has_ngram and calibration is not None:
                    tree = rescore(tree, calibration)
                signals = getattr(tree, "ngram", None)  # a SourcedTree's (n-gram traces only)
                feats0[row] = pre_draft_observation(int(context[row]), spec, signals)
                match[row] = signals.match_len if signals is not None else 0
                depth = tree.depth
                table = accepted_length_table(tree, t.continuation(p), sizes)
                pools = np.array([tree.nodes_up_to(d) - 1 for d in range(1, depth + 1)])
                c, e = step_stats(tree)
                acc[row, :depth] = table
                vsize[row, :depth] = np.minimum(sizes[None, :], pools[:, None])
                conf[row, :depth], entropy[row, :depth] = c, e
                for d in range(1, depth + 1):
                    feats[row, d - 1] = observe(tree.truncated(d), int(context[row]), spec)
                if 1 <= depth < D:  # a cut tree (context end): deeper choices act as the deepest
                    for arr in (acc, vsize, feats, conf, entropy):
                        arr[row, depth:] = arr[row, depth - 1]
                dmax[row] = depth  # 0: every choice is "no draft" (`simulate` clips the depth to it)
                row += 1
        ar_cost = np.array([cost.predict_cycle(0, 0, int(c), top_k) for c in context])
        cost_tab = _cost_table(cost, vsize, context, top_k, model_steps=sources != NGRAM)
        lookup = np.zeros(P)
        if has_ngram:  # the n-gram phase: one lookup, and a merge after every head step (one without a head)
            lookup = np.array([ngram_seconds(cost, int(c), 1) for c in context])
            per_depth = lookup[:, None] if sources == NGRAM else \
                np.array([[ngram_seconds(cost, int(c), d) for d in range(1, D + 1)] for c in context])
            cost_tab = cost_tab + per_depth[:, :, None]
        seq_start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        return cls(acc, vsize, cost_tab, feats, conf, entropy, dmax, context, seq_start, seq_start + counts,
                   ar_cost, tuple(int(v) for v in sizes), top_k, max_depth, spec, tuple(sampling_of(traces)),
                   feats0, sources, ar_cost + lookup if has_ngram else None, match if has_ngram else None)

    @property
    def no_draft_cost(self) -> np.ndarray:
        """[P]: seconds of a "no draft" cycle (D = 0) of this decoder."""
        return self.ar_cost if self.nodraft_cost is None else self.nodraft_cost

    def subset(self, seqs) -> "SimTables":
        """The tables of some sequences only (by sequence index)."""
        seqs = np.asarray(seqs, dtype=np.int64)
        rows = np.concatenate([np.arange(self.seq_start[s], self.seq_end[s]) for s in seqs])
        counts = self.seq_end[seqs] - self.seq_start[seqs]
        start = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        return SimTables(self.acc[rows], self.vsize[rows], self.cost[rows], self.feats[rows], self.conf[rows],
                         self.entropy[rows], self.dmax[rows], self.context[rows], start, start + counts,
                         self.ar_cost[rows], self.grid, self.top_k, self.max_depth, self.spec, self.sampling,
                         self.feats0[rows], self.draft_sources,
                         None if self.nodraft_cost is None else self.nodraft_cost[rows],
                         None if self.ngram_match is None else self.ngram_match[rows])


def _cost_table(cost: CostModel, vsize: np.ndarray, context: np.ndarray, top_k: int,
                model_steps: bool = True) -> np.ndarray:
    """predict_cycle for every (position, D, g), each distinct (D, V, context) asked once; without
    `model_steps` (an n-gram source alone: its levels cost no forward) verify + overhead only."""
    P, D, G = vsize.shape
    depth = np.broadcast_to(np.arange(1, D + 1)[None, :, None], vsize.shape)
    ctx = np.broadcast_to(context[:, None, None], vsize.shape)
    keys = np.stack((depth.ravel(), vsize.ravel(), ctx.ravel()), axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    if model_steps:
        values = np.array([cost.predict_cycle(int(d), int(v), int(c), top_k) for d, v, c in uniq])
    else:
        values = np.array([cost.verify(int(v), int(c)) + cost.overhead(int(d), int(v), top_k) for d, v, c in uniq])
    if not np.all(np.isfinite(values)) or (values <= 0).any():
        raise LTDError("the cost model predicted a non-positive or non-finite cycle time")
    return values[inverse.ravel()].reshape(P, D, G)


@dataclass
class SimResult:
    tokens: np.ndarray  # [S] tokens committed per sequence
    time: np.ndarray  # [S] seconds per sequence
    cycles: np.ndarray  # [S]

    @property
    def tokens_per_s(self) -> float:
        return float(self.tokens.sum() / self.time.sum())

    @property
    def tau(self) -> float:
        return float(self.tokens.sum() / self.cycles.sum())


def cycle_outcome(t: SimTables, p: np.ndarray, d: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(draft tokens accepted, seconds) of cycles at positions p with depth d (0 = no draft) and size
    index g; the one lookup that the replay, the envs and the serving simulation share. A position
    with nothing to draft (an n-gram source without a match: depth 0) is a "no draft" cycle whatever d."""
    drafted = (d >= 1) & (t.dmax[p] >= 1)
    col = np.maximum(d, 1) - 1
    a = np.where(drafted, t.acc[p, col, g].astype(np.int64), 0)
    c = np.where(drafted, t.cost[p, col, g], t.no_draft_cost[p])
    return a, c


def simulate(t: SimTables, choose, feedback=None) -> SimResult:
    """Replay all sequences in lockstep. `choose(pos, seq) -> (depth [n], size index [n])` for the
    sequences `seq` at positions `pos` (depth 0: no draft); `feedback(seq, depth, accepted)` (optional)
    sees each cycle."""
    S = t.num_sequences
    pos = t.seq_start.copy()
    tokens, time, cycles = np.zeros(S, np.int64), np.zeros(S), np.zeros(S, np.int64)
    active = np.flatnonzero(pos < t.seq_end)
    while len(active):
        p = pos[active]
        d, g = choose(p, active)
        d = np.clip(np.asarray(d, np.int64), 0, t.dmax[p])
        g = np.broadcast_to(np.asarray(g, np.int64), d.shape)
        a, dt = cycle_outcome(t, p, d, g)
        c = np.minimum(a + 1, t.seq_end[active] - p)
        tokens[active] += c
        time[active] += dt
        cycles[active] += 1
        pos[active] = p + c
        if feedback is not None:
            feedback(active, d, a)
        active = active[pos[active] < t.seq_end[active]]
    return SimResult(tokens, time, cycles)


def first_stop(stop: np.ndarray, dmax: np.ndarray) -> np.ndarray:
    """Depth per position: the first step d (1-based) with stop[p, d-1], else the tree's depth."""
    D = stop.shape[1]
    stop = stop | (np.arange(1, D + 1)[None, :] >= dmax[:, None])
    return np.argmax(stop, axis=1) + 1


def simulate_tables(t: SimTables, depth_at: np.ndarray, size_at: np.ndarray) -> SimResult:
    """A stateless schedule: depth_at [P] (0 = no draft) and size index size_at [P, D] (or [P])."""
    size_at = np.asarray(size_at)

    def choose(p, seq):
        d = np.clip(depth_at[p], 0, t.dmax[p])
        g = size_at[p, np.maximum(d, 1) - 1] if size_at.ndim == 2 else size_at[p]
        return d, g

    return simulate(t, choose)


def simulate_static(t: SimTables, depth: int, size_index: int) -> SimResult:
    P = t.num_positions
    return simulate_tables(t, np.full(P, depth), np.full(P, size_index))


NO_DRAFT = (0, 0)  # the static grid's "no draft" setting: D = 0 (V is moot: the root alone)


def static_grid(t: SimTables) -> dict[tuple[int, int], SimResult]:
    """Every static (D, V) of the grid, and (0, 0): never draft (plain decoding, drafter loaded)."""
    grid = {NO_DRAFT: simulate_static(t, 0, 0)}
    grid.update({(d, v): simulate_static(t, d, g) for d in range(1, t.max_depth + 1) for g, v in enumerate(t.grid)})
    return grid


def oracle(t: SimTables) -> tuple[SimResult, np.ndarray, np.ndarray]:
    """The fastest schedule (dynamic programme over positions, same action set as the policies).

    Returns its result and the chosen (depth [P], size index [P]) at every position the optimal
    schedule stands on; elsewhere, and where it does not draft (D = 0), depth is 0."""
    D, G = t.max_depth, len(t.grid)
    best_d = np.zeros(t.num_positions, np.int64)
    best_g = np.zeros(t.num_positions, np.int64)
    S = t.num_sequences
    tokens, time, cycles = np.zeros(S, np.int64), np.zeros(S), np.zeros(S, np.int64)
    for s in range(S):
        a, b = int(t.seq_start[s]), int(t.seq_end[s])
        n = b - a
        best = np.zeros(n + 1)
        acc = t.acc[a:b].reshape(n, D * G).astype(np.int64)
        cost = t.cost[a:b].reshape(n, D * G)
        # Depths beyond a cut tree's depth repeat its deepest entries; keep the real ones only.
        valid = (np.arange(D)[None, :] < t.dmax[a:b, None]).repeat(G, axis=1)
        cost = np.where(valid, cost, np.inf)
        # the last column: no draft (D = 0), one token at the plain decoding step's cost
        acc = np.concatenate((acc, np.zeros((n, 1), np.int64)), axis=1)
        cost = np.concatenate((cost, t.no_draft_cost[a:b, None]), axis=1)
        choice = np.zeros(n, np.int64)
        for i in range(n - 1, -1, -1):
            nxt = i + np.minimum(acc[i] + 1, n - i)
            total = cost[i] + best[nxt]
            j = int(np.argmin(total))
            choice[i], best[i] = j, total[j]
        i = 0
        while i < n:
            j = choice[i]
            if j < D * G:  # else D = 0: best_d stays 0
                best_d[a + i], best_g[a + i] = j // G + 1, j % G
            i += min(int(acc[i, j]) + 1, n - i)
            cycles[s] += 1
        tokens[s], time[s] = n, best[0]
    return SimResult(tokens, time, cycles), best_d, best_g


def autoregressive(t: SimTables) -> SimResult:
    """Plain decoding without a drafter: one token per target forward."""
    counts = t.seq_end - t.seq_start
    time = np.array([t.ar_cost[a:b].sum() for a, b in zip(t.seq_start, t.seq_end)])
    return SimResult(counts.astype(np.int64), time, counts.astype(np.int64))
