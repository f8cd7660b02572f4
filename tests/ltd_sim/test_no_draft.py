"""The "no draft" action (D = 0): simulator, oracle, static grid, PPO envs and policies, and the real
decoder (a no-draft cycle is a plain decoding step; the drafter catches up at its next drafted cycle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_greedy_equal, hf_greedy
from ltd_sim.baselines import evaluate
from ltd_sim.control import StaticDepth, StaticSize, TimedControl, wants_draft
from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.features import FeatureSpec, observe, pre_draft_observation, pre_draft_tree
from ltd_sim.policy import PolicyController, decision_tables, depth_table, load_policies, save_policies
from ltd_sim.sim import NO_DRAFT, SimTables, autoregressive, oracle, simulate_tables, static_grid
from ltd_sim.synthetic import synthetic_sequence

pytestmark = pytest.mark.usefixtures("one_thread")

# drafting priced far above a plain decoding step: a device where speculation cannot pay
RUINOUS = AnalyticCostModel(draft_first=0.2, draft_later=0.2)


@pytest.fixture(scope="module")
def traces():
    rng = np.random.default_rng(3)
    return [synthetic_sequence(rng, length=int(rng.integers(25, 45))) for _ in range(8)]


def test_grid_and_oracle_hold_no_draft(traces):
    t = SimTables.build(traces, AnalyticCostModel())
    grid = static_grid(t)
    ar = autoregressive(t)
    assert grid[NO_DRAFT].tokens_per_s == pytest.approx(ar.tokens_per_s)  # a plain decoding step each
    assert grid[NO_DRAFT].tau == pytest.approx(1.0)
    orc, _, _ = oracle(t)
    assert orc.tokens_per_s >= max(r.tokens_per_s for r in grid.values()) - 1e-9


def test_oracle_and_grid_fall_back_where_drafting_never_pays(traces):
    t = SimTables.build(traces, RUINOUS)
    orc, best_d, _ = oracle(t)
    ar = autoregressive(t)
    assert orc.tokens_per_s == pytest.approx(ar.tokens_per_s) and not best_d.any()
    table = evaluate(t)
    best = table["methods"]["best_static"]
    assert (best["depth"], best["size"]) == NO_DRAFT
    assert best["speedup_vs_ar"] == pytest.approx(1.0)


def test_pre_draft_observation_is_the_one_feature_function():
    spec = FeatureSpec()
    obs = pre_draft_observation(300, spec)
    assert np.array_equal(obs, observe(pre_draft_tree(), 300, spec))
    assert obs.shape == (spec.dim,) and obs[spec.top_k + len(spec.ranks)] == 0  # depth 0
    assert not obs[: spec.top_k + len(spec.ranks)].any()  # nothing drafted yet
    assert FeatureSpec.from_json(FeatureSpec(name="paper_v1").to_json()).asks_before_draft is False
    assert spec.asks_before_draft


def test_depth_env_starts_each_cycle_before_drafting(traces):
    from ltd_sim.envs import SimVecEnv

    t = SimTables.build(traces, RUINOUS)
    env = SimVecEnv("depth", t, 3, n=4, seed=0)
    obs = env.reset()
    assert (env.core.depth == 0).all() and np.allclose(obs, t.feats0[env.core.pos])
    pos = env.core.pos.copy()
    _, reward, _, _ = env.step(np.ones(4, np.int64))  # STOP before drafting: one token, a plain step
    assert (env.core.pos == pos + 1).all() and (env.core.depth == 0).all()
    assert np.allclose(reward, 1 - env.core.rate * t.ar_cost[pos], atol=1e-5)


@pytest.fixture(scope="module")
def ruinous_policies(traces, tmp_path_factory):
    from ltd_sim.train import PretrainConfig, pretrain

    t = SimTables.build(traces, RUINOUS)
    cfg = PretrainConfig(n_envs=16, n_steps=64, batch_size=256, stage1_steps=4096, stage2_steps=2048, rounds=1)
    out = tmp_path_factory.mktemp("ruinous")
    pretrain(t.subset(range(6)), t.subset([6, 7]), out, cfg, log=lambda m: None)
    return t, out / "policies"


def test_policies_learn_not_to_draft_where_it_never_pays(ruinous_policies):
    t, path = ruinous_policies
    ctrl = PolicyController(path)
    depth_at, size_at = decision_tables(t, ctrl.depth_model, ctrl.size_model, ctrl.spec.asks_before_draft)
    ltd = simulate_tables(t, depth_at, size_at)
    ar = autoregressive(t)
    assert ltd.tokens_per_s >= 0.98 * ar.tokens_per_s  # at least plain decoding (a stray draft or two)
    assert (depth_at == 0).mean() > 0.9
    assert not ctrl.should_draft(int(t.context[0]))  # the real decoder's controller agrees


def test_policies_of_the_old_spec_load_and_always_draft(ruinous_policies, tmp_path):
    t, path = ruinous_policies
    new = load_policies(path)
    old_spec = FeatureSpec(**{**new.spec.__dict__, "name": "paper_v1"})
    save_policies(tmp_path / "v1", new.depth_model, new.size_model, old_spec)
    ctrl = PolicyController(tmp_path / "v1")
    assert ctrl.spec.name == "paper_v1" and ctrl.should_draft(int(t.context[0]))
    assert (depth_table(t, ctrl.depth_model, ctrl.spec.asks_before_draft) >= 1).all()


class _Alternate:
    """Drafts (statically, to `depth`) every other cycle only: exercises the drafter's catch-up."""

    def __init__(self, depth: int):
        self.depth, self.asked = depth, 0

    def should_draft(self, context_len: int) -> bool:
        self.asked += 1
        return self.asked % 2 == 0

    def should_continue(self, tree, context_len: int) -> bool:
        return tree.depth < self.depth


