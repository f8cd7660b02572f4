"""Sampled traces (T > 0): replaying them is exact in law, and they carry their settings.

The fact the simulator relies on at T > 0 (DESIGN.md, docs/sampling.md): with one-hot drafts, the
decoder's multi-candidate rejection accepts the child carrying x, where x is a draw from the target's
(temperature, top-p) law, and commits x otherwise. So accepted lengths replayed on a trace recorded
along a *sampled* continuation have the real decoder's distribution. The tests compare the two
histograms (a chi-square two-sample test) on a small-vocabulary pair, for a static (D, V) and for a
random per-position schedule.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from helpers import noisy_copy, tiny_lm_pair
from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.errors import LTDError
from ltd_sim.sim import SimTables, simulate
from ltd_sim.trace import Sampling, load_sequence, load_traces, save_sequence, sequence_path
from realrun.cli import main
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import LMDrafter
from realrun.record import record_prompts, record_sequence

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, TOP_K, MAX_DEPTH, NEW, RUNS = 16, 2, 3, 14, 240
SAMPLING = Sampling(temperature=1.0, top_p=0.8)
PROMPT = torch.tensor([1, 5, 2, 7, 3])


@pytest.fixture(scope="module")
def small_pair():
    """A small-vocabulary target (sharpened so drafts are often right) and a noisy copy as the drafter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    target = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(3.0)
    return target, noisy_copy(target, 0.3)


@pytest.fixture(scope="module")
def sampled_tables(small_pair):
    """Traces along RUNS sampled continuations of the prompt (their own seeds), as simulator tables."""
    target, draft = small_pair
    seqs = [record_sequence(target, LMDrafter(draft, VOCAB), PROMPT, NEW, TOP_K, MAX_DEPTH,
                            sampling=SAMPLING, seed=10_000 + i) for i in range(RUNS)]
    return SimTables.build(seqs, AnalyticCostModel())


class PositionSchedule:
    """(D, V) drawn once per output position: the same schedule law for the decoder and the replay."""

    def __init__(self, depths: np.ndarray, size_indices: np.ndarray):
        self.depths, self.size_indices = depths, size_indices
        self.position = 0

    def at(self, context_len: int) -> tuple[int, int]:
        p = context_len - len(PROMPT)
        return int(self.depths[p]), defaults.SIZE_GRID[int(self.size_indices[p])]

    def should_continue(self, tree, context_len):
        return tree.depth < self.at(context_len)[0]

    def choose_size(self, tree, context_len):
        return self.at(context_len)[1]


def real_accepted(small_pair, depth_ctrl, size_ctrl) -> list[tuple[int, int]]:
    """(position, accepted) of every cycle of RUNS real sampled generations (seeds 0..RUNS-1)."""
    target, draft = small_pair
    cycles = []
    for seed in range(RUNS):
        cfg = DecodeConfig(max_new_tokens=NEW, top_k=TOP_K, max_depth=MAX_DEPTH, temperature=SAMPLING.temperature,
                           top_p=SAMPLING.top_p, seed=seed)
        result = generate(target, PROMPT, LMDrafter(draft, VOCAB), cfg, depth_ctrl, size_ctrl)
        cycles += [(c.context_len - len(PROMPT), c.accepted) for c in result.cycles]
    return cycles


def replayed_accepted(tables: SimTables, depth_of, size_index_of) -> list[tuple[int, int]]:
    """(position, accepted) of every simulated cycle: the simulator's own replay loop."""
    cycles, current = [], {}

    def choose(p, seq):
        local = p - tables.seq_start[seq]
        current["p"] = local
        return depth_of(local), size_index_of(local)

    def feedback(seq, depth, accepted):
        cycles.extend(zip(current["p"].tolist(), accepted.tolist()))

    simulate(tables, choose, feedback)
    return cycles


def assert_same_law(real: list[tuple[int, int]], replay: list[tuple[int, int]], max_depth: int) -> None:
    """Histograms of accepted lengths over cycles whose continuation the trace holds in full."""
    last = NEW - 1 - max_depth  # positions beyond this have a cut continuation in a NEW-token trace
    hist = np.zeros((2, max_depth + 1), np.int64)
    for row, cycles in enumerate((real, replay)):
        for p, a in cycles:
            if p <= last:
                hist[row, a] += 1
    hist = hist[:, hist.sum(0) >= 5]  # chi-square needs populated bins
    assert hist.shape[1] >= 2 and hist[:, 1:].sum() > 100, f"too few acceptances to compare: {hist}"
    p_value = chi2_contingency(hist).pvalue
    assert p_value > 1e-3, f"accepted-length histograms differ (p = {p_value:.2e}): real {hist[0]}, replay {hist[1]}"


