"""The simulator on traces with n-gram branches (issue 15): trace format v2, the n-gram calibration (fit,
re-scoring), and how the tables, the static grid and the oracle price n-gram-alone and hybrid trees.

Traces here are made without any model: the n-gram source is a pure function of the committed tokens
(realrun/ngram.py), so at every position of a token stream the tree `ltd trace --draft-kind ngram`
records is the proposal grafted below the root, and a hybrid tree is the proposal grafted into a random
EAGLE-2 tree (`ltd_sim.synthetic.random_tree`), both exactly as the decoder builds them. The real
decoder's replay of such traces is tested in tests/realrun/test_ngram_traces.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.errors import LTDError
from ltd_sim.features import FeatureSpec, observe
from ltd_sim.ngram_calibration import PRIOR_WEIGHT, NgramCalibration, fit_calibration, rescore
from ltd_sim.sim import NO_DRAFT, SimTables, cycle_outcome, oracle, simulate, simulate_static, static_grid
from ltd_sim.synthetic import random_tree, synthetic_sequence
from ltd_sim.trace import (HEAD, HYBRID, NGRAM, Sampling, TraceSequence, load_sequence, load_traces, save_sequence,
                           sequence_path)
from ltd_sim.tree import SOURCE_HEAD, SOURCE_NGRAM, DraftTree, NgramSignals, SourcedTree
from realrun.ngram import NgramConfig, NgramProposer, merge_proposal

TOP_K, MAX_DEPTH, VOCAB, PROMPT = 3, 4, 12, 6
CFG = NgramConfig(ngram_min=2, ngram_max=3)


def token_stream(seed: int, n: int = 80) -> np.ndarray:
    """Prompt and output: a phrase repeated with random interruptions (long matches, some misses, and
    positions after fresh tokens where no suffix occurred before)."""
    rng = np.random.default_rng(seed)
    phrase = rng.integers(0, VOCAB, 7).tolist()
    out: list[int] = rng.integers(0, VOCAB, PROMPT).tolist()
    while len(out) < n:
        out += phrase if rng.random() < 0.6 else rng.integers(0, VOCAB, 4).tolist()
    return np.asarray(out[:n], dtype=np.int64)


def root_only(root: int) -> DraftTree:
    return DraftTree(np.array([root]), np.array([-1]), np.zeros(1, np.float32), np.zeros(1, np.int8))


def stream_trace(tokens: np.ndarray, hybrid: bool = False, calibration: NgramCalibration | None = None,
                 seed: int = 0) -> TraceSequence:
    """The trace of a decoder whose target's output is tokens[PROMPT:]: position p's root is output[p]
    (context PROMPT + p), its tree the proposal of the committed context (prompt + output[:p + 1])
    grafted below the root (n-gram alone) or into a random EAGLE-2 tree (hybrid)."""
    rng = np.random.default_rng(seed)
    proposer = NgramProposer(CFG, calibration)
    proposer.begin(tokens[:PROMPT + 1].tolist())
    output = tokens[PROMPT:]
    trees = []
    for p in range(len(output) - 1):
        root = int(output[p])
        base = random_tree(rng, root, TOP_K, MAX_DEPTH, sharp=2.0) if hybrid else root_only(root)
        trees.append(merge_proposal(base, proposer.propose(MAX_DEPTH)))
        proposer.commit([int(output[p + 1])])
    return TraceSequence.from_trees(trees, output, PROMPT + np.arange(len(output) - 1), TOP_K, MAX_DEPTH,
                                    {"seed": seed}, draft_sources=HYBRID if hybrid else NGRAM)


@pytest.fixture(scope="module")
def ngram_seqs():
    return [stream_trace(token_stream(s)) for s in range(3)]


@pytest.fixture(scope="module")
def hybrid_seqs():
    return [stream_trace(token_stream(s), hybrid=True, seed=s) for s in range(3)]


def test_stream_traces_have_what_the_tests_need(ngram_seqs, hybrid_seqs):
    """The fixtures really hold depth-0 positions (no match), deep branches, merged nodes and accepted
    n-gram tokens, so the tests below are not vacuous."""
    depths = np.array([s.tree(p).depth for s in ngram_seqs for p in range(s.num_positions)])
    assert (depths == 0).sum() >= 3 and (depths == MAX_DEPTH).sum() >= 10
    merged = sum(int((s.sources == SOURCE_HEAD | SOURCE_NGRAM).sum()) for s in hybrid_seqs)
    assert merged > 0
    tables = SimTables.build(ngram_seqs, AnalyticCostModel())
    assert tables.acc[:, -1, -1].sum() > 20


# ----------------------------------------------------------------------------------------------
# Trace format v2
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [NGRAM, HYBRID])
def test_v2_round_trip_keeps_sourced_trees_and_signals(ngram_seqs, hybrid_seqs, tmp_path, kind):
    seq = (ngram_seqs if kind == NGRAM else hybrid_seqs)[0]
    save_sequence(tmp_path / "seq_00000.npz", seq)
    back = load_sequence(tmp_path / "seq_00000.npz")
    assert back.draft_sources == kind and back.has_ngram and back.num_positions == seq.num_positions
    for p in range(seq.num_positions):
        a, b = seq.tree(p), back.tree(p)
        assert isinstance(b, SourcedTree) and a.ngram == b.ngram == back.signals(p)
        for name in ("tokens", "parents", "scores", "steps", "sources", "head_scores", "ngram_share"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (p, name)
    assert np.array_equal(back.output, seq.output) and np.array_equal(back.context_lens, seq.context_lens)
    # the signals say what the tree holds: no match, no branch
    for p in range(seq.num_positions):
        tree = back.tree(p)
        has_branch = bool((tree.sources & SOURCE_NGRAM).any())
        assert has_branch == np.isfinite(tree.ngram.best_score)
        assert (tree.ngram.match_len >= CFG.ngram_min) == (tree.ngram.matches > 0)


def test_version_1_files_still_load(tmp_path):
    """A trace written by the toolkit before n-gram branches existed (version 1: no draft_sources,
    no n-gram arrays) loads as a head trace and simulates as before."""
    seq = synthetic_sequence(np.random.default_rng(4), length=20, k=TOP_K, depth=MAX_DEPTH)
    header = {"format": "ltd-trace", "version": 1, "top_k": TOP_K, "max_depth": MAX_DEPTH,
              "sampling": Sampling().to_json(), "meta": {"old": True}}
    names = ("tokens", "parents", "scores", "steps", "offsets", "output", "context_lens")
    path = tmp_path / "seq_00000.npz"
    np.savez_compressed(path, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                        **{name: getattr(seq, name) for name in names})
    old = load_sequence(path)
    assert old.draft_sources == HEAD and not old.has_ngram and old.meta == {"old": True}
    assert old.signals(0) == NgramSignals()
    for p in range(seq.num_positions):
        tree = old.tree(p)
        assert type(tree) is DraftTree and np.array_equal(tree.tokens, seq.tree(p).tokens)
    tables = SimTables.build(load_traces(tmp_path), AnalyticCostModel())
    assert tables.spec.name == "paper_v2" and tables.nodraft_cost is None
    assert np.array_equal(tables.acc, SimTables.build([seq], AnalyticCostModel()).acc)


def test_a_v2_ngram_file_without_its_arrays_is_refused_in_one_line(ngram_seqs, tmp_path):
    seq = ngram_seqs[0]
    header = {"format": "ltd-trace", "version": 2, "top_k": TOP_K, "max_depth": MAX_DEPTH,
              "sampling": Sampling().to_json(), "draft_sources": NGRAM, "meta": {}}
    names = ("tokens", "parents", "scores", "steps", "offsets", "output", "context_lens")
    path = tmp_path / "seq_00000.npz"
    np.savez_compressed(path, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                        **{name: getattr(seq, name) for name in names})
    with pytest.raises(LTDError) as err:
        load_sequence(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_folder_mixing_draft_sources_is_refused(ngram_seqs, hybrid_seqs, tmp_path):
    head = synthetic_sequence(np.random.default_rng(5), length=20, k=TOP_K, depth=MAX_DEPTH)
    for i, seq in enumerate((head, ngram_seqs[0])):
        save_sequence(sequence_path(tmp_path / "mixed", i), seq)
    with pytest.raises(LTDError, match=r"mix draft sources \(head, ngram\)") as err:
        load_traces(tmp_path / "mixed")
    assert "\n" not in str(err.value)
    with pytest.raises(LTDError, match="mix draft sources"):
        SimTables.build([ngram_seqs[0], hybrid_seqs[0]], AnalyticCostModel())


def test_feature_sets_must_match_the_draft_sources(ngram_seqs):
    head = synthetic_sequence(np.random.default_rng(6), length=20, k=TOP_K, depth=MAX_DEPTH)
    with pytest.raises(LTDError, match="trained without n-gram signals"):
        SimTables.build(ngram_seqs, AnalyticCostModel(), spec=FeatureSpec(top_k=TOP_K, max_depth=MAX_DEPTH))
    with pytest.raises(LTDError, match="observe n-gram signals"):
        SimTables.build([head], AnalyticCostModel(), spec=FeatureSpec("ngram_v1", top_k=TOP_K, max_depth=MAX_DEPTH))
    tables = SimTables.build(ngram_seqs, AnalyticCostModel())
    assert tables.spec.name == "ngram_v1" and tables.feats.shape[-1] == tables.spec.dim == TOP_K + 12 + 2 + 3


def test_tables_observe_the_recorded_signals(hybrid_seqs):
    """feats0 (the "no draft" decision) and feats (after D steps) carry the position's n-gram signals."""
    tables = SimTables.build(hybrid_seqs[:1], AnalyticCostModel())
    seq = hybrid_seqs[0]
    for p in range(seq.num_positions):
        signals = seq.signals(p)
        assert tables.feats0[p, -3] == pytest.approx(min(signals.match_len / 16, 1.0))
        best = np.exp(signals.best_score) if np.isfinite(signals.best_score) else 0.0
        assert tables.feats0[p, -1] == pytest.approx(best, abs=1e-6)
        for d in range(1, seq.tree(p).depth + 1):
            np.testing.assert_array_equal(tables.feats[p, d - 1], observe(seq.tree(p).truncated(d), int(seq.context_lens[p]),
                                                                          tables.spec))
            np.testing.assert_array_equal(tables.feats[p, d - 1, -3:], tables.feats0[p, -3:])


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------

