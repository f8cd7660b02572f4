"""The tree speculative decoder: prefill, draft a tree, verify it in one target forward, accept, commit.

Invariant between cycles: the target's KV cache holds every committed token except the last one,
the *root*. A cycle drafts a tree below the root, verifies root + V tree tokens in one forward (a
float 4D tree mask, positions = root position + depth), keeps the KV entries of the root and the
accepted path, and commits the accepted tokens plus the target's own next token (the bonus). With
no drafter, or V = 0, the same loop is plain autoregressive decoding: the root alone is verified.
An `NgramDrafter` adds n-gram branches to the model drafter's tree, or makes them the tree
(`draft_tree`; docs/ngram.md).

`run_cycle` is one such cycle and `generate` a loop over it (plus the EOS and context cut-offs).
The phase functions (`prefill`, `draft_tree`, `verify_tree`, `accept`, `keep_cache_entries`) and
`run_cycle` are public: the profiler (`realrun.probes`) times exactly these, not a copy of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ltd_sim import defaults
from ltd_sim.control import DepthController, SizeController, StaticDepth, StaticSize, wants_draft
from ltd_sim.errors import LTDError
from ltd_sim.trace import Sampling
from ltd_sim.tree import (DraftTree, TreeBuilder, ancestor_mask, greedy_accept, is_chain,
                          local_parents, select_verify_set, tree_positions)
from profiler.timing import Timer
from realrun import models
from realrun.attention_masks import tree_mask
from realrun.drafters import Drafter, NgramDrafter
from realrun.kv_cache import PreallocatedCache, cache_kwargs, round_up
from realrun.ngram import NgramProposal, SourcedTree, merge_proposal
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
        Sampling(self.temperature, self.top_p)  # the one check of --temperature and --top-p
        if has_drafter:
            if not 1 <= self.top_k <= defaults.MAX_TOP_K:
                raise LTDError(f"--top-k must be in 1..{defaults.MAX_TOP_K}, got {self.top_k}")
            if not 1 <= self.max_depth <= defaults.MAX_DEPTH_LIMIT:
                raise LTDError(f"--depth must be in 1..{defaults.MAX_DEPTH_LIMIT}, got {self.max_depth}")


@dataclass
class CycleRecord:
    """One cycle's shape, acceptance and phase times (what traces, fine-tuning and the bench read)."""

    depth: int  # draft steps taken
    size: int  # V: tree tokens verified with the root
    top_k: int  # 0 when nothing was drafted (no drafter)
    accepted: int  # draft tokens accepted
    context_len: int  # tokens in the target's KV cache when the cycle began
    draft_s: float  # draft_tree, the depth policy's decisions included
    verify_s: float  # the target's verify forward
    overhead_s: float  # the rest of the cycle: selection, acceptance, KV compaction, drafter commit
    total_s: float  # draft_s + verify_s + overhead_s


@dataclass
class GenerationResult:
    """One generation: its new tokens, every cycle's record, and where the wall time went.

    Two rates come from it and are never mixed (DESIGN.md, "Devices and rates"): the end-to-end rate
    divides by `wall_s` (prefill included), the decode rate by `decode_s` (after the prefill)."""

    token_ids: list[int]  # new tokens only; the first one comes from the prefill, the rest from cycles
    cycles: list[CycleRecord]
    prefill_s: float  # prompt forward, first-token pick and the drafter's own prefill
    wall_s: float  # the whole generation: from the prefill's start to the end of the last cycle
    stop_reason: str  # "eos", "max_new_tokens" or "context"
    extra: dict = field(default_factory=dict)

    @property
    def decode_s(self) -> float:
        """Seconds after the prefill: every cycle plus the loop's bookkeeping between cycles."""
        return self.wall_s - self.prefill_s

    @property
    def tau(self) -> float:
        """Mean tokens committed per cycle, bonus token included."""
        if not self.cycles:
            return 0.0
        return float(np.mean([c.accepted + 1 for c in self.cycles]))

    @property
    def end_to_end_tokens_per_s(self) -> float:
        """The end-to-end rate: new tokens / `wall_s` (prefill included)."""
        return len(self.token_ids) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """The decode rate: tokens the cycles committed / `decode_s` (prefill excluded; the first token
        comes from the prefill)."""
        return (len(self.token_ids) - 1) / self.decode_s if self.decode_s > 0 else 0.0

    def to_json(self) -> dict:
        return {"token_ids": self.token_ids, "cycles": [asdict(c) for c in self.cycles],
                "tau": self.tau, "decode_tokens_per_s": self.decode_tokens_per_s,
                "end_to_end_tokens_per_s": self.end_to_end_tokens_per_s, "wall_s": self.wall_s,
                "prefill_s": self.prefill_s, "stop_reason": self.stop_reason}


