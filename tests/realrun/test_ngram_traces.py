"""Hybrid and n-gram-alone traces against the real decoder (issue 15).

Traces are recorded with `NgramDrafter`s (n-gram branches joined to an lm draft or a random EAGLE-3
head, and the n-gram source alone) on prompts that repeat themselves, so branches exist, merge with
head nodes, and some positions have no match at all (an n-gram-alone tree of depth 0). The real decoder
then runs with static (D, V) and with a random per-cycle schedule (D = 0 included), and at every cycle:
its tree is the recorded tree cut at D, its accepted length is the trace's (`accepted_length_on_trace`,
the simulator's tables and `simulate` replaying the same schedule), and the observations it hands its
controller (before drafting, with the cycle's n-gram signals, and after each step) are the simulator's
`feats0` / `feats` rows. Saved ngram_v1 policies drive the decoder exactly as simulated. A calibration
re-scores recorded traces exactly as recording with it would have; `ltd sim calibrate` writes one.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import assert_greedy_equal, hf_greedy
from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.errors import LTDError
from ltd_sim.features import observe, pre_draft_observation
from ltd_sim.ngram_calibration import NgramCalibration, rescore
from ltd_sim.sim import SimTables, cycle_outcome, oracle, simulate
from ltd_sim.synthetic import synthetic_sequence
from ltd_sim.trace import HYBRID, MANIFEST, NGRAM, load_sequence, save_sequence, sequence_path, write_manifest
from ltd_sim.tree import SOURCE_HEAD, SOURCE_NGRAM, SourcedTree, accepted_length_on_trace
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import Eagle3Drafter, LMDrafter, NgramDrafter
from realrun.eagle3 import random_head
from realrun.ngram import NgramConfig, NgramProposer, make_proposer, read_inputs
from realrun.record import record_prompts, record_sequence

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

TOP_K, MAX_DEPTH, NEW = 3, 4, 24
GRID = defaults.SIZE_GRID
KINDS = ("ngram", "lm", "eagle3")  # the n-gram source alone, joined to an lm draft, to an EAGLE-3 head
COST = AnalyticCostModel()


def repetitive_prompt(seed: int) -> torch.Tensor:
    piece = torch.randint(0, 256, (6,), generator=torch.Generator().manual_seed(seed))
    return torch.cat((piece, piece, piece[:4]))


def make_drafter(kind: str, target, draft, proposer: NgramProposer | None = None) -> NgramDrafter:
    proposer = proposer or NgramProposer(NgramConfig())
    if kind == "ngram":
        return NgramDrafter(proposer, None, vocab_size=256)
    model = LMDrafter(draft, 256) if kind == "lm" else \
        Eagle3Drafter(random_head(target, draft_vocab_size=128, seed=3), 256)
    return NgramDrafter(proposer, model)


PROMPT_SEED = {"ngram": 11, "lm": 5, "eagle3": 3}


def record(kind, target, draft, proposer=None):
    # Recorded beyond the replay's length, so every replayed cycle's continuation is known.
    return record_sequence(target, make_drafter(kind, target, draft, proposer), repetitive_prompt(PROMPT_SEED[kind]),
                           max_new_tokens=NEW + MAX_DEPTH + 1, top_k=TOP_K, max_depth=MAX_DEPTH)


@pytest.fixture(scope="module")
def recorded(tiny_target, tiny_draft, tmp_path_factory):
    """kind -> (the recorded sequence as loaded back from its file, the sequence before saving)."""
    root = tmp_path_factory.mktemp("ngram_traces")
    out = {}
    for kind in KINDS:
        seq = record(kind, tiny_target, tiny_draft)
        save_sequence(sequence_path(root / kind, 0), seq)
        out[kind] = (load_sequence(sequence_path(root / kind, 0)), seq)
    return out


@pytest.fixture(scope="module")
def tables(recorded):
    return {kind: SimTables.build([recorded[kind][0]], COST) for kind in KINDS}


def test_recorded_traces_round_trip_and_hold_merged_branches(recorded, tiny_target):
    for kind in KINDS:
        seq, before = recorded[kind]
        assert seq.draft_sources == (NGRAM if kind == "ngram" else HYBRID), kind
        assert seq.num_positions == NEW + MAX_DEPTH and len(seq.output) == NEW + MAX_DEPTH + 1
        prompt = repetitive_prompt(PROMPT_SEED[kind])
        assert_greedy_equal(tiny_target, prompt, seq.output.tolist(), hf_greedy(tiny_target, prompt, NEW + MAX_DEPTH + 1))
        for p in range(seq.num_positions):
            a, b = before.tree(p), seq.tree(p)
            assert isinstance(b, SourcedTree) and a.ngram == b.ngram, (kind, p)
            for name in ("tokens", "parents", "scores", "steps", "sources", "head_scores", "ngram_share"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), (kind, p, name)
    depths = [recorded["ngram"][0].tree(p).depth for p in range(NEW)]
    assert 0 in depths and max(depths) == MAX_DEPTH, "n-gram alone: positions without a match and deep branches"
    for kind in ("lm", "eagle3"):
        seq = recorded[kind][0]
        assert (seq.sources[seq.offsets[0]:seq.offsets[NEW]] == SOURCE_HEAD | SOURCE_NGRAM).any(), kind
        assert (seq.sources == SOURCE_NGRAM).any(), kind


# ----------------------------------------------------------------------------------------------
# Replay: the decoder, cycle by cycle, against the trace
# ----------------------------------------------------------------------------------------------

def check_cycle(seq, tables, prompt_len, tree, record, size):
    """The live cycle against the trace: its tree is the recorded one cut at its depth, its accepted
    length the trace's and the tables'. Returns its position."""
    p = record.context_len - prompt_len
    assert seq.context_lens[p] == record.context_len
    recorded = seq.tree(p).truncated(record.depth)
    np.testing.assert_array_equal(recorded.tokens, tree.tokens)
    np.testing.assert_array_equal(recorded.parents, tree.parents)
    np.testing.assert_allclose(recorded.scores, tree.scores, atol=1e-4)
    if record.depth >= 1:  # drafted: a sourced tree with the cycle's signals
        np.testing.assert_array_equal(recorded.sources, tree.sources)
        assert (recorded.ngram.match_len, recorded.ngram.matches) == (tree.ngram.match_len, tree.ngram.matches)
    assert accepted_length_on_trace(seq.tree(p), record.depth, size, seq.continuation(p)) == record.accepted
    g = GRID.index(size)
    a, _ = cycle_outcome(tables, np.array([p]), np.array([record.depth]), np.array([g]))
    assert a[0] == record.accepted, f"position {p}, D={record.depth}, V={size}"
    if record.depth >= 1:
        assert tables.vsize[p, record.depth - 1, g] == record.size
    return p


def replay_in_simulator(tables, schedule: dict[int, tuple[int, int]]) -> list[tuple[int, int, int]]:
    """`simulate` with the decoder's own choices by position: (position, depth, accepted) per cycle."""
    trail: list[tuple[int, int, int]] = []
    pos = [0]

    def choose(p, s):
        d, g = schedule.get(int(p[0]), (0, 0))
        return np.array([d]), np.array([g])

    def feedback(s, d, a):
        trail.append((pos[0], int(d[0]), int(a[0])))
        pos[0] += int(a[0]) + 1

    simulate(tables, choose, feedback)
    return trail


