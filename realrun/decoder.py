"""The tree speculative decoder: prefill, draft a tree, verify it in one target forward, accept, commit.

Invariant between cycles: the target's KV cache holds every committed token except the last one,
the *root*. A cycle drafts a tree below the root, verifies root + V tree tokens in one forward (a
float 4D tree mask, positions = root position + depth), keeps the KV entries of the root and the
accepted path, and commits the accepted tokens plus the target's own next token (the bonus). With
no drafter, or V = 0, the same loop is plain autoregressive decoding: the root alone is verified.

Phase functions (`prefill`, `draft_tree`, `verify_tree`, `keep_cache_entries`) are public: the
profiler times exactly these.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ltd_sim import defaults
from ltd_sim.control import DepthController, SizeController, StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from ltd_sim.tree import (DraftTree, TreeBuilder, ancestor_mask, greedy_accept, is_chain,
                          local_parents, select_verify_set)
from realrun.drafters import Drafter, float_mask
from realrun.sampling import sample_accept, target_probs


@dataclass
class DecodeConfig:
    """Everything one generation needs besides the models and controllers."""

    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    top_k: int = defaults.TOP_K
    max_depth: int = defaults.MAX_DEPTH
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    def validate(self, has_drafter: bool) -> None:
        if self.max_new_tokens < 1:
            raise LTDError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LTDError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LTDError(f"--top-p must be in (0, 1], got {self.top_p}")
        if has_drafter:
            if not 1 <= self.top_k <= defaults.MAX_TOP_K:
                raise LTDError(f"--top-k must be in 1..{defaults.MAX_TOP_K}, got {self.top_k}")
            if not 1 <= self.max_depth <= defaults.MAX_DEPTH_LIMIT:
                raise LTDError(f"--depth must be in 1..{defaults.MAX_DEPTH_LIMIT}, got {self.max_depth}")


@dataclass
class CycleRecord:
    depth: int  # draft steps taken
    size: int  # V: tree tokens verified with the root
    top_k: int
    accepted: int  # draft tokens accepted
    context_len: int  # tokens in the target's KV cache when the cycle began
    draft_s: float
    verify_s: float
    overhead_s: float
    total_s: float


@dataclass
class GenerationResult:
    token_ids: list[int]  # new tokens only
    cycles: list[CycleRecord]
    prefill_s: float
    wall_s: float
    stop_reason: str  # "eos", "max_new_tokens" or "context"
    extra: dict = field(default_factory=dict)

    @property
    def tau(self) -> float:
        """Mean tokens committed per cycle, bonus token included."""
        if not self.cycles:
            return 0.0
        return float(np.mean([c.accepted + 1 for c in self.cycles]))

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict:
        return {"token_ids": self.token_ids, "cycles": [asdict(c) for c in self.cycles],
                "tau": self.tau, "tokens_per_s": self.tokens_per_s, "wall_s": self.wall_s,
                "prefill_s": self.prefill_s, "stop_reason": self.stop_reason}


class Clock:
    """Wall-clock reads that wait for the device first (CUDA work is asynchronous)."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else None

    def now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()


# --------------------------------------------------------------------------------------------
# Phase functions
# --------------------------------------------------------------------------------------------

def _features(hidden_states, layers: tuple[int, ...] | None, rows) -> torch.Tensor | None:
    """The drafter's input features: chosen hidden-state layers, concatenated, at `rows`."""
    if not layers:
        return None
    return torch.cat([hidden_states[i][0, rows] for i in layers], dim=-1)


@torch.no_grad()
def prefill(target, cache, prompt_ids: torch.Tensor, feature_layers=None):
    """Run the prompt through the target. Returns (logits of the last position, features [n, F])."""
    n = prompt_ids.shape[0]
    out = target(input_ids=prompt_ids[None], position_ids=torch.arange(n, device=prompt_ids.device)[None],
                 cache=cache, use_cache=True, output_hidden_states=bool(feature_layers),
                 logits_to_keep=1)
    return out.logits[0, -1], _features(out.hidden_states, feature_layers, slice(None))


@torch.no_grad()
def draft_tree(drafter: Drafter, root_token: int, top_k: int, max_depth: int,
               depth_ctrl: DepthController, context_len: int) -> DraftTree:
    """Grow the draft tree one step at a time; the depth controller decides after each step."""
    builder = TreeBuilder(root_token, top_k, max_depth)
    while True:
        logp, ids = drafter.expand(builder.beam, builder.tokens, builder.parents, builder.steps, top_k)
        builder.add_step(logp.cpu().numpy(), ids.cpu().numpy())
        if builder.depth >= max_depth or not depth_ctrl.should_continue(builder.tree(), context_len):
            return builder.tree()


@torch.no_grad()
def verify_tree(target, cache, tokens: np.ndarray, parents_local: np.ndarray, positions: np.ndarray,
                feature_layers=None):
    """One target forward over root + tree tokens. Returns (logits [m, V], hidden states or None)."""
    device = cache_device(target)
    m = len(tokens)
    past = cache.get_seq_length()
    mask = None  # a chain is plain causal attention: let transformers build that mask
    if not is_chain(parents_local):
        dtype = next(target.parameters()).dtype
        visible = torch.ones(m, past + m, dtype=torch.bool)
        visible[:, past:] = torch.from_numpy(ancestor_mask(parents_local))
        mask = float_mask(visible.to(device), dtype)
    out = target(input_ids=torch.as_tensor(tokens, device=device)[None],
                 position_ids=torch.as_tensor(positions, device=device)[None],
                 attention_mask=mask, cache=cache, use_cache=True,
                 output_hidden_states=bool(feature_layers))
    return out.logits[0], (out.hidden_states if feature_layers else None)


