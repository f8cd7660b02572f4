"""N-gram branches (realrun/ngram.py): proposals, the incremental index, merged siblings, losslessness alone
and joined to the lm and EAGLE-3 drafters (greedy and T > 0), the drafters' own state, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import assert_greedy_equal, byte_tokenizer, hf_greedy, law_pair, noisy_copy, tiny_llama
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from ltd_sim.tree import DraftTree, local_parents, select_verify_set
from realrun.decoder import DecodeConfig, draft_tree, generate, prefill
from realrun.drafters import Eagle3Drafter, LMDrafter, NgramDrafter
from realrun.eagle3 import random_head
from realrun.ngram import (SOURCE_HEAD, SOURCE_NGRAM, NgramCalibration, NgramConfig, NgramProposal, NgramProposer,
                           index_of, merge_proposal, propose, write_corpus)

PRIOR = NgramCalibration.prior()


def _propose(tokens, depth=4, corpus=None, **cfg) -> NgramProposal:
    config = NgramConfig(**cfg)
    return propose(index_of(tokens, config), index_of_corpus(corpus, config), config, PRIOR, depth)


def index_of_corpus(sequences, cfg):
    if sequences is None:
        return None
    from realrun.ngram import corpus_index

    return corpus_index({"vocab_size": 100, "sequences": sequences}, "corpus", cfg, 100)


def branches(p: NgramProposal) -> dict[tuple[int, ...], float]:
    """Every trie node as its root-to-node token path -> score."""
    paths: list[tuple[int, ...]] = []
    for j in range(len(p)):
        prefix = () if p.parents[j] < 0 else paths[p.parents[j]]
        paths.append(prefix + (int(p.tokens[j]),))
    return {path: float(p.scores[j]) for j, path in enumerate(paths)}


# ----------------------------------------------------------------------------------------------
# Proposals on hand-made contexts
# ----------------------------------------------------------------------------------------------

def test_longest_match_wins():
    # suffix [1, 2, 3] occurred once (then 9); the shorter [2, 3] also occurred later (then 7)
    p = _propose([1, 2, 3, 9, 8, 5, 2, 3, 7, 4, 1, 2, 3], depth=2, ngram_min=1, ngram_max=3)
    assert p.match_len == 3 and p.matches == 1
    assert set(branches(p)) == {(9,), (9, 8)}
    m = 3  # the prior: P(first j tokens accepted) = m / (m + j); one occurrence, share 1
    assert branches(p)[(9, 8)] == pytest.approx(np.log(m / (m + 2)), abs=1e-6)


def test_several_occurrences_make_a_trie_with_shares():
    ctx = [7, 1, 2, 6, 7, 1, 3, 6, 7, 1, 2, 5, 7, 1]
    p = _propose(ctx, depth=3, ngram_min=2, ngram_max=2)
    got = branches(p)
    assert p.match_len == 2 and p.matches == 3
    assert set(got) == {(2,), (2, 5), (2, 5, 7), (2, 6), (2, 6, 7), (3,), (3, 6), (3, 6, 7)}
    assert got[(2,)] == pytest.approx(np.log(2 / 3) + np.log(2 / 3), abs=1e-6)  # share 2/3, then m/(m+1)
    assert got[(3,)] == pytest.approx(np.log(1 / 3) + np.log(2 / 3), abs=1e-6)
    assert list(p.depths) == sorted(p.depths) and all(p.parents[j] < j for j in range(len(p)))
    few = _propose(ctx, depth=3, ngram_min=2, ngram_max=2, max_branches=1)  # the most recent occurrence only
    assert set(branches(few)) == {(2,), (2, 5), (2, 5, 7)}


def test_no_match_and_the_minimum_length():
    assert len(_propose([1, 2, 3, 4, 5], ngram_min=1)) == 0
    assert _propose([1, 2, 3, 4, 5], ngram_min=1).match_len == 0
    # [.., 4, 2] never occurred: with ngram_min 2 nothing matches, with 1 the lone [2] does
    ctx = [1, 2, 3, 4, 2]
    assert len(_propose(ctx, ngram_min=2)) == 0
    assert set(branches(_propose(ctx, depth=2, ngram_min=1))) == {(3,), (3, 4)}


def test_corpus_matches_stop_at_sequence_ends():
    corpus = [[50, 60, 70, 80], [11, 12, 13, 14, 15], [99, 12, 13]]
    p = _propose([1, 2, 11, 12, 13], depth=4, corpus=corpus, ngram_min=2, ngram_max=3)
    assert p.match_len == 3 and set(branches(p)) == {(14,), (14, 15)}  # cut at the sequence's end
    both = _propose([1, 2, 12, 13], depth=2, corpus=corpus, ngram_min=2, ngram_max=3)
    # [12, 13] ends sequence 3 (no continuation, counted) and occurs in sequence 2 (then 14)
    assert both.match_len == 2 and both.matches == 2 and set(branches(both)) == {(14,), (14, 15)}
    # a match in the context comes first, the corpus fills the remaining branches
    mixed = _propose([12, 13, 40, 12, 13], depth=1, corpus=corpus, ngram_min=2, ngram_max=2)
    assert set(branches(mixed)) == {(40,), (14,)}


def _brute_force(tokens, depth, nmin, nmax, max_branches):
    """The proposal's branches by scanning the whole context (the reference for the index)."""
    for n in range(min(nmax, len(tokens)), nmin - 1, -1):
        suffix = tokens[-n:]
        ends = [e for e in range(n, len(tokens)) if tokens[e - n:e] == suffix]
        if ends:
            used = ends[::-1][:max_branches]
            conts = [tuple(tokens[e:e + depth]) for e in used]
            paths = {c[:j] for c in conts for j in range(1, len(c) + 1)}
            return n, len(ends), paths
    return 0, 0, set()


