"""`ltd bench` at T > 0 on tiny random models: every method samples, the distributional check replaces
greedy equality and passes for lossless methods, and its tests have power against a wrong law."""

from __future__ import annotations

import pytest
import torch

from ltd_sim.errors import LTDError
from helpers import tiny_lm_pair
from realrun.bench import BenchConfig, Question, run_bench
from realrun.bench.law import logprob_test, tempered_logprob, token_test
from realrun.cli import main
from realrun.decoder import DecodeConfig, generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(tiny_target, tiny_draft):
    return tiny_lm_pair(tiny_target, tiny_draft, "tiny-llama")


def questions(n: int):
    gen = torch.Generator().manual_seed(11)
    return [Question(f"q{i}", "chat", torch.randint(0, 256, (8,), generator=gen).tolist()) for i in range(n)]


def test_sampled_bench_checks_the_law(pair, tiny_draft, tmp_path):
    cfg = BenchConfig("ar,eagle3,grid,hf-assisted", grid_setting=(2, 3), max_new_tokens=8, repeats=2, warmups=0,
                      hf_draft=tiny_draft, hf_tokens=3, temperature=1.0, top_p=0.9, seed=3, law_seeds=40)
    rep = run_bench(pair, questions(5), cfg, out_dir=tmp_path, progress=False)
    st = rep["settings"]
    assert not st["greedy"] and st["sampling"] == {"temperature": 1.0, "top_p": 0.9} and st["seed"] == 3
    methods = rep["methods"]
    assert methods["ar"]["law"]["logprob_p"] is None  # the reference
    for name in ("eagle3", "grid", "hf-assisted"):
        law = methods[name]["law"]
        assert law["seeds"] == 40 and 0 <= law["logprob_p"] <= 1 and 0 <= law["token_p"] <= 1
        assert law["passed"] == methods[name]["lossless"] and methods[name]["exact_match"] is None
        assert law["passed"], (name, law)  # these methods sample the target's law
    assert methods["grid"]["new_tokens"] > 0 and methods["ar"]["new_tokens"] > 0
    md = (tmp_path / "report.md").read_text()
    assert "T = 1, top-p 0.9" in md and "log-prob p" in md


def test_timed_runs_share_seeds_across_methods(pair):
    """Common random numbers: a setting that never drafts samples exactly what ar samples (one seed per
    question and repeat), and the repeats of a question draw different continuations."""
    from realrun.bench.run import build_methods, static_method, stream_seed

    cfg = BenchConfig("ar", max_new_tokens=8, temperature=1.0, seed=5).validate()
    ar = build_methods(pair, cfg)["ar"]
    nodraft = static_method("grid", pair, 0, 0, 8, sampling=cfg.sampling)
    q = questions(1)[0]
    same = [ar(q.prompt_ids, seed=stream_seed(5, 0, r)).tokens == nodraft(q.prompt_ids, seed=stream_seed(5, 0, r)).tokens
            for r in range(3)]
    assert all(same)
    outs = {tuple(ar(q.prompt_ids, seed=stream_seed(5, 0, r)).tokens) for r in range(6)}
    assert len(outs) > 1


def test_the_law_tests_see_a_wrong_temperature(tiny_target):
    """A decoder sampling at T = 0.5 when T = 1 is asked: both tests reject it; at T = 1 they do not."""
    prompts = [torch.randint(0, 256, (6,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(1)]

    def sample(prompt, t, seed, new=6):
        return generate(tiny_target, prompt, None, DecodeConfig(max_new_tokens=new, temperature=t, seed=seed)).token_ids

    first = prompts[0]
    ref = [tempered_logprob(tiny_target, first, sample(first, 1.0, 100 + i), 1.0) for i in range(60)]
    same = [tempered_logprob(tiny_target, first, sample(first, 1.0, 200 + i), 1.0) for i in range(60)]
    cold = [tempered_logprob(tiny_target, first, sample(first, 0.5, 300 + i), 1.0) for i in range(60)]
    assert logprob_test(cold, ref) < 0.01
    assert logprob_test(same, ref) > 0.01
    ref_tok = [sample(first, 1.0, s, 2)[1] for s in range(150)]
    same_tok = [sample(first, 1.0, 1000 + s, 2)[1] for s in range(150)]
    cold_tok = [sample(first, 0.5, 2000 + s, 2)[1] for s in range(150)]
    assert token_test(cold_tok, ref_tok) < 0.01
    assert token_test(same_tok, ref_tok) > 0.01


@pytest.mark.parametrize("argv,match", [
    (["--temperature", "-1"], "--temperature"), (["--temperature", "1", "--top-p", "0"], "--top-p"),
    (["--temperature", "1", "--law-seeds", "3"], "--law-seeds"),
])
def test_bad_sampling_options_fail_in_one_line(argv, match, capsys):
    assert main(["bench", "--methods", "ar", "--limit", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_bench_config_validates_sampling():
    with pytest.raises(LTDError, match="--top-p"):
        BenchConfig("ar", top_p=1.5).validate()