def sourced(tokens, parents, steps, sources, match_len) -> SourcedTree:
    """A hand-made tree; every node scores -0.1 per depth (scores do not enter the acceptance counts)."""
    steps = np.asarray(steps, np.int8)
    return SourcedTree(np.asarray(tokens, np.int64), np.asarray(parents, np.int32), -0.1 * steps.astype(np.float32),
                       steps, np.asarray(sources, np.uint8), np.zeros(len(tokens), np.float32),
                       np.zeros(len(tokens), np.float32), NgramSignals(match_len, 1, -0.1))


N, H, B = SOURCE_NGRAM, SOURCE_HEAD, SOURCE_HEAD | SOURCE_NGRAM


def test_fit_calibration_counts_reached_and_accepted_branch_tokens():
    # root -> 5 -> 6 (an n-gram branch of a length-2 match)
    chain = dict(tokens=[1, 5, 6], parents=[-1, 0, 1], steps=[0, 1, 2], sources=[0, N, N])
    # root -> head 4, merged 5 -> n-gram 6 (a length-3 match)
    mixed = dict(tokens=[1, 4, 5, 6], parents=[-1, 0, 0, 2], steps=[0, 1, 1, 2], sources=[0, H, B, N])
    pairs = [
        (sourced(**chain, match_len=2), np.array([5, 7])),  # depth 1 accepted, depth 2 rejected
        (sourced(**chain, match_len=2), np.array([9, 9])),  # depth 1 rejected (depth 2 never reached)
        (sourced(**chain, match_len=2), np.array([5, 6])),  # both accepted
        (sourced(**mixed, match_len=3), np.array([4, 6])),  # the head's sibling wins: n-gram rejected
        (sourced(**mixed, match_len=3), np.array([5, 6])),  # the merged node, then its n-gram child
        (sourced(**chain, match_len=9), np.array([5, 6])),  # m beyond the table: its last row
        (sourced([1, 4], [-1, 0], [0, 1], [0, H], match_len=0), np.array([4])),  # no n-gram: no count
    ]
    rows, cols = 4, 3
    cal, reached = fit_calibration(pairs, rows, cols)
    expect_reached = np.zeros((rows, cols), int)
    expect_acc = np.zeros((rows, cols), int)
    for (m, i), (r, a) in {(2, 1): (3, 2), (2, 2): (2, 1), (3, 1): (2, 1), (3, 2): (1, 1),
                           (4, 1): (1, 1), (4, 2): (1, 1)}.items():
        expect_reached[m - 1, i - 1], expect_acc[m - 1, i - 1] = r, a
    np.testing.assert_array_equal(reached, expect_reached)
    m = np.arange(1, rows + 1)[:, None]
    i = np.arange(1, cols + 1)[None, :]
    prior_rate = (m + i - 1) / (m + i)
    expected = (expect_acc + PRIOR_WEIGHT * prior_rate) / (expect_reached + PRIOR_WEIGHT)
    np.testing.assert_allclose(np.exp(cal.log_rate), expected, rtol=1e-12)
    assert cal.fitted and "10 reached branch tokens (7 accepted)" in cal.note
    untouched = expect_reached == 0  # cells without data keep the prior
    np.testing.assert_allclose(cal.log_rate[untouched], np.log(prior_rate)[untouched], rtol=1e-12)