@pytest.mark.parametrize("depth,size", [(3, 4), (2, 2)])
def test_static_schedule_replay_has_the_decoders_law(small_pair, sampled_tables, depth, size):
    g = defaults.SIZE_GRID.index(size)
    real = real_accepted(small_pair, StaticDepth(depth), StaticSize(size))
    replay = replayed_accepted(sampled_tables, lambda p: np.full(len(p), depth), lambda p: np.full(len(p), g))
    assert_same_law(real, replay, depth)


def test_random_schedule_replay_has_the_decoders_law(small_pair, sampled_tables):
    rng = np.random.default_rng(7)
    depths = rng.integers(1, MAX_DEPTH + 1, size=NEW)
    sizes = rng.integers(0, len(defaults.SIZE_GRID), size=NEW)
    schedule = PositionSchedule(depths, sizes)
    real = real_accepted(small_pair, schedule, schedule)
    replay = replayed_accepted(sampled_tables, lambda p: depths[p], lambda p: sizes[p])
    assert_same_law(real, replay, MAX_DEPTH)


def test_sampled_trace_round_trip_and_seed(small_pair, tmp_path):
    """A sampled trace keeps its settings and seed, and the seed records the same continuation again."""
    target, draft = small_pair
    seq = record_sequence(target, LMDrafter(draft, VOCAB), PROMPT, 10, TOP_K, MAX_DEPTH, sampling=SAMPLING, seed=42)
    save_sequence(sequence_path(tmp_path, 0), seq)
    back = load_sequence(sequence_path(tmp_path, 0))
    assert back.sampling == SAMPLING and back.meta["seed"] == 42
    assert np.array_equal(back.output, seq.output) and np.array_equal(back.tokens, seq.tokens)
    again = record_sequence(target, LMDrafter(draft, VOCAB), PROMPT, 10, TOP_K, MAX_DEPTH, sampling=SAMPLING, seed=42)
    assert np.array_equal(again.output, seq.output)
    greedy = record_sequence(target, LMDrafter(draft, VOCAB), PROMPT, 10, TOP_K, MAX_DEPTH)
    assert greedy.sampling.greedy and "seed" not in greedy.meta
    with pytest.raises(LTDError, match="seed"):
        record_sequence(target, LMDrafter(draft, VOCAB), PROMPT, 10, TOP_K, MAX_DEPTH, sampling=SAMPLING)


def test_samples_share_a_split_and_foreign_settings_are_refused(tiny_target, tiny_draft, tmp_path):
    """N continuations per prompt land in one split (no leak between train and test); a folder is one
    setting: mixing is refused unless asked, and recording another setting into it touches nothing."""
    pair = tiny_lm_pair(tiny_target, tiny_draft)
    prompts = [{"id": i, "category": "c", "text": str(i)} for i in range(5)]
    encode = lambda text: [int(text) + 1, 9, 4]  # noqa: E731
    out = tmp_path / "t07"
    summary = record_prompts(pair, prompts, out, encode, 6, 2, 2, progress=False,
                             sampling=Sampling(0.7), samples=2, seed=3)
    assert summary["recorded"] == 10
    assert {p.name for p in out.glob("seq_00003*.npz")} == {"seq_00003.npz", "seq_00003_s01.npz"}
    val = load_traces(out, "val")
    assert [s.meta["prompt_id"] for s in val] == [3, 3] and val[0].meta["seed"] != val[1].meta["seed"]
    assert record_prompts(pair, prompts, out, encode, 6, 2, 2, progress=False, sampling=Sampling(0.7),
                          samples=2, seed=3)["skipped"] == 10  # resume
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LTDError, match="record into another --out"):
        record_prompts(pair, prompts, out, encode, 6, 2, 2, progress=False, sampling=Sampling(1.0), samples=2, seed=3)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    greedy = record_sequence(pair.target.model, pair.drafter, [1, 9, 4], 6, 2, 2)
    save_sequence(sequence_path(out, 7), greedy)
    with pytest.raises(LTDError, match="mix sampling settings"):
        load_traces(out)
    assert len(load_traces(out, mix_sampling=True)) == 11


@pytest.mark.parametrize("argv,message", [
    (["--temperature", "-1"], "--temperature"), (["--temperature", "0.7", "--top-p", "0"], "--top-p"),
    (["--temperature", "0.7", "--samples", "0"], "--samples"), (["--samples", "3"], "--temperature above 0"),
    (["--temperature", "0.7", "--seed", "-2"], "--seed"),
])
def test_bad_sampling_options_fail_in_one_line(tmp_path, capsys, argv, message):
    rc = main(["trace", "--draft", str(tmp_path / "none"), "--prompts", str(tmp_path / "none.txt"),
               "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_greedy_ignores_top_p():
    """At T = 0 top-p changes nothing: every greedy setting is one setting (headers, specs, markers)."""
    from ltd_sim.trace import Sampling

    assert Sampling(0.0, 0.9) == Sampling() and Sampling(0.0, 0.9).top_p == 1.0
    assert Sampling(0.7, 0.9) != Sampling(0.7)
