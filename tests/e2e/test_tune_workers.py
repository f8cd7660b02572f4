"""`ltd tune grid` from two worker processes on one SQLite study (how several machines share a study)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import synthetic_run
from realrun.tune import GRID_FORMAT

K, DEPTH = 3, 4
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_run(tmp_path_factory.mktemp("tune"), K, DEPTH)


def test_two_workers_share_one_sqlite_study(data, tmp_path):
    import optuna

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "realrun.cli", "tune", "grid", "--traces", str(data / "traces"),
           "--cost", str(data / "cost.json"), "--out", str(out), "--trials", "6", "--json"]
    env = dict(os.environ)
    workers = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outs = [w.communicate(timeout=120) for w in workers]
    for w, (so, se) in zip(workers, outs):
        assert w.returncode == 0, se
    study = optuna.load_study(study_name="ltd-grid", storage=f"sqlite:///{out / 'optuna.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 12
    assert len({t.user_attrs["worker"] for t in done}) == 2, "trials from both workers"
    grid = json.loads((out / "grid.json").read_text())
    assert grid["format"] == GRID_FORMAT and grid["source"] == "simulated" and grid["top_k"] == K
    assert 0 <= grid["depth"] <= DEPTH and grid["size"] in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 60)
    # the best of the trials, or no draft at all (D = 0) when plain decoding simulates faster
    no_draft = [c["simulated_tokens_per_s"] for c in grid["candidates"] if c["depth"] == 0]
    best = max([t.value for t in done] + no_draft)
    assert grid["simulated_tokens_per_s"] == pytest.approx(best)
    assert grid["depth"] > 0 or grid["size"] == 0