def test_fit_calibration_refuses_traces_without_reached_branches():
    pairs = [(sourced([1, 4], [-1, 0], [0, 1], [0, H], match_len=0), np.array([4]))]
    with pytest.raises(LTDError, match="nothing to calibrate on"):
        fit_calibration(pairs, 4, 3)


def steep() -> NgramCalibration:
    """Another calibration than the prior: n-gram tokens trusted far less, differently by depth."""
    prior = NgramCalibration.prior()
    return NgramCalibration(prior.log_rate * np.linspace(3.0, 6.0, prior.log_rate.shape[1])[None, :])


@pytest.mark.parametrize("hybrid", [False, True])
def test_rescore_is_exact(hybrid):
    """Re-scoring with the recording's own calibration returns its very bits; with another, the bits a
    recording with that calibration has (scores, signals), so the tables built either way agree."""
    tokens = token_stream(7)
    prior_seq = stream_trace(tokens, hybrid, seed=7)
    other_seq = stream_trace(tokens, hybrid, calibration=steep(), seed=7)
    cost = AnalyticCostModel()
    changed = 0
    for p in range(prior_seq.num_positions):
        mine, other = prior_seq.tree(p), other_seq.tree(p)
        same = rescore(mine, NgramCalibration.prior())
        assert same.scores.tobytes() == mine.scores.tobytes() and same.ngram == mine.ngram
        moved = rescore(mine, steep())
        assert moved.scores.tobytes() == other.scores.tobytes(), p
        assert moved.ngram == other.ngram and np.array_equal(moved.tokens, other.tokens)
        changed += int(not np.array_equal(mine.scores, other.scores))
    assert changed > 0
    rescored = SimTables.build([prior_seq], cost, calibration=steep())
    recorded = SimTables.build([other_seq], cost)
    for name in ("acc", "vsize", "cost", "feats", "feats0", "dmax"):
        np.testing.assert_array_equal(getattr(rescored, name), getattr(recorded, name), err_msg=name)
    if hybrid:  # the calibration decides which nodes enter a verify set: the acceptance tables move
        assert not np.array_equal(SimTables.build([prior_seq], cost).acc, recorded.acc)