@dataclass
class CycleResult:
    """What one `run_cycle` did: the tree it drafted, the tokens it committed, its record."""

    tree: DraftTree  # the full draft tree (the root alone when nothing was drafted)
    new_tokens: list[int]  # the accepted draft tokens, then the target's bonus token
    record: CycleRecord


# --------------------------------------------------------------------------------------------
# Phase functions
# --------------------------------------------------------------------------------------------

def _features(hidden_states, layers: tuple[int, ...] | None, rows) -> torch.Tensor | None:
    """The drafter's input features: chosen hidden-state layers, concatenated, at `rows`."""
    if not layers:
        return None
    if isinstance(rows, list):  # a list index would be copied to the device with a sync
        rows = to_device(rows, hidden_states[0].device)
    return torch.cat([hidden_states[i][0, rows] for i in layers], dim=-1)


def to_device(values, device: torch.device) -> torch.Tensor:
    """Host values (numpy, list) to the device without a host sync: a non-blocking copy from pageable
    memory is staged before the call returns, so the source may change afterwards."""
    return torch.as_tensor(values).to(device, non_blocking=True)


@torch.no_grad()
def prefill(target, cache, prompt_ids: torch.Tensor, feature_layers=None):
    """Run the prompt through the target. Returns (logits of the last position, features [n, F])."""
    n = prompt_ids.shape[0]
    out = target(input_ids=prompt_ids[None], position_ids=torch.arange(n, device=prompt_ids.device)[None],
                 **cache_kwargs(target, cache), use_cache=True, output_hidden_states=bool(feature_layers),
                 logits_to_keep=1)
    return out.logits[0, -1], _features(out.hidden_states, feature_layers, slice(None))


@torch.no_grad()
def draft_tree(drafter: Drafter, root_token: int, top_k: int, max_depth: int,
               depth_ctrl: DepthController, context_len: int,
               proposal: NgramProposal | None = None) -> DraftTree:
    """Grow the draft tree one step at a time; the depth controller decides after each step.

    An `NgramDrafter`'s branches (`proposal`, found for `max_depth` before the cycle drafts; proposed
    here when not given) are grafted after each of the model's steps, cut at the depth reached, so the
    depth controller sees the tree that would be verified, and the tree at depth D is still the first
    D steps of a deeper one. Without a model the n-gram trie is the tree, one level per step
    (`ngram_tree`)."""
    if isinstance(drafter, NgramDrafter):
        if proposal is None:
            proposal = drafter.proposer.propose(max_depth)
        if drafter.model is None:
            return ngram_tree(proposal, root_token, depth_ctrl, context_len)
        return _model_tree(drafter.model, root_token, top_k, max_depth, depth_ctrl, context_len, proposal)
    return _model_tree(drafter, root_token, top_k, max_depth, depth_ctrl, context_len)


def ngram_tree(proposal: NgramProposal, root_token: int, depth_ctrl: DepthController,
               context_len: int) -> SourcedTree:
    """The n-gram trie alone as the draft tree: each trie level counts as a draft step, so the depth
    controller decides after each level as it would after a model's step. No match: the root alone
    (the cycle is a plain decoding step)."""
    full = merge_proposal(root_only_tree(root_token), proposal)
    for depth in range(1, full.depth):
        if not depth_ctrl.should_continue(full.truncated(depth), context_len):
            return full.truncated(depth)
    return full


def _model_tree(drafter: Drafter, root_token: int, top_k: int, max_depth: int,
                depth_ctrl: DepthController, context_len: int,
                proposal: NgramProposal | None = None) -> DraftTree:
    """The model drafter's tree by the EAGLE-2 rule (DESIGN.md), one `expand` per step, with the
    n-gram `proposal` grafted (cut at each step's depth) when given."""
    builder = TreeBuilder(root_token, top_k, max_depth)
    while True:
        logp, ids = drafter.expand(builder.beam, builder.tokens, builder.parents, builder.steps, top_k)
        # one device-to-host copy per step (the depth decision needs it): token ids < 2**24 are exact in fp32
        step = torch.stack((logp.float(), ids.float())).cpu().numpy()
        builder.add_step(step[0], step[1].astype(np.int64))
        tree = builder.tree()
        if proposal is not None:  # the beam stays the model's own: the graft does not change the next step
            tree = merge_proposal(tree, proposal.truncated(builder.depth))
        if builder.depth >= max_depth or not depth_ctrl.should_continue(tree, context_len):
            return tree


