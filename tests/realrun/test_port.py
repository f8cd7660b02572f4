"""`ltd port` and device fingerprints: threads and dtype tell devices apart, A's traces are reused only
where they hold, a cost model made elsewhere is refused (or rebuilt), and a port between two tiny-model
devices (2 threads -> 1 thread) runs end to end."""

from __future__ import annotations

import json

import pytest

from ltd_sim.errors import LTDError
from ltd_sim.io import write_json
from profiler.model import device_mismatch, fingerprint_mismatch, make_fingerprint
from realrun.port import check_traces


def test_fingerprint_tells_threads_and_dtype_apart():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = make_fingerprint("cpu", torch.float32, "t", "d")
        torch.set_num_threads(2)
        two = make_fingerprint("cpu", torch.float32, "t", "d")
    finally:
        torch.set_num_threads(before)
    bf16 = {**one, "dtype": "bfloat16"}
    assert one["threads"] == 1 and two["threads"] == 2
    assert any(d.startswith("threads") for d in fingerprint_mismatch(one, two))
    assert any(d.startswith("dtype") for d in fingerprint_mismatch(bf16, one))
    older = {k: v for k, v in one.items() if k != "threads"}  # a profile from before threads were recorded
    assert "not recorded" in " ".join(fingerprint_mismatch(older, two))
    note = device_mismatch(one, two, "these policies")
    assert note.count("\n") == 0 and "threads" in note and "ltd port" in note
    assert device_mismatch(one, one) is None and device_mismatch(None, one) is None


def _run_with_traces(root, origin: dict | None):
    (root / "traces").mkdir(parents=True)
    (root / "traces" / "seq_00000.npz").write_bytes(b"")
    write_json(root / "traces" / "manifest.json", {"top_k": 4, **(origin or {})})
    return root


def test_trace_reuse_needs_same_weights_and_dtype(tmp_path):
    here = {"target_digest": "t1", "draft_digest": "d1", "dtype": "float32"}
    assert check_traces(_run_with_traces(tmp_path / "a", here), here).valid
    bf16 = check_traces(_run_with_traces(tmp_path / "b", {**here, "dtype": "bfloat16"}), here)
    assert not bf16.valid and "dtype" in bf16.reason and "greedy outputs" in bf16.reason
    other = check_traces(_run_with_traces(tmp_path / "c", {**here, "draft_digest": "d2"}), here)
    assert not other.valid and "draft_digest" in other.reason
    old = check_traces(_run_with_traces(tmp_path / "d", None), here)
    assert not old.valid and "does not record" in old.reason
    assert not check_traces(tmp_path / "empty", here).valid


def test_port_refuses_bad_input(tmp_path, capsys):
    from realrun.cli import main

    assert main(["port", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    assert main(["port", "--from", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 2
    assert "no policies" in capsys.readouterr().err
    assert main(["port", "--from", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--threads", "999"]) == 2
    assert "--threads" in capsys.readouterr().err


@pytest.mark.slow
def test_port_between_two_tiny_devices(tiny_chat_target, tmp_path, capsys):
    """Run A on 2 threads (the tiny pipeline), ported to 1 thread: A's traces are reused (same weights and
    dtype), B is profiled on 1 thread, its policies record B's device, the bench holds all four methods,
    every one lossless; a cost model from another device is refused."""
    import os

    from realrun.cli import main
    from realrun.eagle3 import random_head, save_head
    from realrun.models import load_causal_lm

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores (a 2-thread and a 1-thread device)")
    affinity = os.sched_getaffinity(0)
    head = save_head(random_head(load_causal_lm(tiny_chat_target).model, draft_vocab_size=512), tmp_path / "head")
    a, b = tmp_path / "A", tmp_path / "B"
    try:
        assert main(["pipeline", "--target", str(tiny_chat_target), "--draft", str(head), "--out", str(a),
                     "--budget", "tiny", "--threads", "2"]) == 0
        capsys.readouterr()
        port = ["port", "--from", str(a), "--out", str(b), "--target", str(tiny_chat_target), "--budget", "tiny",
                "--bench-questions", "3"]
        assert main(port + ["--threads", "1"]) == 0
    finally:
        os.sched_setaffinity(0, affinity)
    out = capsys.readouterr().out
    assert "reusing" in out
    report = json.loads((b / "port.json").read_text())
    assert report["traces"]["valid"] and report["device_here"]["threads"] == 1
    assert report["device_from"]["threads"] == 2
    assert set(report["stages"]) >= {"profile", "trace", "pretrain", "sim_eval", "sim_unported", "grid", "port_bench"}
    assert sorted(p.name for p in (b / "traces").glob("seq_*.npz")) == sorted(p.name for p in (a / "traces").glob("seq_*.npz"))
    spec = json.loads((b / "pretrain" / "policies" / "spec.json").read_text())
    assert spec["device"]["threads"] == 1 and spec["features"]["name"] == "paper_v2"
    methods = report["measured"]["methods"]
    assert set(methods) == {"ar", "grid", "ltd-sim", "ltd"} and all(m["lossless"] for m in methods.values())
    assert "ltd/grid" in report["measured"]["paired"] and (b / "port.md").read_text().startswith("# LTD port")
    assert "made for" in methods["ltd-sim"]["settings"]["device_note"]  # A's policies used here say so

    # A cost model from another device is refused by the profiler (one line), not reused.
    foreign = tmp_path / "C"
    foreign.mkdir()
    cost = json.loads((b / "cost_model.json").read_text())
    cost["fingerprint"]["threads"] = 7
    write_json(foreign / "cost_model.json", cost)
    assert main(["profile", "--target", str(tiny_chat_target), "--draft", str(head), "--draft-kind", "eagle3",
                 "--out", str(foreign), "--preset", "tiny", "--no-plots", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "profiled elsewhere" in err and "threads" in err and err.count("\n") == 1
    os.sched_setaffinity(0, affinity)
    with pytest.raises(LTDError, match="threads"):
        from profiler import load_cost_model

        load_cost_model(foreign / "cost_model.json", expect_fingerprint={**cost["fingerprint"], "threads": 1})
