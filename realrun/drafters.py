"""Drafters: one interface, two model kinds (an independent small LM, an EAGLE-3 head), and n-gram
branches alone or joined to either (`NgramDrafter`, realrun/ngram.py).

A drafter keeps its own KV cache of the committed prefix. Every cycle the decoder calls
`expand(beam)` once per draft step; the first call (beam = [root]) also feeds the tokens committed
since the last cycle. `end_cycle()` then drops the tree nodes from the drafter's cache, and
`commit()` queues the tokens the cycle committed, to be fed at the next cycle's first step.

Both kinds share the tree bookkeeping of `_TreeSlots`: which cache slot holds which tree node, so
that a beam node attends to the committed prefix and its own ancestors only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from ltd_sim.errors import LTDError
from realrun import attention_masks
from realrun.kv_cache import cache_kwargs
from realrun.ngram import NgramProposer


def float_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool [q, kv] (True = attend) -> additive float mask [1, 1, q, kv] (0 attend, finfo.min block).

    A bool mask is silently misread by some attention paths; a float one means the same everywhere.
    (One definition, in `realrun.attention_masks`; re-exported here for the drafters' callers.)"""
    return attention_masks.float_mask(visible, dtype)


class _TreeSlots:
    """Cache-slot bookkeeping for tree nodes fed to a drafter during one cycle.

    Slots [0, committed) hold the committed prefix; tree nodes are appended after it. For each fed
    node we remember the tree slots it may see (its ancestors' slots and its own)."""

    def __init__(self):
        self.committed = 0
        self.node_slot: dict[int, int] = {}
        self.node_seen: dict[int, list[int]] = {}
        self.slot_pos: list[int] = []  # positions of the tree slots, in slot order (sliding windows)

    def reset_tree(self) -> None:
        self.node_slot.clear()
        self.node_seen.clear()
        self.slot_pos.clear()

    def beam_mask(self, beam: np.ndarray, parents: np.ndarray, device, dtype,
                  positions: np.ndarray | None = None, spec: attention_masks.MaskSpec | None = None):
        """Mask for feeding `beam` after the tree slots fed so far; records the new slots.

        With `positions` (the beam's) and `spec` (the drafter model's), the mask is that model's own:
        sliding windows cut by position, one mask per layer kind where it takes a dict."""
        first_new = self.committed + len(self.node_slot)
        width = first_new + len(beam)
        visible = np.zeros((len(beam), width), dtype=bool)
        visible[:, : self.committed] = True
        for row, node in enumerate(beam.tolist()):
            parent = int(parents[node])
            seen = list(self.node_seen.get(parent, []))  # root (committed) has no tree slots
            slot = first_new + row
            seen.append(slot)
            visible[row, seen] = True
            self.node_slot[node] = slot
            self.node_seen[node] = seen
        if positions is not None:
            self.slot_pos.extend(int(p) for p in positions)
        visible_t = torch.from_numpy(visible).to(device)
        if spec is None or positions is None:
            return float_mask(visible_t, dtype)
        # committed slot j holds position j; tree slots hold their nodes' positions
        k_pos = torch.as_tensor(np.concatenate((np.arange(self.committed), self.slot_pos)), device=device)
        return spec.build(visible_t, torch.as_tensor(np.asarray(positions), device=device), k_pos, dtype)


