"""The tree speculative decoder: losslessness (greedy and sampled), self-draft, KV cache, errors."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from helpers import assert_greedy_equal, hf_greedy, law_pair, tiny_llama
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import Eagle3Drafter, LMDrafter
from realrun.eagle3 import random_head



SETTINGS = [  # (top_k, depth, V): chain, shallow/deep trees, V=0 (plain step), V=1, V beyond the pool
    (1, 1, 1), (1, 5, 5), (3, 1, 3), (3, 4, 10), (4, 8, 60), (10, 8, 60), (4, 3, 0), (5, 2, 1), (2, 3, 10_000),
]


@pytest.mark.parametrize("top_k,depth,size", SETTINGS)
def test_greedy_lossless_lm_drafter(tiny_target, tiny_draft, top_k, depth, size):
    prompt = torch.randint(0, 256, (10,), generator=torch.Generator().manual_seed(top_k * 31 + depth))
    reference = hf_greedy(tiny_target, prompt, 48)
    result = generate(tiny_target, prompt, LMDrafter(tiny_draft, 256),
                      DecodeConfig(max_new_tokens=48, top_k=top_k, max_depth=depth),
                      StaticDepth(depth), StaticSize(size))
    assert_greedy_equal(tiny_target, prompt, result.token_ids, reference)
    for c in result.cycles:
        assert c.depth <= depth and c.size <= size and c.accepted <= c.depth
        assert c.total_s >= c.draft_s + c.verify_s - 1e-9
    if size > 0:
        assert result.tau > 1.1, "a close draft should get draft tokens accepted"


@pytest.mark.parametrize("top_k,depth,size", [(1, 4, 4), (4, 3, 12), (10, 8, 60), (3, 2, 0)])
def test_greedy_lossless_eagle3_drafter(tiny_target, top_k, depth, size):
    prompt = torch.randint(0, 256, (9,), generator=torch.Generator().manual_seed(depth))
    reference = hf_greedy(tiny_target, prompt, 40)
    head = random_head(tiny_target, draft_vocab_size=128, seed=depth)
    result = generate(tiny_target, prompt, Eagle3Drafter(head, 256),
                      DecodeConfig(max_new_tokens=40, top_k=top_k, max_depth=depth),
                      StaticDepth(depth), StaticSize(size))
    assert_greedy_equal(tiny_target, prompt, result.token_ids, reference)


def test_autoregressive_path_matches_generate(tiny_target):
    prompt = torch.arange(5, 17)
    result = generate(tiny_target, prompt, None, DecodeConfig(max_new_tokens=30))
    assert_greedy_equal(tiny_target, prompt, result.token_ids, hf_greedy(tiny_target, prompt, 30))
    assert all(c.accepted == 0 and c.size == 0 for c in result.cycles)
    assert result.tau == 1.0 and len(result.cycles) == 29  # the first token comes from the prefill


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_self_draft_accepts_every_token(tiny_target, depth):
    """With the target as its own draft, a chain (top-k 1) is always accepted in full."""
    prompt = torch.arange(3, 13)
    result = generate(tiny_target, prompt, LMDrafter(tiny_target, 256),
                      DecodeConfig(max_new_tokens=40, top_k=1, max_depth=depth), StaticDepth(depth),
                      StaticSize(depth))
    assert [c.accepted for c in result.cycles] == [c.depth for c in result.cycles]
    assert all(c.depth == depth for c in result.cycles[:-1])
    assert result.tau == pytest.approx(depth + 1, abs=0.5)


def test_self_draft_tree_accepts_greedy_chain(tiny_target):
    """With the target as its own draft, every cycle accepts exactly the longest prefix of the
    target's greedy continuation that the tree holds (EAGLE-2's beam may prune the chain when the
    model is unsure; that is the drafting rule, not a verification loss)."""
    from ltd_sim.tree import accepted_length_on_trace

    prompt = torch.arange(20, 30)
    reference = hf_greedy(tiny_target, prompt, 60)
    trees = []
    result = generate(tiny_target, prompt, LMDrafter(tiny_target, 256),
                      DecodeConfig(max_new_tokens=40, top_k=3, max_depth=4), StaticDepth(4),
                      StaticSize(10_000), on_cycle=lambda tree, rec: trees.append(tree))
    pos = 0
    for tree, cycle in zip(trees, result.cycles):
        continuation = np.array(reference[pos + 1:pos + 1 + tree.depth])
        assert cycle.accepted == accepted_length_on_trace(tree, tree.depth, 10_000, continuation)
        pos += cycle.accepted + 1
    assert result.tau > 3.0


def test_kv_cache_equals_fresh_prefill(tiny_target, tiny_draft):
    prompt = torch.arange(40, 52)
    result = generate(tiny_target, prompt, LMDrafter(tiny_draft, 256),
                      DecodeConfig(max_new_tokens=37, top_k=4, max_depth=5), StaticDepth(5), StaticSize(16),
                      keep_cache=True)
    assert result.tau > 1.2  # trees were accepted, so compaction with gaps really happened
    cache = result.extra["cache"]
    committed = torch.cat((prompt, torch.tensor(result.token_ids[:-1])))  # the root is not in the cache
    from transformers import DynamicCache

    fresh = DynamicCache()
    with torch.no_grad():
        tiny_target(committed[None], cache=fresh, use_cache=True)
    assert cache.get_seq_length() == len(committed)
    for ours, ref in zip(cache.layers, fresh.layers):
        torch.testing.assert_close(ours.keys, ref.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.values, ref.values, atol=1e-4, rtol=1e-4)


def test_eos_and_context_limit_stop(tiny_target, tiny_draft):
    prompt = torch.arange(60, 70)
    ref = hf_greedy(tiny_target, prompt, 30)
    eos = ref[12]
    first = ref.index(eos)
    result = generate(tiny_target, prompt, LMDrafter(tiny_draft, 256),
                      DecodeConfig(max_new_tokens=30, top_k=3, max_depth=4), eos_ids={eos})
    assert result.stop_reason == "eos" and result.token_ids == ref[: first + 1]
    limited = generate(tiny_target, prompt, LMDrafter(tiny_draft, 256),
                       DecodeConfig(max_new_tokens=100, top_k=3, max_depth=8), context_limit=len(prompt) + 17)
    assert limited.stop_reason == "context" and len(prompt) + len(limited.token_ids) == len(prompt) + 17
    assert_greedy_equal(tiny_target, prompt, limited.token_ids, ref[:17])


# ----------------------------------------------------------------------------------------------
# Sampling (T > 0): the output distribution equals the target's
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampling_matches_target_distribution(top_p):
    from realrun.exact_law import sampling_law_check

    target, draft = law_pair()
    law = sampling_law_check(target, draft, torch.tensor([1, 2, 3, 4]), temperature=1.0, top_p=top_p,
                             steps=3, n=1500, top_k=2, depth=3, size=6)
    assert law.accepted_draft_tokens > law.samples // 4, "the tree path must be exercised under sampling"
    assert law.tv_plain < law.bound, (law.tv_plain, law.bound)
    assert law.tv_speculative < law.bound, (law.tv_speculative, law.bound)


# ----------------------------------------------------------------------------------------------
# Clear errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(top_k=0), "top-k"), (dict(max_depth=0), "depth"), (dict(max_depth=65), "depth"),
    (dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top-p"), (dict(max_new_tokens=0), "max-new"),
])
def test_bad_options_fail_clearly(tiny_target, tiny_draft, kwargs, match):
    with pytest.raises(LTDError, match=match):
        generate(tiny_target, torch.arange(5), LMDrafter(tiny_draft, 256), DecodeConfig(**kwargs))


def test_prompt_longer_than_context(tiny_target):
    with pytest.raises(LTDError, match="context"):
        generate(tiny_target, torch.zeros(600, dtype=torch.long), None, DecodeConfig())


def test_draft_vocabulary_must_fit(tiny_target):
    small = tiny_llama(seed=3, vocab=128)
    with pytest.raises(LTDError, match="vocabulary"):
        LMDrafter(small, 256)


def test_missing_models_fail_clearly(tmp_path):
    from realrun.loading import load_pair

    with pytest.raises(LTDError, match="no Hugging Face model"):
        load_pair(target=str(tmp_path / "nothing"))
    with pytest.raises(LTDError, match="no draft model"):
        load_pair(target=str(tmp_path), draft=str(tmp_path / "nothing"), draft_kind="lm")
