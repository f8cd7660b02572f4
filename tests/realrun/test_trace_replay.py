"""Trace recording and exact replay: the simulator's acceptance equals the real decoder's.

A trace is recorded with a tiny target and a noisy-copy draft (and a random EAGLE-3 head); the real
decoder then runs with random (D, V) per cycle, and at every cycle the accepted length from the
trace (the one tree arithmetic and the simulator's tables) must equal the decoder's, its tree must be
the recorded tree cut at D, its observation the one the simulator precomputed, and its output the
recorded greedy output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltd_sim import defaults
from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.features import FeatureSpec, observe
from ltd_sim.sim import SimTables
from ltd_sim.trace import load_sequence, save_sequence
from ltd_sim.tree import accepted_length_on_trace
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import Eagle3Drafter, LMDrafter
from realrun.eagle3 import random_head
from realrun.record import record_sequence

TOP_K, MAX_DEPTH, NEW = 4, 5, 24
SPEC = FeatureSpec(top_k=TOP_K, max_depth=MAX_DEPTH)


pytestmark = pytest.mark.usefixtures("one_thread")


class RandomDepth:
    """Stops after a random number of steps; remembers the observation it saw at every step."""

    def __init__(self, rng):
        self.rng, self.target, self.seen = rng, None, {}

    def should_continue(self, tree, context_len):
        if tree.depth == 1:
            self.target = int(self.rng.integers(1, MAX_DEPTH + 1))
        self.seen[(context_len, tree.depth)] = observe(tree, context_len, SPEC)
        return tree.depth < self.target


class RandomSize:
    def __init__(self, rng):
        self.rng, self.last = rng, None

    def choose_size(self, tree, context_len):
        self.last = int(self.rng.choice(defaults.SIZE_GRID))
        return self.last


def make_drafter(kind, target, draft):
    if kind == "lm":
        return LMDrafter(draft, 256)
    return Eagle3Drafter(random_head(target, draft_vocab_size=128, seed=3), 256)


@pytest.mark.parametrize("kind,seed", [("lm", 0), ("lm", 1), ("eagle3", 2)])
def test_replay_equals_real_decoder(tiny_target, tiny_draft, tmp_path, kind, seed):
    prompt = torch.randint(0, 256, (10,), generator=torch.Generator().manual_seed(100 + seed))
    # Record beyond the replay's length so every replayed cycle's continuation is known.
    seq = record_sequence(tiny_target, make_drafter(kind, tiny_target, tiny_draft), prompt,
                          max_new_tokens=NEW + MAX_DEPTH + 1, top_k=TOP_K, max_depth=MAX_DEPTH)
    assert seq.num_positions == NEW + MAX_DEPTH and len(seq.output) == NEW + MAX_DEPTH + 1
    save_sequence(tmp_path / "seq_00000.npz", seq)
    seq = load_sequence(tmp_path / "seq_00000.npz")
    tables = SimTables.build([seq], AnalyticCostModel())
    assert tables.spec == SPEC

    rng = np.random.default_rng(seed)
    depth_ctrl, size_ctrl = RandomDepth(rng), RandomSize(rng)
    checked = []

    def on_cycle(tree, record):
        p = record.context_len - len(prompt)
        assert seq.context_lens[p] == record.context_len
        recorded = seq.tree(p).truncated(record.depth)
        np.testing.assert_array_equal(recorded.tokens, tree.tokens)
        np.testing.assert_array_equal(recorded.parents, tree.parents)
        np.testing.assert_allclose(recorded.scores, tree.scores, atol=1e-4)
        v = size_ctrl.last
        replayed = accepted_length_on_trace(seq.tree(p), record.depth, v, seq.continuation(p))
        assert replayed == record.accepted, f"position {p}, D={record.depth}, V={v}"
        g = defaults.SIZE_GRID.index(v)
        assert tables.acc[p, record.depth - 1, g] == record.accepted
        assert tables.vsize[p, record.depth - 1, g] == record.size
        # The live observations (the depth controller's at every step it was asked, the final tree's)
        # equal the simulator's precomputed ones.
        live = {d: depth_ctrl.seen[(record.context_len, d)] for d in range(1, record.depth)}
        live[record.depth] = observe(tree, record.context_len, SPEC)
        for d, obs in live.items():
            np.testing.assert_allclose(tables.feats[p, d - 1], obs, atol=1e-5)
        checked.append(record.accepted)

    result = generate(tiny_target, prompt, make_drafter(kind, tiny_target, tiny_draft),
                      DecodeConfig(max_new_tokens=NEW, top_k=TOP_K, max_depth=MAX_DEPTH),
                      depth_ctrl, size_ctrl, on_cycle=on_cycle)
    assert result.token_ids == seq.output[:NEW].tolist()
    assert len(checked) == len(result.cycles) >= 5
    if kind == "lm":
        assert sum(checked) > 0, "a close draft should get tokens accepted in some cycle"


@pytest.mark.parametrize("argv,msg", [(["--threads", "0"], "--threads must be at least 1"),
                                      (["--limit", "0"], "--limit must be at least 1")])
def test_trace_refuses_bad_options_in_one_line(tmp_path, capsys, argv, msg):
    """`ltd trace` checks its options once, in the core, before anything loads: a thread count below
    1 is refused in one line (as `ltd bench` does), not silently raised to 1."""
    from realrun.cli import main

    capsys.readouterr()
    assert main(["trace", "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "t"),
                 "--draft", "default", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ltd: error:") and msg in err and "\n" not in err
