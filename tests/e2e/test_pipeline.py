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


def test_pipeline_with_ngram(tiny_chat_target, tmp_path):
    """`--ngram` end to end: hybrid traces (head + n-gram branches), a calibration fitted on their train
    split, ngram_v1 policies that record it, a lossless bench with transformers' prompt lookup beside
    them; the folder then refuses to continue without --ngram."""
    from ltd_sim.policy import PolicyController
    from ltd_sim.ngram_calibration import NgramCalibration
    from ltd_sim.trace import load_traces
    from realrun.cli import main
    from realrun.eagle3 import random_head, save_head
    from realrun.models import load_causal_lm
    from realrun.ngram import write_corpus
    from realrun.prompts import default_trace_prompts

    target = load_causal_lm(tiny_chat_target)
    head = save_head(random_head(target.model, draft_vocab_size=512), tmp_path / "head")
    # a corpus that repeats the trace prompts' text: their suffixes match it, so branches exist
    tok = target.tokenizer
    texts = [p["text"] for p in default_trace_prompts(5)]
    write_corpus(tmp_path / "corpus.json", [tok.encode(t) for t in texts], target.vocab_size, tok)
    run = tmp_path / "run"
    base = ["pipeline", "--target", str(tiny_chat_target), "--draft", str(head), "--out", str(run),
            "--budget", "tiny"]
    args = base + ["--ngram", "--ngram-min", "1", "--ngram-max", "3",
                   "--ngram-corpus", str(tmp_path / "corpus.json")]
    assert main(args) == 0

    report = json.loads((run / "report.json").read_text())
    assert report["ngram"]["ngram_min"] == 1 and report["ngram"]["ngram_max"] == 3 and report["ngram"]["corpus"]
    assert {"profile", "trace", "calibrate", "pretrain", "sim_eval", "grid", "finetune", "bench"} <= set(report["stages"])
    assert not any(s["skipped"] for name, s in report["stages"].items() if name != "draft")
    seqs = load_traces(run / "traces", "all")
    assert {s.draft_sources for s in seqs} == {"head+ngram"}
    assert max(int(s.ngram_match.max()) for s in seqs) >= 1  # n-gram branches were found and recorded
    cal = NgramCalibration.load(run / "ngram_calibration.json")
    assert cal.fitted and report["stages"]["calibrate"]["digest"] == cal.digest()
    for policies in (run / "pretrain" / "policies", run / "finetune" / "policies"):
        ctrl = PolicyController(policies)
        assert ctrl.spec.name == "ngram_v1", policies
        assert ctrl.info["ngram"]["calibration"] == cal.digest(), policies
    bench = report["stages"]["bench"]["methods"]
    assert {"ar", "eagle3", "grid", "ltd-sim", "ltd", "hf-prompt-lookup"} <= set(bench)
    assert all(row["lossless"] for row in bench.values())
    assert "head + n-gram branches" in (run / "report.md").read_text()

    # Resumed with the same options, every stage is current.
    assert main(args) == 0
    assert all(s["skipped"] for s in json.loads((run / "report.json").read_text())["stages"].values())

    # The folder belongs to its n-gram branches: a run without --ngram is refused, nothing touched.
    before = {p.name: p.read_bytes() for p in (run / "stages").iterdir()}
    assert main(base) == 2
    assert {p.name: p.read_bytes() for p in (run / "stages").iterdir()} == before