def test_incremental_index_equals_a_rescan():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, size=300).tolist()
    cfg = NgramConfig(ngram_min=2, ngram_max=5, max_branches=3)
    proposer = NgramProposer(cfg)
    proposer.begin(tokens[:5])
    for t in range(5, len(tokens)):
        proposer.commit([tokens[t]])
        ctx = tokens[:t + 1]
        live = proposer.propose(4)
        fresh = propose(index_of(ctx, cfg), None, cfg, PRIOR, 4)
        assert branches(live) == branches(fresh)
        n, matches, paths = _brute_force(ctx, 4, 2, 5, 3)
        assert (live.match_len, live.matches, set(branches(live))) == (n, matches, paths)


def test_a_shallower_proposal_is_the_deeper_one_cut():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 3, size=120).tolist()
    deep, shallow = _propose(tokens, depth=8, max_branches=4), _propose(tokens, depth=3, max_branches=4)
    assert branches(shallow) == {k: v for k, v in branches(deep).items() if len(k) <= 3}


def test_calibration_prior_save_and_load(tmp_path):
    prior = NgramCalibration.prior(rows=4, cols=6)
    for m in (1, 2, 4, 9):  # rows beyond the table use its last row
        assert prior.cumulative(m, 3)[-1] == pytest.approx(np.log(min(m, 4) / (min(m, 4) + 3)))
    assert prior.cumulative(2, 10).shape == (10,) and np.all(np.diff(prior.cumulative(2, 10)) <= 0)
    prior.save(tmp_path / "cal.json")
    back = NgramCalibration.load(tmp_path / "cal.json")
    assert np.array_equal(back.log_rate, prior.log_rate) and not back.fitted
    (tmp_path / "bad.json").write_text(json.dumps({**prior.to_json(), "log_rate": [[0.1]]}))
    with pytest.raises(LTDError, match="<= 0"):
        NgramCalibration.load(tmp_path / "bad.json")
    with pytest.raises(LTDError, match="ngram-calibration"):
        NgramCalibration.load(tmp_path / "missing.json")


# ----------------------------------------------------------------------------------------------
# Merged siblings
# ----------------------------------------------------------------------------------------------

def _head_tree():
    # root -> 4 (-0.2), 5 (-1.0); 4 -> 8 (-0.5); 5 -> 6 (-1.5)
    return DraftTree(np.array([1, 4, 5, 8, 6]), np.array([-1, 0, 0, 1, 2]),
                     np.array([0, -0.2, -1.0, -0.5, -1.5], np.float32), np.array([0, 1, 1, 2, 2], np.int8))