@pytest.mark.parametrize("kind", KINDS)
def test_static_schedules_replay_exactly(recorded, tables, tiny_target, tiny_draft, kind):
    seq, t = recorded[kind][0], tables[kind]
    prompt = repetitive_prompt(PROMPT_SEED[kind])
    no_match = 0  # cycles asked to draft at a position where the n-gram source found nothing
    for depth, size in [(0, 0), (1, 1), (2, 4), (MAX_DEPTH, 12), (3, 60)]:
        live = []

        def on_cycle(tree, rec):
            nonlocal no_match
            p = check_cycle(seq, t, len(prompt), tree, rec, size)
            assert rec.depth == min(depth, int(t.dmax[p]))
            no_match += int(depth >= 1 and t.dmax[p] == 0)
            live.append((p, rec.depth, rec.accepted))

        result = generate(tiny_target, prompt, make_drafter(kind, tiny_target, tiny_draft),
                          DecodeConfig(max_new_tokens=NEW, top_k=TOP_K, max_depth=MAX_DEPTH),
                          StaticDepth(depth), StaticSize(size), on_cycle=on_cycle)
        assert result.token_ids == seq.output[:NEW].tolist()
        g = GRID.index(size)
        simulated = replay_in_simulator(t, {p: (depth, g) for p in range(seq.num_positions)})
        assert simulated[:len(live)] == live, (depth, size)
        if depth >= 1 and size >= 4:
            assert sum(a for _, _, a in live) > 0, "n-gram branches are accepted on a repetitive text"
    if kind == "ngram":  # positions without a match were plain decoding steps, live and simulated
        assert no_match > 0


