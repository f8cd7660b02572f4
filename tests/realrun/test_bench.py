"""`ltd bench` on tiny random models: the JSON contract, lossless flags, report files, the grid sweep,
an LTD policy saved by ltd_sim, clear errors for bad options, and the one measurement harness
(`realrun.measure`): both rates reported and named alike in the bench and grid.json."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from ltd_sim.errors import LTDError
from realrun.bench import BenchConfig, Question, check_equal, grid_from_file, paired_ratio, run_bench
from helpers import tiny_lm_pair
from realrun.cli import main
from realrun.measure import DECODE_RATE, END_TO_END_RATE, RATE_LABELS, Run
from realrun.loading import ModelPair
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread

NEW = 12
PREFILL_S = 0.05  # a drafter prefill made costly on purpose (see test_one_harness_two_named_rates)


@pytest.fixture(scope="module")
def pair(tiny_target, tiny_draft):
    return tiny_lm_pair(tiny_target, tiny_draft, "tiny-llama")


def questions():
    gen = torch.Generator().manual_seed(7)
    return [Question(f"q{i}", "code" if i % 2 else "chat", torch.randint(0, 256, (8,), generator=gen).tolist())
            for i in range(2)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """Depth and size policies saved by ltd_sim on synthetic traces (a few PPO updates: quick, not good)."""
    from stable_baselines3 import PPO

    from ltd_sim.cost_model import AnalyticCostModel
    from ltd_sim.envs import DepthEnv, SizeEnv
    from ltd_sim.policy import save_policies
    from ltd_sim.sim import SimTables
    from ltd_sim.synthetic import synthetic_sequence

    rng = np.random.default_rng(0)
    tables = SimTables.build([synthetic_sequence(rng, k=3, depth=4) for _ in range(2)], AnalyticCostModel())
    models = []
    for env in (DepthEnv(tables, partner=3), SizeEnv(tables)):
        m = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu", verbose=0)
        models.append(m.learn(64))
    return save_policies(tmp_path_factory.mktemp("policy") / "policies", *models, tables.spec)


def test_bench_contract_and_files(pair, tiny_draft, policy_dir, tmp_path):
    out = tmp_path / "bench"
    cfg = BenchConfig("ar,eagle3,grid,ltd,hf-assisted", policy_dir=policy_dir, grid_setting=(2, 3),
                      max_new_tokens=NEW, repeats=1, warmups=1, hf_draft=tiny_draft, hf_tokens=3)
    rep = run_bench(pair, questions(), cfg, out_dir=out, progress=False)
    methods = rep["methods"]
    assert list(methods) == ["ar", "eagle3", "grid", "ltd", "hf-assisted"]
    for name, m in methods.items():
        assert {END_TO_END_RATE, DECODE_RATE, "speedup", "decode_speedup", "tau", "lossless"} <= m.keys()
        assert m[END_TO_END_RATE] > 0 and m["lossless"] and m["exact_match"], (name, m["mismatches"])
        assert m["new_tokens"] == 2 * NEW
    assert methods["hf-assisted"][DECODE_RATE] is None  # transformers' generate: no prefill boundary
    assert methods["ar"]["speedup"] == 1.0 and methods["ar"]["tau"] == 1.0
    assert methods["grid"]["settings"] == {"top_k": 10, "depth": 2, "size": 3}
    assert methods["eagle3"]["settings"] == {"top_k": 10, "depth": 8, "size": 60}
    assert methods["ltd"]["settings"]["top_k"] == 3 and methods["ltd"]["policy_calls"] > 0
    assert 0 < methods["ltd"]["policy_overhead"] < 1
    acc = methods["eagle3"]["acceptance_by_position"]
    assert len(acc) == 8 and all(a >= b for a, b in zip(acc, acc[1:]))  # P(accepted >= j) falls with j
    assert methods["eagle3"]["tau"] == pytest.approx(1 + sum(acc))
    assert methods["hf-assisted"]["tau"] >= 1
    assert set(rep["categories"]) == {"chat", "code"}
    assert rep["categories"]["chat"]["methods"]["ar"]["speedup"] == 1.0
    assert rep["device"]["device"].startswith("cpu") and rep["device"]["target"] == "tiny-llama"
    assert rep["grid"]["source"] == "given"
    for f in ("report.md", "report.json", "plots/tokens_per_s.png", "plots/acceptance.png",
              "plots/tau_by_category.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "plots" / "acceptance.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "report.json").read_text())
    assert saved["methods"]["grid"]["speedup"] == pytest.approx(methods["grid"]["speedup"])
    assert "| eagle3 |" in (out / "report.md").read_text()
    assert not [p for p in out.rglob(".tmp-*")]
    # the grid setting of a report can be reused by --grid-from
    assert grid_from_file(out / "report.json") == (2, 3)
    # ar's outputs, written as an n-gram corpus a later run can search (--ngram-corpus)
    from realrun.ngram import NgramConfig, corpus_index, read_corpus

    raw = read_corpus(out / "outputs_corpus.json")
    assert [len(seq) for seq in raw["sequences"]] == [NEW] * len(questions())
    assert len(corpus_index(raw, "corpus", NgramConfig(), pair.target.vocab_size)) > 0


def test_grid_sweep_picks_a_measured_setting(pair):
    cfg = BenchConfig(["ar", "grid"], max_new_tokens=6, repeats=1, warmups=0, grid_candidates=[(1, 1), (2, 2)],
                      sweep_questions=1, sweep_tokens=6)
    rep = run_bench(pair, questions()[:1], cfg, progress=False)
    g = rep["grid"]
    assert g["source"] == "measured sweep" and g["sweep"] and g["selected_by"] == END_TO_END_RATE
    best = max((r for r in g["sweep"] if END_TO_END_RATE in r), key=lambda r: r[END_TO_END_RATE])
    assert (g["depth"], g["size"]) == (best["depth"], best["size"])
    assert rep["methods"]["grid"]["lossless"]


def test_peers_on_fewer_questions_and_paired_ratios(pair):
    qs = questions() + [Question("q2", "chat", [5, 6, 7, 8, 9, 10])]
    rep = run_bench(pair, qs, BenchConfig("ar,eagle3,grid", grid_setting=(1, 1), max_new_tokens=6, repeats=1,
                                          warmups=0, peer_questions=1), progress=False)
    m = rep["methods"]
    assert m["ar"]["questions"] == m["grid"]["questions"] == 3 and m["eagle3"]["questions"] == 1
    assert m["eagle3"]["runs"] == 1 and m["eagle3"]["lossless"]
    ar_q0 = next(r for r in rep["runs"] if r["method"] == "ar" and r["question"] == "q0")
    e_q0 = next(r for r in rep["runs"] if r["method"] == "eagle3")
    assert e_q0["question"] == "q0"  # speedup against ar on that question alone
    assert m["eagle3"]["speedup"] == pytest.approx((e_q0["new_tokens"] / e_q0["wall_s"]) /
                                                   (ar_q0["new_tokens"] / ar_q0["wall_s"]))
    assert rep["categories"]["code"]["methods"]["eagle3"]["runs"] == 0  # q1 (code) ran no peer
    assert set(rep["paired"]) == {"grid/ar", "eagle3/ar"}  # peers are not compared with grid
    assert rep["paired"]["grid/ar"]["pairs"] == 3 and rep["paired"]["grid/ar"]["ci90"] is not None
    with pytest.raises(LTDError, match="--peer-questions"):
        run_bench(pair, qs, BenchConfig("ar", peer_questions=0))


def test_paired_ratio_and_its_interval():
    qs = [Question(f"q{i}", "c", [1]) for i in range(6)]
    fast = [(q, 0, Run(tokens=[0] * 10, wall_s=1.0 + i)) for i, q in enumerate(qs)]
    slow = [(q, 0, Run(tokens=[0] * 10, wall_s=2.0 * (1.0 + i))) for i, q in enumerate(qs)]
    pr = paired_ratio(fast, slow)
    assert pr["ratio_of_means"] == pytest.approx(2.0) and pr["median_per_question"] == pytest.approx(2.0)
    assert pr["ci90"] == pytest.approx([2.0, 2.0]) and pr["pairs"] == 6
    noisy = [(q, 0, Run(tokens=[0] * 10, wall_s=(1.0 + i) * (1.5 if i % 2 else 2.5))) for i, q in enumerate(qs)]
    pr = paired_ratio(fast, noisy)
    lo, hi = pr["ci90"]
    assert lo < pr["ratio_of_means"] < hi and 1.5 <= lo and hi <= 2.5
    assert paired_ratio(fast[:2], slow[3:])["ratio_of_means"] is None  # no question in common
    assert paired_ratio(fast, slow, DECODE_RATE)["pairs"] == 0  # these runs have no prefill boundary


def test_equality_check_measures_mismatches(tiny_target):
    prompt = [1, 2, 3, 4]
    ref = [5, 6, 7]
    assert check_equal(tiny_target, prompt, ref, list(ref)) is None
    logits = tiny_target(input_ids=torch.tensor([prompt])).logits[0, -1]
    top = logits.topk(2).indices.tolist()
    wrong = int(logits.argmin())
    info = check_equal(tiny_target, prompt, [top[0], 9], [wrong, 9])
    assert info["position"] == 0 and not info["near_tie"] and info["gap"] > 0
    assert check_equal(tiny_target, prompt, ref, ref[:2])["reason"] == "length differs"


def test_bad_options_fail_clearly(pair, tmp_path, capsys):
    with pytest.raises(LTDError, match="unknown method"):
        run_bench(pair, questions(), BenchConfig("ar,medusa"))
    with pytest.raises(LTDError, match="--policy"):
        run_bench(pair, questions(), BenchConfig("ar,ltd"))
    with pytest.raises(LTDError, match="--grid"):
        run_bench(pair, questions(), BenchConfig("ar,grid", grid_setting="8"))
    nodraft = ModelPair(pair.target, None, None, None, set(), 512)
    with pytest.raises(LTDError, match="need a drafter"):
        run_bench(nodraft, questions(), BenchConfig("ar,eagle3"))
    with pytest.raises(LTDError, match="no tokenizer"):
        run_bench(pair, ["some text"], BenchConfig("ar"))
    lines = tmp_path / "lines.txt"
    lines.write_text("a question\n")
    bad_json = tmp_path / "g.json"
    bad_json.write_text('{"x": 1}')
    for argv, msg in ((["--methods", "ar,nope"], "unknown method"),
                      (["--methods", "ar,ltd"], "--policy"),
                      (["--grid", "3"], "--grid"),
                      (["--grid-from", str(bad_json)], "no static setting"),
                      (["--questions", str(tmp_path / "missing.jsonl")], "cannot read --questions"),
                      (["--methods", "ar,ltd-sim", "--sim-policy", str(tmp_path)], "no policy"),
                      (["--questions", str(lines), "--threads", "0"], "--threads"),
                      (["--limit", "0"], "--limit")):
        capsys.readouterr()
        assert main(["bench", *argv]) == 2
        assert msg in capsys.readouterr().err
    q = tmp_path / "q.jsonl"
    q.write_text('{"question_id": 1, "category": "x"}\n')
    assert main(["bench", "--questions", str(q)]) == 2
    assert "not a Spec-Bench record" in capsys.readouterr().err


def test_one_harness_two_named_rates(pair, tmp_path):
    """The defect this pins: three measurements once shared the name `tokens_per_s` (fine-tuning's excluded
    the prefill, the bench's included it). Now one harness reports both rates by name: the decode rate
    leaves a costly prefill out, the end-to-end rate keeps it, and the bench and grid.json name the same
    quantity alike for the same (D, V)."""
    from ltd_sim.control import StaticDepth, StaticSize
    from realrun.decoder import DecodeConfig
    from realrun.measure import measure_many
    from realrun.tune import MEASURED_DECODE, MEASURED_END_TO_END

    class SlowPrefill:
        """The tiny drafter with a prefill as costly as a real one's (tiny models prefill in a blink)."""

        def __init__(self, drafter):
            self.drafter = drafter

        def __getattr__(self, name):
            return getattr(self.drafter, name)

        def begin(self, *args, **kwargs):
            time.sleep(PREFILL_S)
            return self.drafter.begin(*args, **kwargs)

    slow = ModelPair(pair.target, SlowPrefill(pair.drafter), None, "lm", set(), 512)
    prompt = questions()[0].prompt_ids
    cfg = DecodeConfig(max_new_tokens=NEW, top_k=10, max_depth=2)
    m = measure_many(slow, [prompt], [(StaticDepth(2), StaticSize(3))], cfg)[0]
    assert m.new_tokens == NEW and m.decode_tokens == NEW - 1 and m.wall_s - m.decode_s >= PREFILL_S
    assert m.end_to_end_tokens_per_s == pytest.approx(NEW / m.wall_s)
    assert m.decode_tokens_per_s == pytest.approx((NEW - 1) / m.decode_s)
    assert m.decode_tokens_per_s > m.end_to_end_tokens_per_s > 0
    assert m.to_json()[DECODE_RATE] == m.decode_tokens_per_s and "tokens_per_s" not in m.to_json()

    rep = run_bench(slow, [Question("q", "x", prompt)],
                    BenchConfig("ar,grid", grid_setting=(2, 3), max_new_tokens=NEW, warmups=1), out_dir=tmp_path,
                    progress=False)
    grid = rep["methods"]["grid"]
    assert grid[DECODE_RATE] > grid[END_TO_END_RATE] > 0 and "tokens_per_s" not in grid
    assert rep["settings"]["headline_rate"] == END_TO_END_RATE
    assert rep["paired"]["grid/ar"]["rate"] == END_TO_END_RATE
    md = (tmp_path / "report.md").read_text()
    assert RATE_LABELS[END_TO_END_RATE] in md and RATE_LABELS[DECODE_RATE] in md
    # grid.json (`ltd tune grid --confirm`) names its measured rates after the same quantities
    assert (MEASURED_DECODE, MEASURED_END_TO_END) == (f"measured_{DECODE_RATE}", f"measured_{END_TO_END_RATE}")


def test_hf_prompt_lookup_is_a_lossless_peer(pair):
    """transformers' prompt lookup decoding as a bench method: greedy, equal to ar, its draft length
    from --hf-tokens; refused at T > 0 in one line."""
    loop = [5, 6, 7, 8, 9, 10, 11, 12] * 3  # a prompt that repeats itself: candidates to look up
    rep = run_bench(pair, [Question("rep", "copy", loop)], BenchConfig("ar,hf-prompt-lookup", max_new_tokens=NEW,
                                                                     repeats=1, warmups=0, hf_tokens=4),
                    progress=False)
    m = rep["methods"]["hf-prompt-lookup"]
    assert m["exact_match"] and m["settings"] == {"prompt_lookup_num_tokens": 4} and m["tau"] >= 1
    with pytest.raises(LTDError, match="greedy only"):
        BenchConfig("ar,hf-prompt-lookup", temperature=0.7).validate()