def _proposal(paths_scores):
    tokens, parents, depths, scores, where = [], [], [], [], {}
    for path, score in paths_scores:  # paths in depth order, parents listed first
        where[path] = len(tokens)
        tokens.append(path[-1]), parents.append(where.get(path[:-1], -1)), depths.append(len(path))
        scores.append(score)
    return NgramProposal(2, 2, np.array(tokens), np.array(parents), np.array(depths), np.array(scores, np.float32),
                         np.zeros(len(tokens), np.float32))


def test_siblings_with_the_same_token_are_merged():
    prop = _proposal([((5,), -0.3), ((7,), -0.9), ((5, 6), -0.6), ((5, 9), -0.8), ((5, 6, 3), -0.7)])
    tree = merge_proposal(_head_tree(), prop)
    nodes = {}
    for i in range(tree.num_nodes):
        path = (nodes[tree.parents[i]][0] if i else ()) + ((int(tree.tokens[i]),) if i else ())
        nodes[i] = (path, float(tree.scores[i]), int(tree.sources[i]), int(tree.steps[i]))
    by_path = {v[0]: v[1:] for v in nodes.values()}
    assert by_path[(5,)] == (pytest.approx(-0.3), SOURCE_HEAD | SOURCE_NGRAM, 1)  # merged: the larger score
    assert by_path[(5, 6)] == (pytest.approx(-0.6), SOURCE_HEAD | SOURCE_NGRAM, 2)
    assert by_path[(4,)] == (pytest.approx(-0.2), SOURCE_HEAD, 1)
    assert by_path[(7,)][1:] == (SOURCE_NGRAM, 1) and by_path[(5, 6, 3)][1:] == (SOURCE_NGRAM, 3)
    assert tree.num_nodes == 1 + 4 + 3  # 8 distinct paths: the root, 4 head nodes, 3 new n-gram ones
    _check_tree(tree)
    assert tree.truncated(1).num_nodes == 4 and tree.truncated(2).num_nodes == 7


def _check_tree(tree):
    """Step order, distinct siblings, no node above its parent, every verify set connected."""
    assert np.all(np.diff(tree.steps.astype(int)) >= 0)
    assert all(tree.parents[i] < i for i in range(1, tree.num_nodes))
    pairs = [(int(tree.parents[i]), int(tree.tokens[i])) for i in range(1, tree.num_nodes)]
    assert len(pairs) == len(set(pairs)), "siblings must carry distinct tokens"
    assert all(tree.scores[i] <= tree.scores[tree.parents[i]] for i in range(1, tree.num_nodes))
    for size in range(tree.num_nodes):
        local_parents(tree.parents, select_verify_set(tree.scores, size))  # raises if not connected


# ----------------------------------------------------------------------------------------------
# Greedy losslessness
# ----------------------------------------------------------------------------------------------

def _repetitive_prompt(seed: int) -> torch.Tensor:
    piece = torch.randint(0, 256, (6,), generator=torch.Generator().manual_seed(seed))
    return torch.cat((piece, piece, piece[:4]))


def _run(target, prompt, drafter, top_k, depth, size, n=40):
    trees = []
    result = generate(target, prompt, drafter, DecodeConfig(max_new_tokens=n, top_k=top_k, max_depth=depth),
                      StaticDepth(depth), StaticSize(size), on_cycle=lambda tree, rec: trees.append(tree))
    for tree in trees:
        _check_tree(tree)
    return result, trees


@pytest.mark.parametrize("top_k,depth,size", [(1, 4, 4), (3, 4, 10), (4, 3, 0), (2, 5, 60)])
def test_greedy_lossless_lm_drafter_with_ngram(one_thread, tiny_target, tiny_draft, top_k, depth, size):
    prompt = _repetitive_prompt(top_k * 7 + depth)
    drafter = NgramDrafter(NgramProposer(NgramConfig(ngram_min=1)), LMDrafter(tiny_draft, 256))
    result, trees = _run(tiny_target, prompt, drafter, top_k, depth, size)
    assert_greedy_equal(tiny_target, prompt, result.token_ids, hf_greedy(tiny_target, prompt, 40))
    assert any((t.sources & SOURCE_NGRAM).any() for t in trees), "n-gram branches must join the tree"
    if size > 0:
        assert sum(c.accepted for c in result.cycles) > 0