class RandomControl:
    """A random schedule (D = 0 included) that records what the decoder lets it observe, through the one
    feature function, as a policy of feature set ngram_v1 would."""

    def __init__(self, rng, spec):
        self.rng, self.spec = rng, spec
        self.target = self.size = None
        self.seen: dict[tuple[int, int], np.ndarray] = {}
        self.signals = {}

    def should_draft(self, context_len, ngram=None):
        assert ngram is not None, "a decoder with an n-gram source passes the cycle's signals"
        self.signals[context_len] = ngram
        self.seen[(context_len, 0)] = pre_draft_observation(context_len, self.spec, ngram)
        self.target = int(self.rng.integers(0, MAX_DEPTH + 1))
        return self.target >= 1

    def should_continue(self, tree, context_len):
        self.seen[(context_len, tree.depth)] = observe(tree, context_len, self.spec)
        return tree.depth < self.target

    def choose_size(self, tree, context_len):
        self.size = int(self.rng.choice(GRID))
        return self.size


@pytest.mark.parametrize("kind,seed", [("ngram", 0), ("ngram", 1), ("lm", 2), ("eagle3", 3)])
def test_random_schedule_replays_and_live_features_equal_the_tables(recorded, tables, tiny_target, tiny_draft,
                                                                    kind, seed):
    seq, t = recorded[kind][0], tables[kind]
    assert t.spec.name == "ngram_v1"
    prompt = repetitive_prompt(PROMPT_SEED[kind])
    ctrl = RandomControl(np.random.default_rng(seed), t.spec)
    schedule, live, observed = {}, [], 0

    def on_cycle(tree, rec):
        nonlocal observed
        size = ctrl.size if ctrl.target >= 1 else 0  # no draft: the size controller is not asked
        p = check_cycle(seq, t, len(prompt), tree, rec, size)
        schedule[p] = (ctrl.target, GRID.index(size))
        live.append((p, rec.depth, rec.accepted))
        assert rec.depth == min(ctrl.target, int(t.dmax[p]))
        assert ctrl.signals[rec.context_len] == seq.signals(p)
        # the pre-draft observation (the "no draft" decision, with the cycle's n-gram signals) ...
        np.testing.assert_array_equal(ctrl.seen[(rec.context_len, 0)], t.feats0[p])
        # ... and those after each step the controller was asked at, and the final tree's
        steps = {d: ctrl.seen[(rec.context_len, d)] for d in range(1, rec.depth)}
        if rec.depth >= 1:
            steps[rec.depth] = observe(tree, rec.context_len, t.spec)
        for d, obs in steps.items():
            np.testing.assert_allclose(t.feats[p, d - 1], obs, atol=1e-5)
            observed += 1

    result = generate(tiny_target, prompt, make_drafter(kind, tiny_target, tiny_draft),
                      DecodeConfig(max_new_tokens=NEW, top_k=TOP_K, max_depth=MAX_DEPTH), ctrl, ctrl,
                      on_cycle=on_cycle)
    assert result.token_ids == seq.output[:NEW].tolist()
    assert replay_in_simulator(t, schedule)[:len(live)] == live
    assert len(live) >= 5 and observed >= 5
    assert any(d == 0 for _, d, _ in live) and any(d >= 2 for _, d, _ in live)
    if kind == "ngram":
        assert any(t.dmax[p] == 0 and ctrl_target >= 1 for p, (ctrl_target, _) in schedule.items()), \
            "a cycle asked to draft at a position without a match (tree depth 0)"


@pytest.fixture(scope="module")
def ngram_policies(tables, tmp_path_factory):
    """ngram_v1 depth and size policies saved by ltd_sim from tables of the recorded hybrid traces (a few
    PPO updates: quick, not good; what matters is that they decide on the n-gram signals)."""
    from stable_baselines3 import PPO

    from ltd_sim.envs import DepthEnv, SizeEnv
    from ltd_sim.policy import save_policies

    t = tables["lm"]
    models = [PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu", verbose=0).learn(64)
              for env in (DepthEnv(t, partner=4), SizeEnv(t))]
    return save_policies(tmp_path_factory.mktemp("ngram_policy") / "policies", *models, t.spec)