@torch.no_grad()
def verify_tree(target, cache, tokens: np.ndarray, parents_local: np.ndarray, positions: np.ndarray,
                feature_layers=None):
    """One target forward over root + tree tokens. Returns (logits [m, V], hidden states or None)."""
    device = cache_device(target)
    past = cache.get_seq_length()
    mask = None  # a chain is plain causal attention: let transformers build that mask
    if not is_chain(parents_local):
        # the architecture's own mask(s): sliding windows and per-layer-type masks included
        mask = tree_mask(target, past, torch.from_numpy(ancestor_mask(parents_local)).to(device),
                         torch.as_tensor(positions, device=device), next(target.parameters()).dtype)
    out = target(input_ids=to_device(tokens, device)[None], position_ids=to_device(positions, device)[None],
                 attention_mask=mask, **cache_kwargs(target, cache), use_cache=True,
                 output_hidden_states=bool(feature_layers))
    return out.logits[0], (out.hidden_states if feature_layers else None)


def keep_cache_entries(cache, start: int, keep_local: list[int]) -> None:
    """After a verify forward appended m entries at `start`, keep only `keep_local` of them.

    `cache.keep_entries` (`PreallocatedCache`) moves the kept entries in place: its cost follows the
    cycle's tokens, not the context, and a chain (root + a prefix of the tree) is a length change."""
    cache.keep_entries(start, keep_local)


def cache_device(model) -> torch.device:
    """The device of the model's weights, where its KV cache and inputs live."""
    return next(model.parameters()).device


@torch.no_grad()
def accept(logits: torch.Tensor, parents_local: np.ndarray, tokens: np.ndarray, scores: np.ndarray,
           cfg: DecodeConfig, generator: torch.Generator | None) -> tuple[list[int], int]:
    """The accepted path (indices into the verify set, root excluded) and the bonus token.

    Greedy: the longest path matching the target's argmax. T > 0: lossless multi-candidate
    rejection over siblings, which needs the target's (temperature, top-p) law at each row."""
    if cfg.temperature == 0:
        return greedy_accept(parents_local, tokens, logits.argmax(-1).cpu().numpy())
    probs_fn = lambda rows: target_probs(logits[rows], cfg.temperature, cfg.top_p)  # noqa: E731
    return sample_accept(parents_local, tokens, scores, probs_fn, generator)


def root_only_tree(root: int) -> DraftTree:
    """The tree of a cycle that drafts nothing: the root alone, so the cycle is a plain decoding step."""
    return DraftTree(np.array([root]), np.array([-1]), np.zeros(1, np.float32), np.zeros(1, np.int8))


# --------------------------------------------------------------------------------------------
# One cycle, and the generation loop over it
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def run_cycle(target, cache, drafter: Drafter | None, root: int, cfg: DecodeConfig,
              depth_ctrl: DepthController, size_ctrl: SizeController, depth_limit: int, clock: Timer,
              generator: torch.Generator | None = None) -> CycleResult:
    """One draft-and-verify cycle below `root`, the last committed token (not yet in `cache`).

    Drafts at most `depth_limit` steps (none without a drafter or below 1: then the root alone is
    verified), verifies the root and the size controller's V best nodes in one target forward,
    accepts, keeps the KV entries of the root and the accepted path, and commits the new tokens to
    the drafter. `clock` splits the cycle into draft, verify and the rest (the overhead)."""
    layers = drafter.feature_layers if drafter is not None else None
    t_start = clock.now()
    root_pos = cache.get_seq_length()
    # n-gram branches are found before the draft decision: their match is what a policy decides on
    proposal = drafter.proposer.propose(depth_limit) if isinstance(drafter, NgramDrafter) and depth_limit >= 1 \
        else None
    signals = proposal.signals if proposal is not None else None
    if drafter is not None and depth_limit >= 1 and wants_draft(depth_ctrl, root_pos, signals):  # D = 0: no draft
        tree = draft_tree(drafter, root, cfg.top_k, depth_limit, depth_ctrl, root_pos, proposal)
        draft_s = clock.now() - t_start
        selected = select_verify_set(tree.scores, size_ctrl.choose_size(tree, root_pos))
    else:
        tree, draft_s = root_only_tree(root), 0.0
        selected = np.zeros(1, dtype=np.int64)
    parents = local_parents(tree.parents, selected)
    tokens = tree.tokens[selected]
    positions = tree_positions(tree.steps, selected, root_pos)

    t_verify = clock.now()
    logits, hidden = verify_tree(target, cache, tokens, parents, positions, layers)
    verify_s = clock.now() - t_verify

    path, bonus = accept(logits, parents, tokens, tree.scores[selected], cfg, generator)
    keep_cache_entries(cache, root_pos, [0] + path)
    new_tokens = [int(t) for t in tokens[path]] + [bonus]
    if drafter is not None:  # the drafter keeps its own state in step with the target's
        drafter.end_cycle()
        drafter.commit(to_device(new_tokens, cache_device(target)),
                       _features(hidden, layers, [0] + path))
    total_s = clock.now() - t_start
    record = CycleRecord(depth=tree.depth, size=len(selected) - 1, top_k=cfg.top_k if drafter is not None else 0,
                         accepted=len(path), context_len=root_pos, draft_s=draft_s, verify_s=verify_s,
                         overhead_s=total_s - draft_s - verify_s, total_s=total_s)
    return CycleResult(tree, new_tokens, record)