@pytest.mark.parametrize("top_k,depth,size", [(1, 4, 4), (4, 3, 12), (3, 2, 0)])
def test_greedy_lossless_eagle3_drafter_with_ngram(one_thread, tiny_target, top_k, depth, size):
    prompt = _repetitive_prompt(depth)
    head = random_head(tiny_target, draft_vocab_size=128, seed=depth)
    drafter = NgramDrafter(NgramProposer(NgramConfig(ngram_min=1)), Eagle3Drafter(head, 256))
    result, trees = _run(tiny_target, prompt, drafter, top_k, depth, size)
    assert_greedy_equal(tiny_target, prompt, result.token_ids, hf_greedy(tiny_target, prompt, 40))
    assert any((t.sources & SOURCE_NGRAM).any() for t in trees)


@pytest.mark.parametrize("depth,size", [(5, 10), (3, 1), (8, 0), (1, 60)])
def test_greedy_lossless_ngram_alone(one_thread, tiny_target, depth, size):
    prompt = _repetitive_prompt(11)
    drafter = NgramDrafter(NgramProposer(NgramConfig()), None, vocab_size=256)
    result, trees = _run(tiny_target, prompt, drafter, 4, depth, size, n=60)
    assert_greedy_equal(tiny_target, prompt, result.token_ids, hf_greedy(tiny_target, prompt, 60))
    assert all(t.sources[1:].tolist() == [SOURCE_NGRAM] * (t.num_nodes - 1) for t in trees)
    assert any(t.num_nodes == 1 for t in trees), "cycles without a match are plain decoding steps"
    if size > 0:
        assert sum(c.accepted for c in result.cycles) > 0, "n-gram drafts should be accepted on a repetitive text"
    else:
        assert all(c.accepted == 0 for c in result.cycles)


# ----------------------------------------------------------------------------------------------
# The drafters' own state stays correct although they never drafted the n-gram nodes
# ----------------------------------------------------------------------------------------------

def _fresh_tree(target, fresh, committed, top_k, depth):
    """A new drafter's tree below the last committed token, begun on the whole committed context."""
    context, root = torch.tensor(committed[:-1]), committed[-1]
    features = None
    if fresh.feature_layers:
        from realrun.kv_cache import PreallocatedCache

        _, features = prefill(target, PreallocatedCache.for_model(target), context, fresh.feature_layers)
    fresh.begin(context, root, features)
    return draft_tree(fresh, root, top_k, depth, StaticDepth(depth), len(committed) - 1)


@pytest.mark.parametrize("kind", ["lm", "eagle3"])
def test_drafter_state_after_accepted_ngram_nodes(one_thread, tiny_target, tiny_draft, kind):
    """After a hybrid generation whose cycles accepted n-gram nodes, the model drafter's next tree
    equals the tree of a fresh drafter begun on the same committed context."""
    make = (lambda: LMDrafter(tiny_draft, 256)) if kind == "lm" else \
        (lambda: Eagle3Drafter(random_head(tiny_target, draft_vocab_size=128, seed=4), 256))
    prompt = _repetitive_prompt(5)
    hybrid = NgramDrafter(NgramProposer(NgramConfig(ngram_min=1)), make())
    result, trees = _run(tiny_target, prompt, hybrid, 3, 4, 12)
    assert sum(c.accepted for c in result.cycles) > len(result.cycles) // 2
    committed = hybrid.proposer.context.tokens  # every committed token, the last cycle's included
    ours = draft_tree(hybrid.model, committed[-1], 3, 4, StaticDepth(4), len(committed) - 1)
    fresh = _fresh_tree(tiny_target, make(), committed, 3, 4)
    assert np.array_equal(ours.tokens, fresh.tokens) and np.array_equal(ours.parents, fresh.parents)
    np.testing.assert_allclose(ours.scores, fresh.scores, atol=1e-4)


