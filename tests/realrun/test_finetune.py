"""Fine-tuning on the real decoder with tiny models: the env observes exactly the trace features,
a few real PPO updates write a resumable checkpoint, an interrupted run resumes, bad options fail
clearly, and `ltd generate --policy` reports its policy cost."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.errors import LTDError
from ltd_sim.policy import PolicyController
from ltd_sim.sim import SimTables
from ltd_sim.trace import load_traces, save_sequence, sequence_path
from ltd_sim.train import PretrainConfig, pretrain
from helpers import tiny_lm_pair
from realrun.cli import main
from realrun.decoder import DecodeConfig
from realrun.finetune import FinetuneConfig, RealDecoderEnv, run_finetune
from realrun.loading import ModelPair
from realrun.measure import DECODE_RATE
from realrun.record import record_sequence
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

TOP_K, MAX_DEPTH, NEW = 3, 4, 12


def prompt(i):
    return torch.randint(0, 256, (8,), generator=torch.Generator().manual_seed(900 + i)).tolist()


@pytest.fixture(scope="module")
def pair(tiny_target, tiny_draft):
    return tiny_lm_pair(tiny_target, tiny_draft, "tiny")


@pytest.fixture(scope="module")
def run(pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    for i in range(5):
        seq = record_sequence(pair.target.model, pair.drafter, prompt(i), max_new_tokens=NEW + MAX_DEPTH + 1,
                              top_k=TOP_K, max_depth=MAX_DEPTH)
        save_sequence(sequence_path(root / "traces", i), seq)
    cost = AnalyticCostModel()
    train = SimTables.build(load_traces(root / "traces", "train"), cost)
    val = SimTables.build(load_traces(root / "traces", "val"), cost)
    cfg = PretrainConfig(n_envs=8, n_steps=32, batch_size=64, stage1_steps=512, stage2_steps=256, rounds=0)
    pretrain(train, val, root / "pre", cfg, log=lambda m: None)
    return root


SMALL = FinetuneConfig(n_steps=8, batch_size=8, n_epochs=1, max_new_tokens=NEW)


def test_env_observes_the_trace_features(pair, run):
    """The real-decoder env's live observations equal the simulator's precomputed ones (from the
    recorded trace) at the same position and depth; its rewards are the time reward of measured cycles."""
    seqs = load_traces(run / "traces")
    tables = SimTables.build(seqs, AnalyticCostModel())
    ctrl = PolicyController(run / "pre" / "policies")
    cfg = DecodeConfig(max_new_tokens=NEW, top_k=TOP_K, max_depth=MAX_DEPTH)
    rng = np.random.default_rng(0)
    for kind in ("depth", "size"):
        env = RealDecoderEnv(kind, pair, [prompt(0)], ctrl, tables.spec, cfg, rate=50.0, seed=0)
        obs, info = env.reset(seed=0)
        done, n, total = False, 0, 0.0
        while not done:
            p = info["context_len"] - len(prompt(0))
            # depth 0: the decision before drafting (the "no draft" action), observed as the simulator's feats0
            want = tables.feats0[p] if info["depth"] == 0 else tables.feats[p, info["depth"] - 1]
            np.testing.assert_allclose(want, obs, atol=1e-5)
            obs, reward, done, _, step_info = env.step(int(rng.integers(env.action_space.n)))
            info = step_info or info
            total += reward
            n += 1
        env.close()
        assert n >= 3
        committed = sum(c[4] for c in env.cycles)
        assert committed == NEW - 1  # every cycle's tokens, the prefill's first excluded
        expected = sum(c[4] - 50.0 * c[5] for c in env.cycles)
        assert total == pytest.approx(expected, rel=1e-5)
        assert env.episodes and env.episodes[0]["tokens"] == committed


def test_finetune_checkpoints_and_resumes(pair, run, tmp_path):
    prompts = [prompt(i) for i in range(5)]
    out = tmp_path / "ft"
    updates = []

    def interrupt(state):
        updates.append(state["steps"])
        if len(updates) == 3:  # the first update of the second (size) phase
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(pair, run / "pre" / "policies", out, prompts, steps=32, cfg=SMALL, progress=False,
                     log=lambda m: None, on_update=interrupt)
    state = json.loads((out / "state.json").read_text())
    assert state["steps"] == 24 and state["phase"] == 1 and state["phase_steps"] == 8
    assert [h["phase"] for h in state["history"]] == ["round1_depth"]
    assert (out / "checkpoints" / "current" / "size.zip").is_file()
    assert PolicyController(out / "policies").spec.top_k == TOP_K  # the best so far is a usable policy
    with pytest.raises(LTDError, match="already holds"):
        run_finetune(pair, run / "pre" / "policies", out, prompts, steps=32, cfg=SMALL, resume=False,
                     progress=False, log=lambda m: None)
    summary = run_finetune(pair, run / "pre" / "policies", out, prompts, steps=32, cfg=SMALL, progress=False,
                           log=lambda m: None, on_update=lambda s: updates.append(s["steps"]))
    assert updates == [8, 16, 24, 32] and summary["resumed"] and summary["steps"] == 32
    assert [h["phase"] for h in summary["history"]] == ["round1_depth", "round1_size"]
    assert summary["rate"] == DECODE_RATE  # validation selects on the decode rate (prefill excluded)
    assert summary[f"best_val_{DECODE_RATE}"] > 0 and summary[f"start_val_{DECODE_RATE}"] > 0
    assert all(h[f"best_in_same_pass_{DECODE_RATE}"] > 0 for h in summary["history"])  # paired validation
    assert state["rate"] > 0
    spec = json.loads((out / "policies" / "spec.json").read_text())
    assert spec["finetune"]["phase"] == summary["best_phase"]
    with pytest.raises(LTDError, match="other settings"):
        run_finetune(pair, run / "pre" / "policies", out, prompts, steps=32,
                     cfg=FinetuneConfig(n_steps=16, batch_size=8, max_new_tokens=NEW), progress=False)


def test_finetune_minutes_budget(pair, run, tmp_path):
    summary = run_finetune(pair, run / "pre" / "policies", tmp_path / "ft", [prompt(i) for i in range(3)],
                           minutes=0.02, cfg=SMALL, progress=False, log=lambda m: None)
    assert [h["phase"] for h in summary["history"]] == ["round1_depth", "round1_size"]
    assert summary["steps"] >= 2 * SMALL.n_steps  # at least one update per phase, however short the budget


def test_finetune_bad_options(pair, run, tmp_path, capsys):
    pol = run / "pre" / "policies"
    with pytest.raises(LTDError, match="one budget"):
        run_finetune(pair, pol, tmp_path / "a", [prompt(0), prompt(1)], steps=8, minutes=1.0)
    with pytest.raises(LTDError, match="at least 2 prompts"):
        run_finetune(pair, pol, tmp_path / "a", [prompt(0)], steps=8)
    with pytest.raises(LTDError, match="no policy"):
        run_finetune(pair, tmp_path / "nope", tmp_path / "a", [prompt(0), prompt(1)], steps=8)
    with pytest.raises(LTDError, match="draft"):
        run_finetune(ModelPair(pair.target, None, None, None, set(), 512), pol, tmp_path / "a",
                     [prompt(0), prompt(1)], steps=8)
    (tmp_path / "p.txt").write_text("a\nb\n")
    for argv, msg in ((["--policy", str(tmp_path / "nope")], "no policy"),
                      (["--policy", str(pol), "--n-steps", "1"], "n_steps"),
                      (["--policy", str(pol), "--steps", "0"], "--steps")):
        capsys.readouterr()
        assert main(["finetune", "--draft", str(tmp_path), "--prompts", str(tmp_path / "p.txt"),
                     "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ltd: error:") and msg in err and "\n" not in err


@pytest.mark.slow
def test_generate_with_policy_reports_its_cost(run, capsys):
    from realrun.models import prepare_default_target

    try:
        target = prepare_default_target(progress=False)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"default target unavailable: {exc}")
    argv = ["generate", "--target", str(target), "--draft", str(target), "--draft-kind", "lm", "--prompt", "Hi",
            "--max-new-tokens", "4", "--top-k", str(TOP_K), "--depth", str(MAX_DEPTH),
            "--policy", str(run / "pre" / "policies")]
    capsys.readouterr()
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy_calls"] >= len(out["cycles"]) and 0 < out["policy_s"] < out["wall_s"]
    assert main(argv[:-2] + ["--policy", str(run / "pre" / "policies"), "--depth", "8"]) == 2
    assert "max depth" in capsys.readouterr().err


def test_numpy_actor_equals_sb3_predict(run):
    """The controller's fast numpy forward takes SB3's deterministic action on every observation."""
    from ltd_sim.policy import NumpyActor, predict

    seqs = load_traces(run / "traces")
    tables = SimTables.build(seqs, AnalyticCostModel())
    feats = tables.feats.reshape(-1, tables.spec.dim)
    ctrl = PolicyController(run / "pre" / "policies")
    for model in (ctrl.depth_model, ctrl.size_model):
        actor = NumpyActor.from_model(model)
        assert actor is not None
        np.testing.assert_array_equal([actor.act(x) for x in feats], predict(model, feats))


def test_finetune_samples_at_its_setting(pair, run, tmp_path):
    """Fine-tuning at T > 0: the policies trained on greedy traces say so once, and the fine-tuned spec
    records both settings; a bad temperature fails in one line."""
    logs = []
    cfg = FinetuneConfig(n_steps=8, batch_size=8, n_epochs=1, max_new_tokens=NEW, temperature=1.0, top_p=0.9)
    run_finetune(pair, run / "pre" / "policies", tmp_path / "ft", [prompt(i) for i in range(3)], steps=16, cfg=cfg,
                 progress=False, log=logs.append)
    assert sum("trained on traces at greedy (T = 0)" in m for m in logs) == 1
    info = PolicyController(tmp_path / "ft" / "policies").info
    assert info["sampling"] == [{"temperature": 0.0, "top_p": 1.0}, {"temperature": 1.0, "top_p": 0.9}]
    with pytest.raises(LTDError, match="--temperature"):
        FinetuneConfig(temperature=-0.5).validate()