def _pick(logits: torch.Tensor, cfg: DecodeConfig, generator) -> int:
    """The first token, from the prefill's last logits: argmax, or a sample of the target's law."""
    if cfg.temperature == 0:
        return int(logits.argmax())
    probs = target_probs(logits[None], cfg.temperature, cfg.top_p)[0]
    return int(torch.multinomial(probs, 1, generator=generator))


def _sampling_generator(cfg: DecodeConfig, device: torch.device) -> torch.Generator | None:
    """A seeded generator for T > 0 (a fresh seed when none is given); greedy needs none."""
    if cfg.temperature == 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed if cfg.seed is not None else torch.seed() % (2**63))
    return generator


def _prompt_tensor(prompt_ids, device: torch.device, limit: int) -> torch.Tensor:
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).flatten()
    if prompt.numel() == 0:
        raise LTDError("the prompt is empty")
    if prompt.numel() >= limit:
        raise LTDError(f"the prompt has {prompt.numel()} tokens; the target's context holds {limit}")
    return prompt


def _commit(output: list[int], new_tokens: list[int], eos_ids, max_new_tokens: int) -> str:
    """Append new tokens to `output`; EOS and the token budget may cut a cycle's tokens short.
    Returns the stop reason, or "" to go on."""
    for token in new_tokens:
        output.append(token)
        if token in eos_ids:
            return "eos"
        if len(output) >= max_new_tokens:
            return "max_new_tokens"
    return ""


@torch.no_grad()
def generate(target, prompt_ids, drafter: Drafter | None = None, cfg: DecodeConfig | None = None,
             depth_ctrl: DepthController | None = None, size_ctrl: SizeController | None = None,
             eos_ids: set[int] | frozenset = frozenset(), context_limit: int | None = None,
             on_cycle=None, keep_cache: bool = False, cache=None) -> GenerationResult:
    """Speculative decoding (with a drafter) or plain autoregressive decoding (without).

    `on_cycle(tree, record)`, when given, sees every cycle's full draft tree (trace recording).
    `keep_cache` puts the target's final KV cache in `result.extra["cache"]` (tests). `cache`: an
    empty KV cache to fill (anything with `keep_entries`; default: a `PreallocatedCache` sized for
    the prompt and `max_new_tokens`, grown if a generation outgrows it)."""
    cfg = cfg or DecodeConfig()
    cfg.validate(drafter is not None)
    depth_ctrl = depth_ctrl or StaticDepth(cfg.max_depth)
    size_ctrl = size_ctrl or StaticSize(defaults.STATIC_SIZE)
    device = cache_device(target)
    limit = context_limit or models.context_limit(target)
    prompt = _prompt_tensor(prompt_ids, device, limit)
    generator = _sampling_generator(cfg, device)
    layers = drafter.feature_layers if drafter is not None else None
    clock = Timer(device)

    t_start = clock.now()
    if cache is None:  # room for the whole generation and the last cycle's tree tokens
        capacity = min(prompt.numel() + cfg.max_new_tokens, limit) + (cfg.top_k * cfg.max_depth if drafter else 0)
        cache = PreallocatedCache.for_model(target, round_up(capacity + 1))
    last_logits, features = prefill(target, cache, prompt, layers)
    output: list[int] = []
    stop = _commit(output, [_pick(last_logits, cfg, generator)], eos_ids, cfg.max_new_tokens)
    if drafter is not None:
        drafter.begin(prompt, output[0], features)
    prefill_s = clock.now() - t_start

    cycles: list[CycleRecord] = []
    while not stop:
        room = limit - (prompt.numel() + len(output)) - 1  # draft tokens that still fit the context
        cycle = run_cycle(target, cache, drafter, output[-1], cfg, depth_ctrl, size_ctrl,
                          min(cfg.max_depth, room), clock, generator)
        stop = _commit(output, cycle.new_tokens, eos_ids, cfg.max_new_tokens)
        if not stop and prompt.numel() + len(output) >= limit:
            stop = "context"
        cycles.append(cycle.record)
        if on_cycle is not None:
            on_cycle(cycle.tree, cycle.record)

    result = GenerationResult(output, cycles, prefill_s, clock.now() - t_start, stop)
    if keep_cache:
        result.extra["cache"] = cache
    return result
