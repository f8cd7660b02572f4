"""The pipeline's stage runner: a current stage is skipped, an interrupted one resumes from its work
folder, and one whose inputs changed since it finished starts afresh (its old work set aside, not
resumed as if done); a run folder keeps its sampling setting."""

from __future__ import annotations

import json

import pytest

from ltd_sim.errors import LTDError
from ltd_sim.trace import Sampling
from realrun.pipeline import BUDGETS, Pipeline, check_run_sampling


def _stage(p: Pipeline, config: dict, work, seen: list):
    def fn():
        work.mkdir(exist_ok=True)
        seen.append(sorted(f.name for f in work.iterdir()))  # what the stage found to resume from
        (work / f"part{config['v']}").write_text("x")
        return {"v": config["v"]}

    return p.stage("s", config, fn, work=work)


def test_stage_resumes_skips_and_restarts_on_new_inputs(tmp_path):
    p = Pipeline(tmp_path / "run", BUDGETS["tiny"], log=lambda m: None)
    work = tmp_path / "run" / "work"
    work.mkdir(parents=True)
    (work / "partial").write_text("from an interrupted run")
    seen: list = []
    assert _stage(p, {"v": 1}, work, seen) == {"v": 1}
    assert seen == [["partial"]]  # no marker yet: the interrupted work is resumed
    _stage(p, {"v": 1}, work, seen)
    assert len(seen) == 1 and p.summaries["s"]["skipped"]  # current: skipped
    _stage(p, {"v": 2}, work, seen)
    assert seen[-1] == []  # new inputs: a fresh folder, not the finished old run
    stale = tmp_path / "run" / "work.stale"
    assert sorted(f.name for f in stale.iterdir()) == ["part1", "partial"]
    assert json.loads((tmp_path / "run" / "stages" / "s.json").read_text())["config"] == {"v": 2}


def test_run_folder_keeps_its_sampling(tmp_path):
    run = tmp_path / "run"
    check_run_sampling(run, Sampling(0.7, 0.9))
    check_run_sampling(run, Sampling(0.7, 0.9))
    with pytest.raises(LTDError, match="made at T = 0.7, top-p 0.9"):
        check_run_sampling(run, Sampling())
    old = tmp_path / "old"
    (old / "stages").mkdir(parents=True)
    (old / "stages" / "trace.json").write_text("{}")  # made before sampling settings: greedy
    with pytest.raises(LTDError, match="greedy"):
        check_run_sampling(old, Sampling(1.0))


def test_recommendation_names_the_fastest_and_a_faster_external_method():
    from realrun.measure import END_TO_END_RATE
    from realrun.pipeline_report import recommendation

    def bench(**rates):
        return {"bench": {"methods": {n.replace("_", "-"): {END_TO_END_RATE: r, "questions": 4,
                                                            "settings": {"depth": 0} if n == "grid" else {}}
                                      for n, r in rates.items()}},
                "sim_eval": {"methods": {"ltd": {"no_draft_share": 0.5}}}}

    text = recommendation(bench(ar=10.0, grid=10.1, ltd=12.0, hf_prompt_lookup=13.0))
    assert "LTD is fastest: 12.0 tokens/s" in text and "1.20x plain decoding" in text
    assert "prompt lookup measured faster" in text and "13.0 tokens/s (1.30x" in text
    text = recommendation(bench(ar=10.0, grid=9.9, ltd=9.5, hf_prompt_lookup=9.0))
    assert text.startswith("On this device, with this drafter, plain decoding is fastest") and "faster" not in text
    never = bench(ar=10.0, grid=9.9, ltd=10.6)
    never["sim_eval"]["methods"]["ltd"]["no_draft_share"] = 1.0  # LTD never drafts: plain decoding, its lead noise
    assert recommendation(never).startswith("On this device, with this drafter, plain decoding is fastest")
