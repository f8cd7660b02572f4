"""The T > 0 exact-law check: the decoder's sampled output has the target's own distribution.

With a vocabulary small enough to enumerate, the exact joint law of the first few sampled tokens is
computed from the target's (temperature, top-p) distribution; speculative and plain decoding are then
each run `n` times with distinct seeds, and the total-variation distance of each empirical law to the
exact one must stay under a bound (E[TV] of an n-sample empirical law over K outcomes is at most
0.5 * sqrt(K / n); the bound allows 1.5x that). Used by the test suite and by `benchmarks/gpu_check.py`
(on whatever device and dtype the models are on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ltd_sim.control import StaticDepth, StaticSize
from realrun.decoder import DecodeConfig, cache_device, generate
from realrun.drafters import LMDrafter
from realrun.sampling import target_probs


@torch.no_grad()
def exact_joint(model, prompt: torch.Tensor, temperature: float, top_p: float, steps: int) -> dict:
    """Exact law of the first `steps` sampled tokens, by enumeration (small vocabularies only)."""
    vocab = model.config.vocab_size
    device = cache_device(model)
    dist = {(): 1.0}
    for _ in range(steps):
        nxt = {}
        for seq, p in dist.items():
            ids = torch.cat((prompt.cpu(), torch.tensor(seq, dtype=torch.long))).to(device)
            logits = model(ids[None]).logits[0, -1].float()
            probs = target_probs(logits[None], temperature, top_p)[0].cpu()
            for t in range(vocab):
                if probs[t] > 0:
                    nxt[seq + (t,)] = p * float(probs[t])
        dist = nxt
    return dist


def total_variation(counts: dict, n: int, exact: dict) -> float:
    keys = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in keys)


@dataclass
class LawResult:
    """Both decoders' distance to the exact law, and what makes the check meaningful."""

    tv_speculative: float
    tv_plain: float
    bound: float
    outcomes: int  # K: sequences with nonzero exact probability
    samples: int  # n per decoder
    accepted_draft_tokens: int  # > n/4: the tree path was really exercised

    @property
    def passed(self) -> bool:
        return (self.tv_speculative < self.bound and self.tv_plain < self.bound
                and self.accepted_draft_tokens > self.samples // 4)


def sampling_law_check(target, draft, prompt: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                       steps: int = 3, n: int = 1500, top_k: int = 2, depth: int = 3, size: int = 6,
                       make_drafter=None) -> LawResult:
    """Run speculative (an `lm` draft, or `make_drafter()`'s drafter, e.g. with n-gram branches) and
    plain sampling `n` times each against the exact law."""
    exact = exact_joint(target, prompt, temperature, top_p, steps)
    vocab = target.config.vocab_size
    spec: dict = {}
    plain: dict = {}
    accepted = 0
    for i in range(n):
        cfg = DecodeConfig(max_new_tokens=steps, top_k=top_k, max_depth=depth, temperature=temperature,
                           top_p=top_p, seed=i)
        drafter = make_drafter() if make_drafter is not None else LMDrafter(draft, vocab)
        r = generate(target, prompt, drafter, cfg, StaticDepth(depth), StaticSize(size))
        accepted += sum(c.accepted for c in r.cycles)
        spec[tuple(r.token_ids)] = spec.get(tuple(r.token_ids), 0) + 1
        p = generate(target, prompt, None, cfg)
        plain[tuple(p.token_ids)] = plain.get(tuple(p.token_ids), 0) + 1
    bound = 1.5 * 0.5 * float(np.sqrt(len(exact) / n))
    return LawResult(total_variation(spec, n, exact), total_variation(plain, n, exact), bound, len(exact), n,
                     accepted)