class Drafter(ABC):
    """Expands a beam of draft-tree nodes into top-k children, one draft step at a time."""

    #: indices into the target's `output_hidden_states` this drafter needs (None: no features)
    feature_layers: tuple[int, ...] | None = None

    @abstractmethod
    def begin(self, context_ids: torch.Tensor, first_token: int, features: torch.Tensor | None) -> None:
        """Start a generation: the prompt `context_ids` [n] was prefilled by the target (whose
        `features` [n, F] are given when `feature_layers` is set) and `first_token` committed."""

    @abstractmethod
    def commit(self, tokens: torch.Tensor, features: torch.Tensor | None) -> None:
        """Queue newly committed `tokens` [m]; `features` [m, F] are the target's hidden states at
        the positions just before each of them (the previous root and the accepted nodes)."""

    @abstractmethod
    def expand(self, beam: np.ndarray, tokens: np.ndarray, parents: np.ndarray, steps: np.ndarray,
               top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k children of every beam node: (log-probs [b, k], target token ids [b, k]).

        `tokens`, `parents`, `steps` describe the tree so far (node 0 = root); beam = [0] at step 1."""

    @abstractmethod
    def end_cycle(self) -> None:
        """Drop this cycle's tree nodes from the drafter's state."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...


class LMDrafter(Drafter):
    """An independent small causal LM that shares the target's vocabulary."""

    def __init__(self, model: torch.nn.Module, target_vocab_size: int):
        from functools import partial

        from realrun.kv_cache import PreallocatedCache

        draft_vocab = int(model.get_output_embeddings().weight.shape[0])
        if draft_vocab < target_vocab_size:
            raise LTDError(
                f"draft vocabulary ({draft_vocab} tokens) does not fit the target's ({target_vocab_size}); "
                "an lm draft must share the target's tokenizer")
        self.model = model
        self.target_vocab = target_vocab_size
        self._cache_cls = partial(PreallocatedCache.for_model, model)  # grown in steps; end_cycle's crop is free
        self.cache = self._cache_cls()
        self.slots = _TreeSlots()
        self.pending: list[int] = []

    @property
    def vocab_size(self) -> int:
        return self.target_vocab

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def begin(self, context_ids, first_token, features) -> None:
        self.cache = self._cache_cls()
        self.slots = _TreeSlots()
        self.pending = [int(t) for t in context_ids.tolist()] + [int(first_token)]

    def commit(self, tokens, features) -> None:
        self.pending.extend(int(t) for t in tokens.tolist())

    def _forward(self, ids: list[int] | np.ndarray, positions: np.ndarray, mask) -> torch.Tensor:
        dev = self.device
        out = self.model(
            input_ids=torch.as_tensor(np.asarray(ids), device=dev)[None],
            position_ids=torch.as_tensor(positions, device=dev)[None],
            attention_mask=mask,
            **cache_kwargs(self.model, self.cache),
            use_cache=True,
        )
        logits = out.logits[0, :, : self.target_vocab].float()
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def expand(self, beam, tokens, parents, steps, top_k):
        if len(beam) == 1 and beam[0] == 0:
            # Step 1: feed what was committed since the last cycle (its last token is the root).
            start = self.slots.committed
            n = len(self.pending)
            logp = self._forward(self.pending, np.arange(start, start + n), None)[-1:]
            self.slots.committed += n
            self.pending = []
        else:
            root_pos = self.slots.committed - 1
            positions = root_pos + steps[beam].astype(np.int64)
            mask = self.slots.beam_mask(beam, parents, self.device, next(self.model.parameters()).dtype,
                                        positions, attention_masks.mask_spec(self.model))
            logp = self._forward(tokens[beam], positions, mask)
        values, ids = logp.topk(top_k, dim=-1)
        return values, ids

    def end_cycle(self) -> None:
        extra = self.cache.get_seq_length() - self.slots.committed
        if extra > 0:
            self.cache.crop(-extra)
        self.slots.reset_tree()


class Eagle3Drafter(Drafter):
    """An EAGLE-3 head over the target's fused low/middle/high hidden states."""

    def __init__(self, head, target_vocab_size: int):
        from realrun.eagle3 import HeadCache

        if head.cfg.vocab_size != target_vocab_size:
            raise LTDError(f"EAGLE-3 head covers a vocabulary of {head.cfg.vocab_size}, "
                           f"the target has {target_vocab_size}")
        self.head = head
        self.feature_layers = tuple(head.cfg.aux_layer_ids)
        self._cache_cls = HeadCache
        self.cache = HeadCache()
        self.slots = _TreeSlots()
        self.pending_tokens: list[torch.Tensor] = []
        self.pending_features: list[torch.Tensor] = []
        self.node_hidden: dict[int, torch.Tensor] = {}

    @property
    def vocab_size(self) -> int:
        return self.head.cfg.vocab_size

    def begin(self, context_ids, first_token, features) -> None:
        self.cache = self._cache_cls()
        self.slots = _TreeSlots()
        self.node_hidden = {}
        # EAGLE pairs the feature at position i with token i+1.
        nxt = torch.cat((context_ids[1:].to(features.device),
                         torch.tensor([first_token], device=features.device)))
        self.pending_tokens = [nxt]
        self.pending_features = [features]

    def commit(self, tokens, features) -> None:
        self.pending_tokens.append(tokens.to(features.device))
        self.pending_features.append(features)

    @torch.no_grad()
    def expand(self, beam, tokens, parents, steps, top_k):
        head = self.head
        dev = head.lm_head.weight.device
        if len(beam) == 1 and beam[0] == 0:
            ids = torch.cat(self.pending_tokens)[None]
            feats = torch.cat(self.pending_features)[None].to(head.lm_head.weight.dtype)
            start = self.slots.committed
            n = ids.shape[1]
            positions = torch.arange(start, start + n, device=dev)[None]
            mask = None
            if n > 1 or start > 0:
                visible = torch.ones(n, start + n, dtype=torch.bool, device=dev).tril(start)
                mask = float_mask(visible, feats.dtype)
            hidden, logits = head(feats, ids, positions, mask, self.cache)
            self.slots.committed += n
            self.pending_tokens, self.pending_features = [], []
            self.node_hidden = {0: hidden[0, -1]}
            logits = logits[0, -1:]
        else:
            root_pos = self.slots.committed - 1
            mask = self.slots.beam_mask(beam, parents, dev, head.lm_head.weight.dtype)
            parent_hidden = torch.stack([self.node_hidden[int(parents[b])] for b in beam.tolist()])[None]
            ids = torch.as_tensor(tokens[beam], device=dev)[None]
            positions = torch.as_tensor(root_pos + steps[beam].astype(np.int64), device=dev)[None]
            hidden, logits = head(parent_hidden, ids, positions, mask, self.cache)
            for row, node in enumerate(beam.tolist()):
                self.node_hidden[node] = hidden[0, row]
            logits = logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        k = min(top_k, logp.shape[-1])
        values, draft_ids = logp.topk(k, dim=-1)
        return values, head.draft_to_target_ids(draft_ids)

    def end_cycle(self) -> None:
        self.cache.crop(self.slots.committed)
        self.slots.reset_tree()
        self.node_hidden = {0: self.node_hidden[0]} if 0 in self.node_hidden else {}


class NgramDrafter(Drafter):
    """N-gram branches (realrun.ngram), alone (`model` None: `--draft-kind ngram`, no draft model) or
    joined to a model drafter's tree (`--ngram`).

    It forwards the model drafter's calls and feeds the n-gram index every committed token; the
    decoder grafts the proposal into the tree after the model's last draft step (`decoder.draft_tree`).
    The model drafter never sees the grafted nodes during the cycle: its cache holds only the nodes it
    expanded, `end_cycle` drops those, and the accepted tokens (n-gram ones included) reach it through
    `commit`, with the target's features at their positions, like any committed token."""

    def __init__(self, proposer: NgramProposer, model: Drafter | None = None, vocab_size: int | None = None):
        if model is None and vocab_size is None:
            raise ValueError("an n-gram drafter without a model needs the target's vocab_size")
        self.proposer = proposer
        self.model = model
        self.feature_layers = model.feature_layers if model is not None else None
        self._vocab = model.vocab_size if model is not None else int(vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def begin(self, context_ids, first_token, features) -> None:
        self.proposer.begin([*context_ids.tolist(), int(first_token)])
        if self.model is not None:
            self.model.begin(context_ids, first_token, features)

    def commit(self, tokens, features) -> None:
        self.proposer.commit(tokens.tolist())
        if self.model is not None:
            self.model.commit(tokens, features)

    def expand(self, beam, tokens, parents, steps, top_k):
        if self.model is None:
            raise LTDError("the n-gram drafter has no model to expand a beam with")
        return self.model.expand(beam, tokens, parents, steps, top_k)

    def end_cycle(self) -> None:
        if self.model is not None:
            self.model.end_cycle()