class _Counting:
    """A drafter wrapper that counts draft forwards (expand calls)."""

    def __init__(self, drafter):
        self.inner, self.expands = drafter, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def expand(self, *args):
        self.expands += 1
        return self.inner.expand(*args)


def test_real_decoder_no_draft_is_plain_decoding_and_lossless(tiny_target, tiny_draft):
    from realrun.decoder import DecodeConfig, generate
    from realrun.drafters import LMDrafter

    prompt = torch.arange(5, 17)
    reference = hf_greedy(tiny_target, prompt, 30)
    cfg = DecodeConfig(max_new_tokens=30, top_k=3, max_depth=4)
    never = _Counting(LMDrafter(tiny_draft, 256))
    res = generate(tiny_target, prompt, never, cfg, StaticDepth(0), StaticSize(8))
    assert res.token_ids == reference and never.expands == 0
    assert all(c.depth == 0 and c.size == 0 and c.draft_s == 0 for c in res.cycles)
    alt = _Counting(LMDrafter(tiny_draft, 256))
    ctrl = TimedControl(_Alternate(3), StaticSize(6))
    res = generate(tiny_target, prompt, alt, cfg, ctrl, ctrl)
    assert_greedy_equal(tiny_target, prompt, res.token_ids, reference)
    depths = [c.depth for c in res.cycles]
    assert 0 in depths and 3 in depths and alt.expands == 3 * depths.count(3)
    assert wants_draft(object(), 0)  # a controller from before D = 0 always drafts


def test_real_decoder_no_draft_with_an_eagle3_head(tiny_target):
    from realrun.decoder import DecodeConfig, generate
    from realrun.drafters import Eagle3Drafter
    from realrun.eagle3 import random_head

    head = random_head(tiny_target, draft_vocab_size=64)
    prompt = torch.arange(7, 19)
    reference = hf_greedy(tiny_target, prompt, 24)
    ctrl = _Alternate(2)
    res = generate(tiny_target, prompt, Eagle3Drafter(head, 256), DecodeConfig(max_new_tokens=24, top_k=3,
                   max_depth=3), ctrl, StaticSize(4))
    assert_greedy_equal(tiny_target, prompt, res.token_ids, reference)
    assert {c.depth for c in res.cycles} == {0, 2}
