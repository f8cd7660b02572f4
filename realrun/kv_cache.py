"""Pre-allocated KV caches: the target's (a transformers `Cache`) and the store the drafters share.

Why: transformers' `DynamicCache` concatenates the whole cache of a layer on every forward, and a tree
cycle that kept a non-prefix path used to concatenate it once more; at long contexts on a GPU these
copies dominate the cycle. Here the keys and values of every layer live in one buffer
`[layers, 2, batch, kv_heads, capacity, head_dim]`, allocated once and grown in large steps when a
generation outgrows it. A forward writes its new entries in place and attends over views of the valid
prefix (no copy of the past); `keep_entries` moves a cycle's accepted entries in place (two kernels for
the whole model, whatever the context); a crop only changes the length.

All entries are kept, as `DynamicLayer` keeps them: sliding-window layers see the full cache and the
window lives in the attention mask (`DynamicSlidingWindowLayer`'s rolling buffer could not be
compacted by position).
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ltd_sim.errors import LTDError

#: allocation granularity in tokens: capacities are multiples of it
STEP = 256


def round_up(n: int, step: int = STEP) -> int:
    return max(step, -(-int(n) // step) * step)


def grown_capacity(capacity: int, needed: int, step: int = STEP) -> int:
    """The next capacity when `needed` entries do not fit: at least 1.5x, so growth stays rare."""
    return round_up(max(needed, capacity + max(step, capacity // 2)), step)


class KVStore:
    """One buffer `[slots, 2, *shape]` whose dim -2 (the sequence) is pre-allocated and grown in steps.

    `shape` = (batch, heads, capacity, head_dim) is taken from the first entries written; every slot
    (a model layer) must have that shape and dtype."""

    def __init__(self, slots: int, capacity: int, step: int = STEP):
        self.slots = slots
        self.step = step
        self.capacity = round_up(capacity, step)
        self.data: torch.Tensor | None = None

    def ensure(self, like: torch.Tensor, needed: int) -> torch.Tensor:
        """The buffer, allocated like `like` ([batch, heads, n, head_dim]) with room for `needed`."""
        if self.data is None:
            b, h, _, d = like.shape
            self.capacity = max(self.capacity, round_up(needed, self.step))
            self.data = torch.empty((self.slots, 2, b, h, self.capacity, d), dtype=like.dtype, device=like.device)
        elif (like.shape[0], like.shape[1], like.shape[3]) != (self.data.shape[2], self.data.shape[3],
                                                                 self.data.shape[5]) or like.dtype != self.data.dtype:
            raise LTDError(f"KV entries of shape {tuple(like.shape)} ({like.dtype}) do not fit a cache of "
                           f"{tuple(self.data.shape)} ({self.data.dtype}): the pre-allocated cache needs every "
                           "layer to share one KV shape")
        if needed > self.capacity:
            self._grow(grown_capacity(self.capacity, needed, self.step))
        return self.data

    def _grow(self, capacity: int) -> None:
        old = self.data
        shape = list(old.shape)
        shape[-2] = capacity
        self.data = torch.empty(shape, dtype=old.dtype, device=old.device)
        self.data[..., : old.shape[-2], :].copy_(old)
        self.capacity = capacity

    def keep(self, start: int, length: int, keep_local: list[int]) -> int:
        """Move entries `start + keep_local[i]` to `start + i` in every slot, in place; entries below
        `start` are untouched. Returns the new length. A prefix (`keep_local` = 0..n-1) moves nothing:
        the chain case is free."""
        n = len(keep_local)
        if self.data is None or keep_local == list(range(n)):
            return start + n
        if start + max(keep_local) >= length:
            raise LTDError(f"cannot keep entries {keep_local} after {start}: the cache holds {length}")
        # no host sync: a non-blocking copy from pageable memory is staged before the call returns
        index = torch.as_tensor([start + i for i in keep_local], dtype=torch.long).to(self.data.device, non_blocking=True)
        # index_select materialises the kept rows first, so overlapping source and destination is safe
        self.data[..., start:start + n, :] = self.data.index_select(-2, index)
        return start + n


class PreallocatedLayer(CacheLayerMixin):
    """One model layer's view of a shared `KVStore`: writes in place, returns views of the valid prefix."""

    is_sliding = False
    is_croppable = True
    is_compileable = False
    supports_early_init = False

    def __init__(self, store: KVStore, slot: int):
        # CacheLayerMixin.__init__ would assign keys/values, which are views computed here
        self.store = store
        self.slot = slot
        self.length = 0

    @property
    def is_initialized(self) -> bool:
        return self.store.data is not None

    @property
    def keys(self) -> torch.Tensor | None:
        data = self.store.data
        return None if data is None else data[self.slot, 0, :, :, : self.length]

    @property
    def values(self) -> torch.Tensor | None:
        data = self.store.data
        return None if data is None else data[self.slot, 1, :, :, : self.length]

    @property
    def device(self) -> torch.device | None:
        return None if self.store.data is None else self.store.data.device

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.store.ensure(key_states, key_states.shape[-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        data = self.store.ensure(key_states, end)[self.slot]
        data[0, :, :, self.length:end].copy_(key_states)
        data[1, :, :, self.length:end].copy_(value_states)
        self.length = end
        return data[0, :, :, :end], data[1, :, :, :end]

    def get_mask_sizes(self, query_length: int, *args) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1  # grows on demand

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.length = max(0, self.length + tokens_to_remove)

    def reset(self) -> None:
        self.length = 0

    def offload(self):
        raise LTDError("the pre-allocated KV cache does not offload")

    prefetch = offload

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise LTDError("the pre-allocated KV cache does not reorder beams")


class PreallocatedCache(Cache):
    """The target's (or an LM drafter's) KV cache: every layer in one pre-allocated `KVStore`.

    Accepted as `cache=` (`past_key_values=` on transformers before 5.18; see `cache_kwargs`)."""

    def __init__(self, num_layers: int, capacity: int = 4 * STEP, step: int = STEP):
        if num_layers < 1:
            raise LTDError(f"a KV cache needs at least one layer, got {num_layers}")
        self.store = KVStore(num_layers, capacity, step)
        super().__init__(layers=[PreallocatedLayer(self.store, i) for i in range(num_layers)])

    @classmethod
    def for_model(cls, model: torch.nn.Module, capacity: int = 4 * STEP, step: int = STEP) -> "PreallocatedCache":
        config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") \
            else model.config
        return cls(int(config.num_hidden_layers), capacity, step)

    @property
    def capacity(self) -> int:
        return self.store.capacity

    def truncate(self, length: int) -> None:
        """Keep the first `length` entries: a length change, nothing moves."""
        for layer in self.layers:
            layer.length = min(layer.length, length)

    def keep_entries(self, start: int, keep_local: list[int]) -> None:
        """After a forward appended entries at `start`, keep only `start + keep_local` (in place)."""
        length = self.get_seq_length()
        new_length = self.store.keep(start, length, keep_local)
        for layer in self.layers:
            layer.length = new_length


@functools.lru_cache(maxsize=None)
def _cache_kwarg(model_cls: type) -> str:
    """The name transformers' forward takes the cache under: `cache` from 5.18 on (`past_key_values`
    still accepted there with a deprecation warning), `past_key_values` before (5.17 ignores `cache`)."""
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache) -> dict:
    """`{name: cache}` for `model(**...)`, under the name this transformers version reads."""
    return {_cache_kwarg(type(model)): cache}
