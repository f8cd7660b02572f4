"""The pre-allocated KV caches: the target's cache after decoding equals a fresh prefill of what was
committed (tree cycles that keep non-prefix paths, growth past the initial allocation, fp32 and bf16),
compaction and crops happen in place, and the EAGLE-3 head's cache behaves like a concatenated one."""

from __future__ import annotations

import pytest
import torch

from helpers import noisy_copy, tiny_llama
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import Eagle3Drafter, LMDrafter
from realrun.eagle3 import HeadCache, random_head
from realrun.kv_cache import KVStore, PreallocatedCache, cache_kwargs

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


class CountingCache(PreallocatedCache):
    """The real cache, counting the cycles whose kept entries were not a prefix (a real compaction)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compactions = 0

    def keep_entries(self, start, keep_local):
        self.compactions += keep_local != list(range(len(keep_local)))
        super().keep_entries(start, keep_local)


PROMPT = torch.tensor([5, 99, 17, 200, 3, 64, 128, 77, 31, 250, 9, 180])  # a varied continuation


@pytest.fixture(scope="module")
def pair_by_dtype():
    pairs = {}
    for dtype in (torch.float32, torch.bfloat16):
        target = tiny_llama(seed=0).to(dtype)
        pairs[dtype] = (target, noisy_copy(target, 0.15))
    return pairs


def _assert_cache_is_prefill(target, cache, committed, dtype) -> None:
    from transformers import DynamicCache

    fresh = DynamicCache()
    with torch.no_grad():
        target(committed[None], **cache_kwargs(target, fresh), use_cache=True)
    assert cache.get_seq_length() == len(committed)
    tol = TOLERANCE[dtype]
    for ours, ref in zip(cache.layers, fresh.layers):
        torch.testing.assert_close(ours.keys, ref.keys, atol=tol, rtol=tol)
        torch.testing.assert_close(ours.values, ref.values, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("drafter_kind", ["lm", "eagle3"])
def test_kv_after_decoding_equals_fresh_prefill(pair_by_dtype, dtype, drafter_kind):
    target, draft = pair_by_dtype[dtype]
    drafter = (LMDrafter(draft, 256) if drafter_kind == "lm"
               else Eagle3Drafter(random_head(target, 128, seed=3), 256))
    prompt = PROMPT
    cache = CountingCache.for_model(target, capacity=16, step=16)  # 12 prompt + 60 new: grows 3 times
    result = generate(target, prompt, drafter, DecodeConfig(max_new_tokens=60, top_k=4, max_depth=5),
                      StaticDepth(5), StaticSize(16), cache=cache, keep_cache=True)
    assert result.extra["cache"] is cache and cache.capacity > 64
    if drafter_kind == "lm":  # the noisy copy is accepted often, on side branches too
        assert result.tau > 1.2 and cache.compactions >= 1
    committed = torch.cat((prompt, torch.tensor(result.token_ids[:-1])))  # the root is not in the cache
    _assert_cache_is_prefill(target, cache, committed, dtype)


def test_default_cache_matches_dynamic_cache_output(pair_by_dtype):
    """The decoder's output is the same with the pre-allocated cache as with transformers' own."""
    from transformers import DynamicCache

    class ConcatCache(DynamicCache):  # the former path: concatenation per kept entry set
        def keep_entries(self, start, keep_local):
            index = torch.as_tensor([start + i for i in keep_local])
            for layer in self.layers:
                layer.keys = torch.cat((layer.keys[..., :start, :], layer.keys.index_select(-2, index)), dim=-2)
                layer.values = torch.cat((layer.values[..., :start, :], layer.values.index_select(-2, index)), dim=-2)

    target, draft = pair_by_dtype[torch.float32]
    cfg = DecodeConfig(max_new_tokens=40, top_k=3, max_depth=4)
    prompt = PROMPT
    ours = generate(target, prompt, LMDrafter(draft, 256), cfg, StaticDepth(4), StaticSize(10))
    theirs = generate(target, prompt, LMDrafter(draft, 256), cfg, StaticDepth(4), StaticSize(10), cache=ConcatCache())
    assert ours.token_ids == theirs.token_ids
    assert [c.accepted for c in ours.cycles] == [c.accepted for c in theirs.cycles]


def test_store_compacts_in_place_and_crops_free():
    store = KVStore(slots=3, capacity=8, step=8)
    rows = torch.arange(3 * 2 * 1 * 2 * 10 * 4, dtype=torch.float32).view(3, 2, 1, 2, 10, 4)
    data = store.ensure(rows[0, 0], 10)  # 10 > 8: allocated at 16
    assert store.capacity == 16
    data[..., :10, :] = rows
    pointer = data.data_ptr()
    new_length = store.keep(start=4, length=10, keep_local=[0, 2, 5])
    assert new_length == 7 and store.data.data_ptr() == pointer  # moved in place, nothing reallocated
    torch.testing.assert_close(store.data[..., :4, :], rows[..., :4, :])
    torch.testing.assert_close(store.data[..., 4:7, :], rows[..., [4, 6, 9], :])
    assert store.keep(start=4, length=7, keep_local=[0, 1]) == 6  # a prefix: a length change only
    with pytest.raises(LTDError, match="cannot keep"):
        store.keep(start=4, length=7, keep_local=[0, 5])
    with pytest.raises(LTDError, match="share one KV shape"):
        store.ensure(torch.zeros(1, 3, 1, 4), 8)
    store.ensure(rows[0, 0], 40)  # growth keeps the stored entries
    assert store.capacity >= 40
    torch.testing.assert_close(store.data[..., 4:7, :], rows[..., [4, 6, 9], :])


def test_layers_return_views_of_the_store():
    cache = PreallocatedCache(num_layers=2, capacity=8, step=8)
    k = torch.randn(1, 2, 3, 4)
    keys, values = cache.update(k, k + 1, layer_idx=1)
    assert keys.data_ptr() == cache.store.data[1, 0].data_ptr()  # a view: no copy of the past
    torch.testing.assert_close(cache.layers[1].keys, k)
    cache.update(k, k, layer_idx=0)
    cache.crop(-2)
    assert cache.get_seq_length() == 1 and cache.layers[1].values.shape[-2] == 1
    assert cache.get_mask_sizes(5, 0) == (6, 0)
    with pytest.raises(ValueError):
        cache.crop(3)


def test_head_cache_appends_in_place_and_grows():
    cache = HeadCache(capacity=4, step=4)
    chunks = [torch.randn(1, 2, n, 8) for n in (3, 2, 6)]
    for c in chunks:
        keys, values = cache.append(c, -c)
    torch.testing.assert_close(keys, torch.cat(chunks, dim=-2))
    torch.testing.assert_close(values, -torch.cat(chunks, dim=-2))
    assert len(cache) == 11 and cache.store.capacity >= 11
    cache.crop(4)
    keys, _ = cache.append(chunks[1], chunks[1])
    torch.testing.assert_close(keys, torch.cat((chunks[0], chunks[1][..., :1, :], chunks[1]), dim=-2))