def test_hybrid_tree_at_a_depth_is_the_deeper_tree_cut(one_thread, tiny_target, tiny_draft):
    """The trace-replay property of DESIGN.md holds for the hybrid tree: drafting D steps gives the tree
    of max_depth steps cut at D, n-gram nodes, merged scores and sources included."""
    prompt = _repetitive_prompt(3)
    context = prompt.tolist() + hf_greedy(tiny_target, prompt, 40)  # the draft predicts what the text repeats
    trees = {}
    for depth in (2, 5):
        drafter = NgramDrafter(NgramProposer(NgramConfig(ngram_min=1)), LMDrafter(tiny_draft, 256))
        drafter.begin(torch.tensor(context[:-1]), context[-1], None)
        trees[depth] = draft_tree(drafter, context[-1], 3, depth, StaticDepth(depth), len(context) - 1)
    cut = trees[5].truncated(2)
    assert (trees[2].sources == SOURCE_NGRAM).any() and (trees[2].sources == SOURCE_HEAD | SOURCE_NGRAM).any()
    for name in ("tokens", "parents", "steps", "sources"):
        assert np.array_equal(getattr(trees[2], name), getattr(cut, name)), name
    np.testing.assert_allclose(trees[2].scores, cut.scores, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# T > 0: the output law is the target's, with merged branches
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def six_token_pair():
    return law_pair()


def test_sampling_law_with_merged_ngram_branches(one_thread, six_token_pair):
    from realrun.exact_law import sampling_law_check

    target, draft = six_token_pair
    prompt = torch.tensor([1, 2, 3, 1, 2, 3, 1])
    make = lambda: NgramDrafter(NgramProposer(NgramConfig(ngram_min=1, ngram_max=2)), LMDrafter(draft, 6))  # noqa: E731
    merged = 0
    for seed in range(20):  # the setting really merges n-gram and draft siblings
        trees = []
        generate(target, prompt, make(), DecodeConfig(max_new_tokens=3, top_k=2, max_depth=3, temperature=1.0,
                                                      seed=seed),
                 StaticDepth(3), StaticSize(6), on_cycle=lambda tree, rec: trees.append(tree))
        merged += sum(int((t.sources == SOURCE_HEAD | SOURCE_NGRAM).sum()) for t in trees)
    assert merged > 0
    law = sampling_law_check(target, draft, prompt, temperature=1.0, steps=3, n=1500, top_k=2, depth=3, size=6,
                             make_drafter=make)
    assert law.accepted_draft_tokens > law.samples // 4
    assert law.tv_plain < law.bound, (law.tv_plain, law.bound)
    assert law.tv_speculative < law.bound, (law.tv_speculative, law.bound)


def test_sampling_law_ngram_alone(one_thread, six_token_pair):
    from realrun.exact_law import sampling_law_check

    target, _ = six_token_pair
    make = lambda: NgramDrafter(NgramProposer(NgramConfig(ngram_min=1, ngram_max=2)), None, vocab_size=6)  # noqa: E731
    law = sampling_law_check(target, None, torch.tensor([1, 2, 3, 1, 2, 3, 1]), temperature=1.0, top_p=0.9,
                             steps=3, n=1000, top_k=2, depth=3, size=6, make_drafter=make)
    assert law.accepted_draft_tokens > law.samples // 10
    assert law.tv_speculative < law.bound, (law.tv_speculative, law.bound)


# ----------------------------------------------------------------------------------------------
# The command line and bad inputs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ngram_models")
    target = tiny_llama(seed=0)
    target.save_pretrained(root / "target")
    noisy_copy(target, 0.15).save_pretrained(root / "draft")
    for name in ("target", "draft"):
        byte_tokenizer().save_pretrained(root / name)
    return root


def _cli(argv, capsys):
    from realrun.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_ngram_alone_and_joined(one_thread, model_dirs, tmp_path, capsys):
    base = ["generate", "--target", str(model_dirs / "target"), "--prompt", "abcabcabcab", "--no-chat",
            "--max-new-tokens", "24", "--top-k", "3", "--depth", "4", "--size", "8", "--json"]
    rc, out, _ = _cli(base, capsys)
    assert rc == 0
    plain = json.loads(out)["token_ids"]
    runs = {}
    write_corpus(tmp_path / "corpus.json", [plain], 256, byte_tokenizer())  # this very output, made earlier
    for name, extra in {"alone": ["--draft-kind", "ngram"],
                        "corpus": ["--draft-kind", "ngram", "--ngram-corpus", str(tmp_path / "corpus.json")],
                        "joined": ["--draft", str(model_dirs / "draft"), "--ngram", "--ngram-min", "1"]}.items():
        rc, out, _ = _cli(base + extra, capsys)
        runs[name] = json.loads(out)
        assert rc == 0 and runs[name]["token_ids"] == plain, name
    accepted = {name: sum(c["accepted"] for c in run["cycles"]) for name, run in runs.items()}
    assert accepted["corpus"] > accepted["alone"] and accepted["joined"] > 0


@pytest.mark.parametrize("extra,match", [
    (["--draft-kind", "ngram", "--ngram-min", "0"], "--ngram-min must be at least 1"),
    (["--draft-kind", "ngram", "--ngram-min", "4", "--ngram-max", "3"], r"--ngram-min \(4\) is above --ngram-max"),
    (["--ngram", "--ngram-corpus", "/nonexistent/corpus.json"], "cannot read --ngram-corpus"),
    (["--draft-kind", "ngram", "--draft", "somewhere"], "takes no --draft"),
])
def test_bad_options_fail_in_one_line(model_dirs, capsys, extra, match):
    import re

    argv = ["generate", "--target", str(model_dirs / "target"), "--prompt", "x", *extra]
    rc, _, err = _cli(argv, capsys)
    assert rc == 2 and re.search(match, err) and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def policy_dirs(tmp_path_factory):
    """Real saved policies of both feature sets (top-k 3, max depth 4; a few PPO updates on synthetic
    traces: quick, not good): "paper_v2" from head traces, "ngram_v1" from the same trees with n-gram
    branches grafted by the real proposer (the traces `--ngram` records)."""
    from stable_baselines3 import PPO

    from ltd_sim.cost_model import AnalyticCostModel
    from ltd_sim.envs import DepthEnv, SizeEnv
    from ltd_sim.policy import save_policies
    from ltd_sim.sim import SimTables
    from ltd_sim.synthetic import synthetic_sequence
    from ltd_sim.trace import HYBRID, TraceSequence

    def with_ngram(seq):
        proposer = NgramProposer(NgramConfig(ngram_min=1))
        proposer.begin(seq.output[:1].tolist())
        trees = []
        for p in range(seq.num_positions):
            trees.append(merge_proposal(seq.tree(p), proposer.propose(seq.max_depth)))
            proposer.commit([int(seq.output[p + 1])])
        return TraceSequence.from_trees(trees, seq.output, seq.context_lens, seq.top_k, seq.max_depth,
                                        draft_sources=HYBRID)

    rng = np.random.default_rng(0)
    head = [synthetic_sequence(rng, k=3, depth=4) for _ in range(2)]
    dirs = {}
    for seqs in (head, [with_ngram(s) for s in head]):
        tables = SimTables.build(seqs, AnalyticCostModel())
        models = [PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu",
                      verbose=0).learn(64) for env in (DepthEnv(tables, partner=3), SizeEnv(tables))]
        dirs[tables.spec.name] = save_policies(tmp_path_factory.mktemp("policy") / "policies", *models, tables.spec)
    assert set(dirs) == {"paper_v2", "ngram_v1"}
    return dirs


