"""`ltd tune`: a PPO study on a journal file, the grid study confirmed on the real decoder (grid.json),
and bad options failing clearly. (Two worker processes sharing one study: tests/e2e/test_tune_workers.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from ltd_sim.errors import LTDError
from ltd_sim.policy import PolicyController
from helpers import synthetic_run, tiny_lm_pair
from realrun.cli import main
from realrun.measure import DECODE_RATE, END_TO_END_RATE
from realrun.tune import run_tune
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

K, DEPTH = 3, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_run(tmp_path_factory.mktemp("tune"), K, DEPTH)


@pytest.fixture(scope="module")
def pair(tiny_target, tiny_draft):
    return tiny_lm_pair(tiny_target, tiny_draft, "tiny")


def prompts():
    return [torch.randint(0, 256, (8,), generator=torch.Generator().manual_seed(700 + i)).tolist() for i in range(3)]


def test_grid_confirmed_on_real_decoder(data, pair, tmp_path):
    summary = run_tune("grid", data / "traces", data / "cost.json", tmp_path, trials=200, confirm=2, pair=pair,
                       prompts=prompts(), max_new_tokens=10, log=lambda m: None)
    assert summary["trials"] == DEPTH * 13  # the GridSampler covered the whole grid, then stopped
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert grid["source"] == "measured" and len(grid["candidates"]) == 2
    best = max(grid["candidates"], key=lambda c: c[f"measured_{DECODE_RATE}"])
    assert (grid["depth"], grid["size"]) == (best["depth"], best["size"])
    assert grid["selected_by"] == DECODE_RATE and "measured_tokens_per_s" not in grid  # the rates are named
    assert grid[f"measured_{DECODE_RATE}"] > 0 and grid[f"measured_{END_TO_END_RATE}"] > 0


def test_ppo_study_on_a_journal_file_with_confirmation(data, pair, tmp_path):
    journal = tmp_path / "shared" / "study.journal"
    summary = run_tune("ppo", data / "traces", data / "cost.json", tmp_path / "a", trials=2, storage=str(journal),
                       confirm=1, pair=pair, prompts=prompts(), trial_steps=64, max_new_tokens=10, seed=1,
                       log=lambda m: None)
    assert journal.is_file() and summary["trials"] == 2
    assert summary["confirmed"][0][f"measured_{DECODE_RATE}"] > 0
    ctrl = PolicyController(tmp_path / "a" / "policies")
    assert ctrl.spec.top_k == K and ctrl.info["tune"]["trial"] == summary["chosen_trial"]
    assert "context_norm" in summary["best_params"] and "learning_rate" in summary["best_params"]
    # A second worker (here: the same process, another run folder) adds to the same study.
    again = run_tune("ppo", data / "traces", data / "cost.json", tmp_path / "b", trials=1, storage=str(journal),
                     trial_steps=64, log=lambda m: None)
    assert again["trials"] == 3


def test_bad_options_fail_clearly(data, tmp_path, capsys):
    base = (data / "traces", data / "cost.json", tmp_path)
    with pytest.raises(LTDError, match="unknown study kind"):
        run_tune("nope", *base, trials=1)
    with pytest.raises(LTDError, match="--trials"):
        run_tune("grid", *base, trials=0)
    with pytest.raises(LTDError, match="--confirm needs"):
        run_tune("grid", *base, trials=1, confirm=2)
    with pytest.raises(LTDError, match="--storage"):
        run_tune("grid", *base, trials=1, storage="not-a-url")
    for argv, msg in ((["--traces", str(tmp_path / "none")], "no trace folder"),
                      (["--cost", str(tmp_path / "none.json")], "cannot read --cost"),
                      (["--confirm", "2"], "--confirm needs")):
        capsys.readouterr()
        assert main(["tune", "grid", "--traces", str(data / "traces"), "--cost", str(data / "cost.json"),
                     "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ltd: error:") and msg in err and "\n" not in err


def test_grid_refuses_another_sampling_setting(data, tmp_path):
    from ltd_sim.trace import Sampling

    with pytest.raises(LTDError, match="recorded at greedy"):
        run_tune("grid", data / "traces", data / "cost.json", tmp_path, trials=1, sampling=Sampling(0.7, 0.9))
    summary = run_tune("grid", data / "traces", data / "cost.json", tmp_path, trials=1, sampling=Sampling(),
                       log=lambda m: None)
    assert summary["sampling"] == [{"temperature": 0.0, "top_p": 1.0}]
