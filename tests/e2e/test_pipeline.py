"""`ltd pipeline` end to end on tiny models (the real stages at a budget of seconds), resumption."""

from __future__ import annotations

import json


def test_pipeline_end_to_end_and_resume(tiny_chat_target, tmp_path):
    from realrun.cli import main
    from realrun.eagle3 import random_head, save_head
    from realrun.models import load_causal_lm

    # The head builder has its own tests; here a random head stands in for a trained one.
    head = save_head(random_head(load_causal_lm(tiny_chat_target).model, draft_vocab_size=512), tmp_path / "head")
    run = tmp_path / "run"
    args = ["pipeline", "--target", str(tiny_chat_target), "--draft", str(head), "--out", str(run),
            "--budget", "tiny"]
    assert main(args) == 0
    for artifact in ("cost_model.json", "traces", "pretrain/policies", "finetune/policies", "sim_eval.json",
                     "bench/report.json", "report.md", "report.json"):
        assert (run / artifact).exists(), artifact
    report = json.loads((run / "report.json").read_text())
    assert report["budget"]["name"] == "tiny"
    bench = report["stages"]["bench"]["methods"]
    assert {"ar", "eagle3", "grid", "ltd-sim", "ltd", "hf-assisted"} <= set(bench)
    assert all(row["lossless"] for row in bench.values())
    sim = report["stages"]["sim_eval"]["methods"]
    # the oracle bounds every drafting schedule (plain decoding without a drafter skips the draft step)
    drafting = [r["tokens_per_s"] for name, r in sim.items() if name != "autoregressive"]
    assert sim["oracle"]["tokens_per_s"] >= max(drafting) - 1e-9

    # A second run finds every stage current and skips it.
    assert main(args) == 0
    report = json.loads((run / "report.json").read_text())
    assert all(s["skipped"] for s in report["stages"].values())

    # An interrupted stage reruns alone: drop the bench marker, the rest stays skipped.
    (run / "stages" / "bench.json").unlink()
    assert main(args) == 0
    stages = json.loads((run / "report.json").read_text())["stages"]
    assert not stages["bench"]["skipped"] and stages["finetune"]["skipped"]

    # The folder belongs to its sampling setting: another one is refused before anything is touched.
    before = sorted(p.name for p in (run / "stages").iterdir())
    assert main(args + ["--temperature", "1.0"]) == 2
    assert sorted(p.name for p in (run / "stages").iterdir()) == before


def test_pipeline_at_a_sampling_setting(tiny_chat_target, tmp_path):
    """Every stage at T = 1, top-p 0.9: sampled traces (two per prompt), policies that record the setting,
    a bench whose distributional check stands in for greedy equality, a report that says so."""
    from ltd_sim.policy import PolicyController
    from ltd_sim.trace import load_traces
    from realrun.cli import main
    from realrun.eagle3 import random_head, save_head
    from realrun.models import load_causal_lm

    head = save_head(random_head(load_causal_lm(tiny_chat_target).model, draft_vocab_size=512), tmp_path / "head")
    run = tmp_path / "run"
    assert main(["pipeline", "--target", str(tiny_chat_target), "--draft", str(head), "--out", str(run),
                 "--budget", "tiny", "--temperature", "1.0", "--top-p", "0.9"]) == 0
    seqs = load_traces(run / "traces", "all")
    assert {s.sampling.temperature for s in seqs} == {1.0} and {s.meta["sample"] for s in seqs} == {0, 1}
    assert PolicyController(run / "finetune" / "policies").info["sampling"] == [{"temperature": 1.0, "top_p": 0.9}]
    report = json.loads((run / "report.json").read_text())
    assert report["sampling"] == {"temperature": 1.0, "top_p": 0.9}
    for name, row in report["stages"]["bench"]["methods"].items():
        assert row["exact_match"] is None and "law" in row, name
    assert "T = 1, top-p 0.9" in (run / "report.md").read_text()


def test_pipeline_bad_options(tmp_path, capsys):
    from realrun.cli import main

    assert main(["pipeline", "--out", str(tmp_path / "r"), "--quick", "--budget", "full"]) == 2
    assert "contradict" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["pipeline", "--out", str(tmp_path / "file")]) == 2