# ----------------------------------------------------------------------------------------------
# Pricing, the static grid and the oracle
# ----------------------------------------------------------------------------------------------

def test_ngram_alone_prices_no_draft_step_and_hybrid_does(ngram_seqs, hybrid_seqs):
    cost = AnalyticCostModel()
    for seqs, steps in ((ngram_seqs, False), (hybrid_seqs, True)):
        t = SimTables.build(seqs, cost)
        for p in range(0, t.num_positions, 7):
            ctx = int(t.context[p])
            assert t.no_draft_cost[p] == pytest.approx(cost.predict_cycle(0, 0, ctx, TOP_K) + cost.ngram_propose)
            for d in range(1, MAX_DEPTH + 1):
                for g in range(len(t.grid)):
                    v = int(t.vsize[p, d - 1, g])
                    base = cost.predict_cycle(d, v, ctx, TOP_K) if steps else \
                        cost.verify(v, ctx) + cost.overhead(d, v, TOP_K)
                    assert t.cost[p, d - 1, g] == pytest.approx(base + cost.ngram_propose), (p, d, g)
    # draft-step costs move every hybrid schedule and no n-gram-alone one
    slow = AnalyticCostModel(draft_first=0.5, draft_later=0.5)
    for seqs, moves in ((ngram_seqs, False), (hybrid_seqs, True)):
        fast_grid, slow_grid = static_grid(SimTables.build(seqs, cost)), static_grid(SimTables.build(seqs, slow))
        for key in fast_grid:
            if key == NO_DRAFT:
                assert slow_grid[key].time.sum() == pytest.approx(fast_grid[key].time.sum())
                continue
            assert (slow_grid[key].time.sum() > fast_grid[key].time.sum() + 0.4) == moves, key
            if not moves:
                assert slow_grid[key].time.sum() == pytest.approx(fast_grid[key].time.sum())


