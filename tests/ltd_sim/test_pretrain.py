"""Pretraining end to end on tiny traces: `ltd trace`-style recording, `ltd pretrain` (resumable),
`ltd sim eval --policy`, and the saved policies driving the real decoder exactly as simulated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.policy import PolicyController, decision_tables
from ltd_sim.sim import SimTables, simulate
from ltd_sim.trace import load_traces, save_sequence, sequence_path
from realrun.cli import main
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import LMDrafter
from realrun.record import record_sequence
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

TOP_K, MAX_DEPTH, NEW = 3, 4, 14


def prompt(i):
    return torch.randint(0, 256, (8,), generator=torch.Generator().manual_seed(500 + i))


@pytest.fixture(scope="module")
def run(tiny_target, tiny_draft, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    for i in range(5):  # splits by order: 0-2 train, 3 val, 4 test
        seq = record_sequence(tiny_target, LMDrafter(tiny_draft, 256), prompt(i),
                              max_new_tokens=NEW + MAX_DEPTH + 1, top_k=TOP_K, max_depth=MAX_DEPTH)
        save_sequence(sequence_path(root / "traces", i), seq)
    (root / "cost.json").write_text(json.dumps(AnalyticCostModel().to_json()))
    args = ["pretrain", "--cost", str(root / "cost.json"), "--traces", str(root / "traces"),
            "--out", str(root / "run"), "--stage1-steps", "4096", "--stage2-steps", "2048", "--rounds", "1"]
    assert main(args + ["--json"]) == 0
    return root, args


def test_pretrain_writes_policies_and_resumes(run, capsys):
    root, args = run
    capsys.readouterr()
    spec = json.loads((root / "run" / "policies" / "spec.json").read_text())
    assert spec["features"]["name"] == "paper_v2" and spec["size_grid"][0] == 0
    assert spec["depth_actions"] == ["CONTINUE", "STOP"] and spec["top_k"] == TOP_K
    state = json.loads((root / "run" / "state.json").read_text())
    assert [p["phase"] for p in state["phases"]] == ["stage1_size", "stage1_depth", "round1_depth", "round1_size"]
    assert any((root / "run" / "tb").iterdir()), "TensorBoard logs"
    assert main(args + ["--json"]) == 0  # everything done: resumes to nothing
    out = json.loads(capsys.readouterr().out)
    assert out["best_phase"] == state["best"]["phase"]


def test_sim_eval_with_policy(run, capsys):
    root, _ = run
    capsys.readouterr()
    assert main(["sim", "eval", "--cost", str(root / "cost.json"), "--traces", str(root / "traces"),
                 "--policy", str(root / "run" / "policies"), "--split", "test", "--json"]) == 0
    methods = json.loads(capsys.readouterr().out)["methods"]
    assert methods["ltd"]["tokens_per_s"] <= methods["oracle"]["tokens_per_s"] + 1e-9
    assert 0 < methods["ltd"]["oracle_ratio"] <= 1 + 1e-9


def test_policy_controller_in_real_decoder_matches_simulation(run, tiny_target, tiny_draft):
    root, _ = run
    ctrl = PolicyController(root / "run" / "policies")
    ctrl.check_compatible(TOP_K, MAX_DEPTH)
    test_seq = load_traces(root / "traces", "test")
    tables = SimTables.build(test_seq, AnalyticCostModel())
    depth_at, size_at = decision_tables(tables, ctrl.depth_model, ctrl.size_model)
    simulated = []

    def choose(p, s):
        d = np.clip(depth_at[p], 0, tables.dmax[p])  # 0: the policy's "no draft"
        return d, size_at[p, np.maximum(d, 1) - 1]

    simulate(tables, choose, lambda s, d, a: simulated.append((int(d[0]), int(a[0]))))
    result = generate(tiny_target, prompt(4), LMDrafter(tiny_draft, 256),
                      DecodeConfig(max_new_tokens=NEW, top_k=TOP_K, max_depth=MAX_DEPTH), ctrl, ctrl)
    real = [(c.depth, c.accepted) for c in result.cycles]
    assert result.token_ids == test_seq[0].output[:NEW].tolist()
    assert real == simulated[: len(real)]