def keep_cache_entries(cache, start: int, keep_local: list[int]) -> None:
    """After a verify forward appended m entries at `start`, keep only `keep_local` of them."""
    total = cache.get_seq_length()
    if keep_local == list(range(len(keep_local))):  # root + a prefix of the tree: a crop suffices
        extra = total - start - len(keep_local)
        if extra > 0:
            cache.crop(-extra)
        return
    index = torch.as_tensor([start + i for i in keep_local], device=cache.layers[0].keys.device)
    for layer in cache.layers:
        layer.keys = torch.cat((layer.keys[..., :start, :], layer.keys.index_select(-2, index)), dim=-2)
        layer.values = torch.cat((layer.values[..., :start, :], layer.values.index_select(-2, index)), dim=-2)


def cache_device(model) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# Generation loop
# --------------------------------------------------------------------------------------------

def _pick(logits: torch.Tensor, cfg: DecodeConfig, generator) -> int:
    if cfg.temperature == 0:
        return int(logits.argmax())
    probs = target_probs(logits[None], cfg.temperature, cfg.top_p)[0]
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(target, prompt_ids, drafter: Drafter | None = None, cfg: DecodeConfig | None = None,
             depth_ctrl: DepthController | None = None, size_ctrl: SizeController | None = None,
             eos_ids: set[int] | frozenset = frozenset(), context_limit: int | None = None,
             on_cycle=None, keep_cache: bool = False) -> GenerationResult:
    """Speculative decoding (with a drafter) or plain autoregressive decoding (without).

    `on_cycle(tree, record)`, when given, sees every cycle's full draft tree (trace recording).
    `keep_cache` puts the target's final KV cache in `result.extra["cache"]` (tests)."""
    from transformers import DynamicCache

    cfg = cfg or DecodeConfig()
    cfg.validate(drafter is not None)
    depth_ctrl = depth_ctrl or StaticDepth(cfg.max_depth)
    size_ctrl = size_ctrl or StaticSize(defaults.STATIC_SIZE)
    device = cache_device(target)
    limit = context_limit or int(getattr(target.config, "max_position_embeddings", defaults.FALLBACK_CONTEXT))
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).flatten()
    if prompt.numel() == 0:
        raise LTDError("the prompt is empty")
    if prompt.numel() >= limit:
        raise LTDError(f"the prompt has {prompt.numel()} tokens; the target's context holds {limit}")
    generator = None
    if cfg.temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed() % (2**63))
    layers = drafter.feature_layers if drafter is not None else None
    clock = Clock(device)

    t_start = clock.now()
    cache = DynamicCache()
    last_logits, features = prefill(target, cache, prompt, layers)
    root = _pick(last_logits, cfg, generator)
    output = [root]
    if drafter is not None:
        drafter.begin(prompt, root, features)
    prefill_s = clock.now() - t_start
    cycles: list[CycleRecord] = []
    stop = "eos" if root in eos_ids else ("max_new_tokens" if cfg.max_new_tokens <= 1 else "")

    while not stop:
        t0 = clock.now()
        root_pos = cache.get_seq_length()
        room = limit - (prompt.numel() + len(output)) - 1  # draft tokens that still fit the context
        tree, draft_s = None, 0.0
        if drafter is not None and room > 0:
            tree = draft_tree(drafter, root, cfg.top_k, min(cfg.max_depth, room), depth_ctrl, root_pos)
            t1 = clock.now()
            draft_s = t1 - t0
            size = size_ctrl.choose_size(tree, root_pos)
            selected = select_verify_set(tree.scores, size)
        else:
            t1 = t0
            tree = DraftTree(np.array([root]), np.array([-1]), np.zeros(1, np.float32), np.zeros(1, np.int8))
            selected = np.zeros(1, dtype=np.int64)
        parents = local_parents(tree.parents, selected)
        tokens = tree.tokens[selected]
        positions = root_pos + tree.steps[selected].astype(np.int64)
        t2 = clock.now()
        logits, hidden = verify_tree(target, cache, tokens, parents, positions, layers)
        t3 = clock.now()

        if cfg.temperature == 0:
            path, bonus = greedy_accept(parents, tokens, logits.argmax(-1).cpu().numpy())
        else:
            probs_fn = lambda rows: target_probs(logits[rows], cfg.temperature, cfg.top_p)  # noqa: E731
            path, bonus = sample_accept(parents, tokens, tree.scores[selected], probs_fn, generator)
        keep_cache_entries(cache, root_pos, [0] + path)
        new_tokens = [int(t) for t in tokens[path]] + [bonus]
        if drafter is not None:
            drafter.end_cycle()
            drafter.commit(torch.as_tensor(new_tokens, device=device), _features(hidden, layers, [0] + path))

        for t in new_tokens:  # EOS and max_new_tokens may cut a cycle's tokens short
            output.append(t)
            if t in eos_ids:
                stop = "eos"
                break
            if len(output) >= cfg.max_new_tokens:
                stop = "max_new_tokens"
                break
        if not stop and prompt.numel() + len(output) >= limit:
            stop = "context"
        root = output[-1]
        t4 = clock.now()
        record = CycleRecord(depth=tree.depth, size=len(selected) - 1, top_k=cfg.top_k if drafter else 0,
                             accepted=len(path), context_len=root_pos, draft_s=draft_s,
                             verify_s=t3 - t2, overhead_s=(t4 - t0) - draft_s - (t3 - t2), total_s=t4 - t0)
        cycles.append(record)
        if on_cycle is not None:
            on_cycle(tree, record)

    result = GenerationResult(output, cycles, prefill_s, clock.now() - t_start, stop)
    if keep_cache:
        result.extra["cache"] = cache
    return result