class MergePricedCost(AnalyticCostModel):
    """A cost model whose n-gram phase grows with the tree's draft steps (a merge after each), as a
    profiled one does: 10 us for the lookup, 5 us per merge."""

    def ngram(self, context_len: int, depth: int | None = None) -> float:
        return 1e-5 + 5e-6 * (MAX_DEPTH if depth is None else depth)


def test_ngram_phase_is_priced_by_the_merges_a_cycle_makes(ngram_seqs, hybrid_seqs):
    """A hybrid cycle of D steps merges D times; an n-gram-alone cycle once (its trie is the tree); a
    "no draft" cycle looks the context up (priced with one merge, as the n-gram-alone cycle)."""
    cost = MergePricedCost()
    for seqs, steps in ((ngram_seqs, False), (hybrid_seqs, True)):
        t = SimTables.build(seqs, cost)
        for p in range(0, t.num_positions, 5):
            ctx = int(t.context[p])
            assert t.no_draft_cost[p] == pytest.approx(cost.predict_cycle(0, 0, ctx, TOP_K) + cost.ngram(ctx, 1))
            for d in range(1, MAX_DEPTH + 1):
                v = int(t.vsize[p, d - 1, -1])
                base = cost.predict_cycle(d, v, ctx, TOP_K) + cost.ngram(ctx, d) if steps else \
                    cost.verify(v, ctx) + cost.overhead(d, v, TOP_K) + cost.ngram(ctx, 1)
                assert t.cost[p, d - 1, -1] == pytest.approx(base), (steps, p, d)


@pytest.mark.parametrize("kind", [NGRAM, HYBRID])
def test_oracle_beats_every_static_setting(ngram_seqs, hybrid_seqs, kind):
    t = SimTables.build(ngram_seqs if kind == NGRAM else hybrid_seqs, AnalyticCostModel())
    best, depth, size = oracle(t)
    grid = static_grid(t)
    assert all(best.tokens_per_s >= r.tokens_per_s * (1 - 1e-12) for r in grid.values())
    assert best.tokens.sum() == t.num_positions
    # the oracle's schedule replayed by `simulate` costs what the oracle says
    replay = simulate(t, lambda p, s: (depth[p], size[p]))
    assert replay.time.sum() == pytest.approx(best.time.sum()) and np.array_equal(replay.tokens, best.tokens)
    assert (depth[t.dmax == 0] == 0).all()  # nothing to draft: the oracle never "drafts" there


def test_a_depth_zero_position_is_a_no_draft_cycle_for_every_choice(ngram_seqs):
    t = SimTables.build(ngram_seqs, AnalyticCostModel())
    empty = np.flatnonzero(t.dmax == 0)
    assert len(empty) >= 3
    for p in empty:
        for d in range(MAX_DEPTH + 1):
            for g in range(len(t.grid)):
                a, c = cycle_outcome(t, np.array([p]), np.array([d]), np.array([g]))
                assert a[0] == 0 and c[0] == t.no_draft_cost[p], (p, d, g)
    # a schedule that always asks for the deepest, widest tree spends one plain cycle at each of them
    seen = []
    simulate(t, lambda p, s: (np.full(len(p), MAX_DEPTH), np.full(len(p), len(t.grid) - 1)),
             lambda s, d, a: seen.extend(zip(d.tolist(), a.tolist())))
    deepest = simulate_static(t, MAX_DEPTH, len(t.grid) - 1)
    assert deepest.cycles.sum() == len(seen) and any(d == 0 and a == 0 for d, a in seen)