def test_policies_must_match_the_ngram_source(one_thread, model_dirs, policy_dirs, capsys):
    """Policies trained without n-gram signals refuse a decoder with an n-gram source, and the reverse,
    in one line before any model loads; ngram_v1 policies drive `--draft-kind ngram` losslessly."""
    base = ["generate", "--target", str(model_dirs / "target"), "--prompt", "abcabcabcab", "--no-chat",
            "--max-new-tokens", "16", "--top-k", "3", "--depth", "4"]
    draft = ["--draft", str(model_dirs / "draft")]
    for extra, match in [
        (["--draft-kind", "ngram", "--policy", str(policy_dirs["paper_v2"])], "trained without n-gram signals"),
        ([*draft, "--ngram", "--policy", str(policy_dirs["paper_v2"])], "trained without n-gram signals"),
        ([*draft, "--policy", str(policy_dirs["ngram_v1"])], "observe n-gram signals"),
    ]:
        rc, _, err = _cli(base + extra, capsys)
        assert rc == 2 and match in err and "feature set" in err and err.count("\n") == 1, (extra, err)
    rc, out, err = _cli(base + ["--json"], capsys)
    assert rc == 0, err
    plain = json.loads(out)["token_ids"]
    for extra in (["--draft-kind", "ngram"], [*draft, "--ngram", "--ngram-min", "1"]):
        rc, out, err = _cli(base + extra + ["--policy", str(policy_dirs["ngram_v1"]), "--json"], capsys)
        assert rc == 0 and json.loads(out)["token_ids"] == plain, (extra, err)


