"""The profiler: step fitting, cost-model JSON, clear errors on bad files, and a tiny real sweep."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ltd_sim.cost_model import predict_cycle
from ltd_sim.errors import LTDError
from profiler import FORMAT_VERSION, FittedCostModel, SweepSpec, Timer, load_cost_model
from profiler.fit import StepPlusLinear, cv_errors, fit_component, verify_features
from profiler.timing import summarize


def _cpu_like_verify(v, c):
    """A synthetic CPU verify curve: V=0 cheap, jump at 1, flat to 15, then linear; plus context."""
    v = np.asarray(v, dtype=float)
    step = np.where(v == 0, 0.020, np.where(v <= 15, 0.035, 0.035 + 0.002 * (v - 15)))
    return step + 2e-6 * np.asarray(c) + 1e-7 * np.asarray(c) * (v + 1)


def _fake_model(include_policy=True):
    keys = [{"size": v, "context_len": c} for v in range(0, 61, 2) for c in (64, 512, 2048)]
    y = [_cpu_like_verify(k["size"], k["context_len"]) for k in keys]
    verify, cv = fit_component("verify", keys, y)
    flat = {"x": [0.0], "y": [0.001], "coef": [], "intercept": 0.0}
    comps = {"verify": {"params": verify, "cv": cv}, "draft_step": {"params": flat, "cv": {}},
             "overhead": {"params": dict(flat, y=[0.0005]), "cv": {}}}
    fp = {"device": "cpu: test", "torch": "x", "dtype": "float32", "target": "t", "draft": "d", "top_k": 4}
    return FittedCostModel(comps, 1e-4, fp, include_policy)


def test_fit_recovers_synthetic_step_function():
    rng = np.random.default_rng(0)
    v = np.tile(np.arange(0, 61), 3)
    c = np.repeat([64, 512, 2048], 61)
    y = _cpu_like_verify(v, c) * (1 + rng.normal(0, 0.01, v.shape))
    X = verify_features(v, c)
    model = StepPlusLinear().fit(X, y)
    truth = _cpu_like_verify(v, c)
    rel = np.abs(model.predict(X) - truth) / truth
    assert np.median(rel) < 0.01 and rel.max() < 0.05
    # the jump from V=0 to V=1 and the flat part are recovered at an unseen context length
    vv = np.array([0, 1, 8, 15, 30, 60])
    pred = model.predict(verify_features(vv, 1024))
    np.testing.assert_allclose(pred, _cpu_like_verify(vv, 1024), rtol=0.04)
    assert pred[1] - pred[0] > 0.01 and abs(pred[3] - pred[1]) < 0.003
    cv = cv_errors(X, y)
    assert cv["folds"] == 5 and cv["median_ape"] < 0.02


def test_fit_follows_gpu_tile_steps():
    v = np.arange(0, 130)
    y = 0.004 * (1 + (v + 1 + 63) // 64)  # steps every 64 tokens (a tile), no context term
    X = verify_features(v, np.full_like(v, 256))
    pred = StepPlusLinear().fit(X, y).predict(X)
    assert np.max(np.abs(pred - y) / y) < 1e-6


def test_outliers_flagged():
    m = summarize({"size": 1}, [1.0, 1.01, 0.99, 1.0, 5.0])
    assert m.outliers == 1 and m.median == 1.0 and m.n == 5


def test_cost_model_protocol_and_json_round_trip(tmp_path):
    model = _fake_model()
    path = model.save(tmp_path / "cost_model.json")
    again = load_cost_model(path)
    for d, v, c, k in ((1, 0, 64, 4), (3, 8, 700, 4), (8, 60, 2048, 10)):
        assert again.predict_cycle(d, v, c, k) == pytest.approx(model.predict_cycle(d, v, c, k), rel=1e-12)
        assert again.predict_cycle(d, v, c, k) == pytest.approx(predict_cycle(again, d, v, c, k))
    assert model.overhead(3, 8, 4) == pytest.approx(0.0005 + 4 * 1e-4)
    assert model.without_policy().overhead(3, 8, 4) == pytest.approx(0.0005)
    raw = json.loads(path.read_text())
    assert raw["format_version"] == FORMAT_VERSION and raw["fingerprint"]["device"] == "cpu: test"
    assert raw["components"]["verify"]["cv"]["median_ape"] is not None
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temp file left behind


@pytest.mark.parametrize("content, message", [
    ("{not json", "corrupted cost model"),
    ('{"kind": "something-else"}', "not an LTD cost model"),
    ('[1, 2]', "not an LTD cost model"),
])
def test_corrupted_file_fails_clearly(tmp_path, content, message):
    path = tmp_path / "cost_model.json"
    path.write_text(content)
    with pytest.raises(LTDError, match=message) as info:
        load_cost_model(path)
    assert "\n" not in str(info.value)


def test_truncated_and_malformed_fail_clearly(tmp_path):
    path = _fake_model().save(tmp_path / "cost_model.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(LTDError, match="corrupted cost model"):
        load_cost_model(path)
    raw = json.loads(text)
    del raw["components"]["verify"]["params"]["y"]
    path.write_text(json.dumps(raw))
    with pytest.raises(LTDError, match="corrupted cost model"):
        load_cost_model(path)


def test_version_mismatch_fails_clearly(tmp_path):
    raw = _fake_model().to_json()
    raw["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "cost_model.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(LTDError, match="format version") as info:
        load_cost_model(path)
    assert "\n" not in str(info.value)


def test_fingerprint_mismatch_refused_unless_forced(tmp_path):
    path = _fake_model().save(tmp_path / "cost_model.json")
    same = {"device": "cpu: test", "dtype": "float32", "target": "t", "draft": "d"}
    assert load_cost_model(path, expect_fingerprint=same)
    other = dict(same, device="cuda: NVIDIA H100")
    with pytest.raises(LTDError, match="profiled elsewhere.*device"):
        load_cost_model(path, expect_fingerprint=other)
    assert load_cost_model(path, expect_fingerprint=other, force=True).fingerprint["device"] == "cpu: test"


def test_tiny_sweep_on_random_models(tiny_target, tmp_path):
    from realrun.drafters import Eagle3Drafter
    from realrun.eagle3 import random_head
    from realrun.probes import DecoderProbes
    from profiler import make_fingerprint, profile_device

    head = random_head(tiny_target, draft_vocab_size=128)
    probes = DecoderProbes(tiny_target, Eagle3Drafter(head, tiny_target.config.vocab_size), 512)
    fp = make_fingerprint("cpu", "float32", "tiny", "eagle3:tiny", "random-init", 4)
    model = profile_device(probes, SweepSpec.preset("tiny"), Timer("cpu"), fp, tmp_path, progress=False)
    for name in ("cost_model.json", "measurements.json", "profile.md", "plots/profile.png", "plots/verify.png"):
        assert (tmp_path / name).is_file(), name
    loaded = load_cost_model(tmp_path / "cost_model.json", expect_fingerprint=fp)
    assert loaded.predict_cycle(3, 4, 64, 4) > 0
    assert loaded.predict_cycle(3, 4, 64, 4) == pytest.approx(model.predict_cycle(3, 4, 64, 4))
    assert loaded.batch_forward(2, 4) > 0
    for name in ("draft_step", "verify", "overhead", "batch_forward"):
        assert loaded.cv_errors()[name]["folds"] > 0, name
    assert "CV MAPE" in (tmp_path / "profile.md").read_text()
    from profiler.build import refit

    again = refit(tmp_path, plots=False)  # from measurements.json, no timing
    assert again.predict_cycle(3, 4, 64, 4) == pytest.approx(model.predict_cycle(3, 4, 64, 4))


def test_target_only_sweep(tiny_target, tmp_path):
    from realrun.probes import DecoderProbes
    from profiler import make_fingerprint, profile_device

    spec = SweepSpec.preset("tiny")
    model = profile_device(DecoderProbes(tiny_target, None, 512), spec, Timer("cpu"),
                           make_fingerprint("cpu", "float32", "tiny", ""), tmp_path, progress=False, plots=False)
    assert model.verify(4, 64) > 0 and model.draft_step(1, 4, 64) == 0.0


def test_cli_profile_registered():
    from realrun.cli import build_parser

    args = build_parser().parse_args(["profile", "--quick", "--out", "x"])
    assert args.func.__name__ == "cmd_profile" and args.quick


def test_cpu_busy_fraction_sees_another_process():
    """The profiler warns when other processes hold the CPU; the measure must see a spinning one."""
    import os
    import subprocess
    import sys

    from profiler.timing import cpu_busy_fraction

    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat on this system")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = cpu_busy_fraction(0.5)
    finally:
        spin.kill()
        spin.wait()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert busy is not None and 0.0 <= busy <= 1.0
    assert busy > 0.6 / max(cores, 1)  # one spinning core of `cores`, with slack for accounting


def test_serving_reads_the_fitted_batch_cost():
    """The fitted model's batch component is what the serving simulation prices a batch with; a
    profile without batch points falls back to the single-sequence verify curve."""
    from profiler.fit import fit_component
    from ltd_sim.serving import batched_verify

    without = _fake_model()
    assert not without.has_batch_forward
    assert batched_verify(without, [3, 5], 64) == pytest.approx(without.verify(3 + 1 + 5, 64))
    keys = [{"batch": b, "tokens": t} for b in (1, 2, 4, 8) for t in (1, 2, 4, 8, 16)]
    params, cv = fit_component("batch_forward", keys, [0.01 * k["batch"] * k["tokens"] for k in keys])
    raw = without.to_json()
    raw["components"]["batch_forward"] = {"params": params, "cv": cv}
    model = FittedCostModel.from_json(raw)
    assert model.has_batch_forward
    assert batched_verify(model, [3, 5], 64) == pytest.approx(model.batch_forward(2, 6))


def test_overhead_probe_times_the_decoders_own_cycle(tiny_target, monkeypatch):
    """The profiler's overhead is one `realrun.decoder.run_cycle`, split by run_cycle's own phase
    clock: the profiler times the decoder itself, not a copy of its cycle."""
    from realrun import decoder
    from realrun.drafters import Eagle3Drafter
    from realrun.eagle3 import random_head
    from realrun.probes import DecoderProbes

    records = []
    real_run_cycle = decoder.run_cycle

    def counting_run_cycle(*args, **kwargs):
        cycle = real_run_cycle(*args, **kwargs)
        records.append(cycle.record)
        return cycle

    monkeypatch.setattr(decoder, "run_cycle", counting_run_cycle)
    head = random_head(tiny_target, draft_vocab_size=128)
    probes = DecoderProbes(tiny_target, Eagle3Drafter(head, tiny_target.config.vocab_size), 512)
    probes.prepare(32)
    out = probes.overhead(3, 4, 2)(Timer("cpu"))
    assert len(records) == 1
    rec = records[0]
    assert (rec.depth, rec.size, rec.top_k, rec.context_len) == (3, 4, 2, 32)
    assert out == [rec.overhead_s]
    assert rec.overhead_s == pytest.approx(rec.total_s - rec.draft_s - rec.verify_s)
    assert probes.cache.get_seq_length() == 32  # the probe leaves the prepared context as it was


# ---- the n-gram term (issue 15): lookup + merge, measured, fitted, saved; old files still load ----

def _ngram_time(c, d):
    """A synthetic n-gram phase: a lookup, one merge per step (deeper trees merge slower), a context drift."""
    return 30e-6 + 20e-6 * d + 2e-6 * d * d + 2e-9 * c


def test_ngram_fit_follows_depth_and_context():
    from profiler.fit import ngram_features, predict_params

    keys = [{"context_len": c, "depth": d} for c in (64, 256, 1024, 4096) for d in range(1, 9)]
    params, cv = fit_component("ngram", keys, [_ngram_time(k["context_len"], k["depth"]) for k in keys])
    pred = predict_params(params, ngram_features(np.array([128, 3000, 3000]), np.array([1, 5, 8])))
    np.testing.assert_allclose(pred, [_ngram_time(128, 1), _ngram_time(3000, 5), _ngram_time(3000, 8)], rtol=1e-3)
    assert cv["folds"] == 5 and cv["max_ape"] < 0.05


def test_ngram_probe_times_the_matched_path(tiny_target):
    """The profiled context's suffix really occurred earlier: the lookup finds the longest match with
    max_branches branches of full depth, and the probe merges them into the sweep-shaped head tree."""
    from realrun.ngram import NgramConfig, NgramProposer, SOURCE_NGRAM, merge_proposal
    from realrun.probes import DecoderProbes, matching_context

    cfg = NgramConfig()
    for length in (64, 1000):
        proposer = NgramProposer(cfg)
        proposer.begin(matching_context(np.random.default_rng(1), 50_000, length, cfg.ngram_max,
                                        cfg.max_branches, 5))
        proposal = proposer.propose(5)
        assert proposal.match_len == cfg.ngram_max and proposal.matches == cfg.max_branches
        assert int(proposal.depths.max()) == 5 and np.sum(proposal.depths == 1) == cfg.max_branches
    probes = DecoderProbes(tiny_target, None, 512)
    probes.prepare(16)
    out = probes.ngram(256, 3)(Timer("cpu"))
    assert len(out) == 3 and 0 < out[0] <= out[1] <= out[2]  # cumulative after each draft step
    merged = merge_proposal(probes.verify_source.truncated(3), proposer.propose(3))
    assert int(merged.steps.max()) == 3 and np.any(merged.sources & SOURCE_NGRAM)


def test_ngram_component_measured_fitted_saved_loaded(tiny_target, tmp_path):
    from dataclasses import replace

    from realrun.drafters import Eagle3Drafter
    from realrun.eagle3 import random_head
    from realrun.probes import DecoderProbes
    from profiler import make_fingerprint, profile_device
    from profiler.build import refit

    head = random_head(tiny_target, draft_vocab_size=128)
    probes = DecoderProbes(tiny_target, Eagle3Drafter(head, tiny_target.config.vocab_size), 512)
    spec = replace(SweepSpec.preset("tiny"), sizes=(0, 2), top_ks=(2,), overhead_depths=(1,),
                   overhead_sizes=(0,), batch_sizes=(1,), batch_tokens=(1,))
    fp = make_fingerprint("cpu", "float32", "tiny", "eagle3:tiny", "random-init", 2)
    model = profile_device(probes, spec, Timer("cpu"), fp, tmp_path, progress=False)
    measured = json.loads((tmp_path / "measurements.json").read_text())["components"]["ngram"]
    assert sorted((m["key"]["context_len"], m["key"]["depth"]) for m in measured) == \
        [(c, d) for c in spec.ngram_context_lens() for d in range(1, spec.max_depth + 1)]
    assert all(m["n"] == spec.ngram_repeats for m in measured)
    assert model.has_ngram and model.cv_errors()["ngram"]["folds"] == 5
    loaded = load_cost_model(tmp_path / "cost_model.json", expect_fingerprint=fp)
    for c in (16, 256, 4096):
        assert loaded.ngram(c) > 0 and loaded.ngram(c) == pytest.approx(model.ngram(c))
        # no depth: the deepest profiled cycle; the fitted step function never falls with depth
        assert loaded.ngram(c) == pytest.approx(loaded.ngram(c, spec.max_depth))
        assert loaded.ngram(c, 1) <= loaded.ngram(c, spec.max_depth)
    # the n-gram term is its own: predict_cycle keeps meaning draft + verify + overhead
    assert loaded.predict_cycle(3, 2, 64, 2) == pytest.approx(predict_cycle(loaded, 3, 2, 64, 2))
    summary = (tmp_path / "profile.md").read_text()
    assert "N-gram phase" in summary and "| ngram |" in summary
    assert (tmp_path / "plots" / "ngram.png").is_file()
    assert refit(tmp_path, plots=False).ngram(256, 2) == pytest.approx(model.ngram(256, 2))


def test_cost_model_without_ngram_term_still_loads(tmp_path):
    """A cost_model.json from before the n-gram term loads; its n-gram time is 0 and the summary says
    the term is missing. ngram_seconds prices any cost model, with or without the method."""
    from ltd_sim.cost_model import AnalyticCostModel, ngram_seconds
    from profiler.build import ngram_summary
    from profiler.sweeps import SweepResult

    path = _fake_model().save(tmp_path / "cost_model.json")
    assert "ngram" not in json.loads(path.read_text())["components"]
    old = load_cost_model(path)
    assert not old.has_ngram and old.ngram(256) == 0.0 and ngram_seconds(old, 256) == 0.0
    text = "\n".join(ngram_summary(old, SweepResult({"name": "old", "context_lens": [64]}, "cpu")))
    assert "not measured" in text and "ltd profile --force" in text

    class BeforeTheTerm:  # a cost model written against the protocol before ngram() existed
        def draft_step(self, step, top_k, context_len):
            return 0.001

    assert ngram_seconds(BeforeTheTerm(), 2048) == 0.0
    assert ngram_seconds(AnalyticCostModel(), 2048) == AnalyticCostModel().ngram_propose == 2e-5
    assert ngram_seconds(AnalyticCostModel(), 2048, depth=3) == 2e-5
    assert AnalyticCostModel.from_json(AnalyticCostModel(ngram_propose=5e-5).to_json()).ngram(64) == 5e-5