@pytest.mark.parametrize("kind", ["ngram", "lm"])
def test_ngram_v1_policies_drive_the_decoder_as_simulated(recorded, tables, ngram_policies, tiny_target,
                                                          tiny_draft, kind):
    from ltd_sim.policy import PolicyController, decision_tables

    seq, t = recorded[kind][0], tables[kind]
    ctrl = PolicyController(ngram_policies)
    assert ctrl.spec.name == "ngram_v1" and not ctrl.never_drafts(10_000)
    depth_at, size_at = decision_tables(t, ctrl.depth_model, ctrl.size_model)
    prompt = repetitive_prompt(PROMPT_SEED[kind])
    live = []

    def on_cycle(tree, rec):
        p = rec.context_len - len(prompt)
        d = int(np.clip(depth_at[p], 0, t.dmax[p]))
        assert rec.depth == d, f"position {p}: the policy drafted {rec.depth} steps live, {d} in simulation"
        if rec.depth >= 1:
            assert rec.size == t.vsize[p, d - 1, size_at[p, d - 1]]
        live.append((p, rec.depth, rec.accepted))

    result = generate(tiny_target, prompt, make_drafter(kind, tiny_target, tiny_draft),
                      DecodeConfig(max_new_tokens=NEW, top_k=TOP_K, max_depth=MAX_DEPTH), ctrl, ctrl,
                      on_cycle=on_cycle)
    assert result.token_ids == seq.output[:NEW].tolist()
    assert len({d for _, d, _ in live}) >= 2, "the policies draft at some cycles and not at others"
    schedule = {p: (int(depth_at[p]), int(size_at[p, max(int(depth_at[p]), 1) - 1])) for p in range(t.num_positions)}
    assert replay_in_simulator(t, schedule)[:len(live)] == live


# ----------------------------------------------------------------------------------------------
# Calibration on recorded traces
# ----------------------------------------------------------------------------------------------

def steep() -> NgramCalibration:
    prior = NgramCalibration.prior()
    return NgramCalibration(prior.log_rate * np.linspace(3.0, 6.0, prior.log_rate.shape[1])[None, :])


def test_rescore_with_the_recording_calibration_is_bit_exact(recorded):
    prior = NgramCalibration.prior()
    for kind in KINDS:
        seq = recorded[kind][0]
        for p in range(seq.num_positions):
            tree = seq.tree(p)
            again = rescore(tree, prior)
            assert again.scores.tobytes() == tree.scores.tobytes(), (kind, p)
            assert again.ngram == tree.ngram


@pytest.mark.parametrize("kind", ["ngram", "lm"])
def test_rescore_with_another_calibration_equals_recording_with_it(recorded, tiny_target, tiny_draft, tmp_path,
                                                                   kind):
    steep().save(tmp_path / "cal.json")
    inputs = read_inputs(NgramConfig(calibration=str(tmp_path / "cal.json")))
    seq = recorded[kind][0]
    other = record(kind, tiny_target, tiny_draft, make_proposer(inputs, 256))
    assert np.array_equal(other.output, seq.output)
    cal = NgramCalibration.load(tmp_path / "cal.json")
    changed = 0
    for p in range(seq.num_positions):
        moved, want = rescore(seq.tree(p), cal), other.tree(p)
        for name in ("tokens", "parents", "steps", "sources"):
            assert np.array_equal(getattr(moved, name), getattr(want, name)), (p, name)
        np.testing.assert_array_equal(moved.scores, want.scores)
        assert moved.ngram == want.ngram
        changed += int(not np.array_equal(seq.tree(p).scores, want.scores))
    assert changed > 0
    rescored, direct = SimTables.build([seq], COST, calibration=cal), SimTables.build([other], COST)
    for name in ("acc", "vsize", "cost", "feats0", "dmax"):
        np.testing.assert_array_equal(getattr(rescored, name), getattr(direct, name), err_msg=name)
    np.testing.assert_allclose(rescored.feats, direct.feats, atol=1e-6)