def test_bad_corpora_fail_in_one_line(model_dirs, tmp_path, capsys):
    cases = {
        "other_vocab.json": ({"format": "ltd-ngram-corpus", "version": 1, "vocab_size": 49152, "tokenizer": None,
                              "sequences": [[1, 2, 3]]}, "vocabulary of 49152 tokens"),
        "other_tokenizer.json": ({"format": "ltd-ngram-corpus", "version": 1, "vocab_size": 256,
                                  "tokenizer": "0123456789abcdef", "sequences": [[1, 2]]}, "another tokenizer"),
        "out_of_range.json": ({"format": "ltd-ngram-corpus", "version": 1, "vocab_size": 256, "tokenizer": None,
                               "sequences": [[1, 300]]}, "outside the vocabulary"),
        "not_a_corpus.json": ({"sequences": [[1]]}, "not an ltd-ngram-corpus file"),
    }
    (tmp_path / "broken.json").write_text("{not json")
    cases["broken.json"] = (None, "is not JSON")
    for name, (payload, match) in cases.items():
        if payload is not None:
            (tmp_path / name).write_text(json.dumps(payload))
        argv = ["generate", "--target", str(model_dirs / "target"), "--prompt", "x", "--draft-kind", "ngram",
                "--ngram-corpus", str(tmp_path / name)]
        rc, _, err = _cli(argv, capsys)
        assert rc == 2 and match in err and err.count("\n") == 1, (name, err)
    rc, _, err = _cli(["generate", "--target", str(model_dirs / "target"), "--prompt", "x", "--draft-kind", "ngram",
                       "--ngram-corpus", str(tmp_path)], capsys)  # a folder: unreadable
    assert rc == 2 and "cannot read --ngram-corpus" in err


def test_bench_with_ngram_drafts(one_thread, model_dirs, policy_dirs, tmp_path, capsys):
    """`ltd bench --draft-kind ngram` and `--draft D --ngram`: the decoder methods draft with n-gram
    branches, stay lossless against ar; LTD policies must observe n-gram signals exactly when the decoder
    has an n-gram source (else one line), and ngram_v1 ones bench losslessly."""
    questions = tmp_path / "q.txt"
    questions.write_text("abcabcabcabcabc\nxyzxyzxyzxyz\n")
    base = ["bench", "--target", str(model_dirs / "target"), "--questions", str(questions), "--no-progress",
            "--methods", "ar,grid", "--grid", "4,6", "--max-new-tokens", "16", "--repeats", "1", "--json"]
    for extra in (["--draft-kind", "ngram"], ["--draft", str(model_dirs / "draft"), "--draft-kind", "lm", "--ngram"]):
        rc, out, err = _cli(base + extra, capsys)
        assert rc == 0, err
        grid = json.loads(out)["methods"]["grid"]
        assert grid["exact_match"] and grid["tau"] > 1, extra
    ltd = base[:-7] + ["--methods", "ar,ltd", "--max-new-tokens", "16", "--repeats", "1", "--json"]
    hybrid = ["--draft", str(model_dirs / "draft"), "--draft-kind", "lm", "--ngram"]
    for extra, match in [
        (["--policy", str(policy_dirs["paper_v2"]), "--draft-kind", "ngram"], "trained without n-gram signals"),
        (["--policy", str(policy_dirs["paper_v2"]), *hybrid], "trained without n-gram signals"),
        (["--policy", str(policy_dirs["ngram_v1"]), "--draft", str(model_dirs / "draft"), "--draft-kind", "lm"],
         "observe n-gram signals"),
    ]:
        rc, _, err = _cli(ltd + extra, capsys)
        assert rc == 2 and match in err and err.count("\n") == 1, (extra, err)
    rc, out, err = _cli(ltd + ["--policy", str(policy_dirs["ngram_v1"]), "--draft-kind", "ngram"], capsys)
    assert rc == 0, err
    method = json.loads(out)["methods"]["ltd"]
    assert method["exact_match"] and method["settings"]["features"] == "ngram_v1", method
