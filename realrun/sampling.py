"""Sampling at T > 0: the target's distribution and lossless multi-candidate rejection on a tree.

The draft's picks are deterministic top-k, so its distribution is one-hot on each child. At a node,
siblings are tried in descending draft score: a child with token x is accepted with the residual
target probability p(x); on rejection x is removed from the residual and the rest renormalised.
When every sibling fails, or the node has no children, the bonus token is sampled from the
residual. Each stage's output is distributed as the target's p, so the tree cannot change the
output distribution (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ltd_sim.tree import children_lists


def stream_seed(run_seed: int, *keys: int) -> int:
    """The seed of one sampled generation, e.g. (prompt, sample) or (method, question, repeat): an
    independent stream per key tuple, derived from one run seed."""
    return int(np.random.SeedSequence([run_seed, *keys]).generate_state(1, np.uint64)[0] >> 1)


def target_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Rows of logits [m, V] -> sampling distributions (temperature, then nucleus top-p)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_accept(parents_local: np.ndarray, tokens: np.ndarray, scores: np.ndarray,
                  probs_of: Callable[[list[int]], torch.Tensor], generator) -> tuple[list[int], int]:
    """Walk the verified tree by rejection sampling. `probs_of(rows)` gives target distributions
    [len(rows), V] at those local nodes. Returns (accepted local nodes, bonus token)."""
    children = children_lists(parents_local)
    path: list[int] = []
    node = 0
    while True:
        residual = probs_of([node])[0].clone()
        kids = sorted(children[node], key=lambda c: -float(scores[c]))
        accepted = None
        for child in kids:
            token = int(tokens[child])
            mass = residual.sum()
            p_token = residual[token] / mass
            u = torch.rand((), generator=generator, device=residual.device)
            if u < p_token:
                accepted = child
                break
            residual[token] = 0.0
        if accepted is None:
            bonus = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
            return path, bonus
        path.append(accepted)
        node = accepted