def _cli(argv, capsys):
    from realrun.cli import main

    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_sim_calibrate_writes_a_calibration_that_loads_and_is_used(recorded, tmp_path, capsys):
    from realrun.simulate import run_sim_eval

    folder = tmp_path / "traces"
    save_sequence(sequence_path(folder, 0), recorded["ngram"][0])
    rc, out, err = _cli(["sim", "calibrate", "--traces", str(folder), "--out", str(tmp_path / "cal.json"),
                         "--json"], capsys)
    assert rc == 0, err
    summary = json.loads(out)
    cal = NgramCalibration.load(tmp_path / "cal.json")
    assert cal.fitted and summary["digest"] == cal.digest() and sum(map(sum, summary["reached"])) > 0
    assert cal.log_rate.shape == (summary["rows"], MAX_DEPTH)
    assert summary["rows"] == max(int(recorded["ngram"][0].ngram_match.max()), 1)
    # `ltd sim eval --ngram-calibration` simulates the re-scored traces
    (tmp_path / "cost.json").write_text(json.dumps(COST.to_json()))
    report = run_sim_eval(str(folder), str(tmp_path / "cost.json"), calibration=str(tmp_path / "cal.json"))
    best, _, _ = oracle(SimTables.build([recorded["ngram"][0]], COST, calibration=cal))
    assert report["methods"]["oracle"]["tokens_per_s"] == pytest.approx(best.tokens_per_s)


def test_sim_calibrate_refuses_head_traces_in_one_line(tmp_path, capsys):
    folder = tmp_path / "head"
    save_sequence(sequence_path(folder, 0), synthetic_sequence(np.random.default_rng(0), length=12, k=TOP_K,
                                                               depth=MAX_DEPTH))
    rc, _, err = _cli(["sim", "calibrate", "--traces", str(folder), "--out", str(tmp_path / "cal.json")], capsys)
    assert rc == 2 and "draft model alone" in err and err.count("\n") == 1, err
    assert not (tmp_path / "cal.json").exists()


# ----------------------------------------------------------------------------------------------
# Trace folders: one kind of draft source and one n-gram setting per folder
# ----------------------------------------------------------------------------------------------

def _pair(target, drafter):
    return SimpleNamespace(target=SimpleNamespace(model=target), drafter=drafter, eos_ids=frozenset(),
                           context_limit=None)


PROMPTS = [{"id": "p0", "category": "copy", "text": "abcabcabcab"}]


def _encode(text):
    return torch.tensor(list(text.encode()))


def _snapshot(folder):
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_trace_folders_refuse_other_draft_sources(tiny_target, tiny_draft, tmp_path):
    args = dict(max_new_tokens=6, top_k=TOP_K, max_depth=MAX_DEPTH, progress=False)
    head = tmp_path / "head"
    record_prompts(_pair(tiny_target, LMDrafter(tiny_draft, 256)), PROMPTS, head, _encode, **args)
    assert json.loads((head / MANIFEST).read_text())["draft_sources"] == "head"
    before = _snapshot(head)
    for kind in ("ngram", "lm"):
        with pytest.raises(LTDError, match="draft_sources = 'head'") as err:
            record_prompts(_pair(tiny_target, make_drafter(kind, tiny_target, tiny_draft)), PROMPTS, head, _encode,
                           **args)
        assert "\n" not in str(err.value)
    assert _snapshot(head) == before, "nothing written"
    # a folder of the toolkit before n-gram sources (its manifest names none) holds head traces
    old = tmp_path / "old"
    write_manifest(old, {"top_k": TOP_K, "max_depth": MAX_DEPTH})
    with pytest.raises(LTDError, match="traces of a draft model alone"):
        record_prompts(_pair(tiny_target, make_drafter("ngram", tiny_target, tiny_draft)), PROMPTS, old, _encode,
                       **args)
    # an n-gram folder refuses another calibration (other scores, other traces)
    ngram = tmp_path / "ngram"
    record_prompts(_pair(tiny_target, make_drafter("ngram", tiny_target, tiny_draft)), PROMPTS, ngram, _encode, **args)
    before = _snapshot(ngram)
    with pytest.raises(LTDError, match="ngram = "):
        record_prompts(_pair(tiny_target, make_drafter("ngram", tiny_target, tiny_draft,
                                                        NgramProposer(NgramConfig(), steep()))),
                       PROMPTS, ngram, _encode, **args)
    assert _snapshot(ngram) == before
