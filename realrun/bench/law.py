"""The bench's distributional check at T > 0: does a method's output follow the target's own law?

At T = 0 the bench compares outputs token for token; sampled outputs differ run to run, so equality
means nothing there. Two tests against plain sampling (`ar`) in the same run replace it:

- the tempered log-probability test: for every (question, repeat) both the method and ar sample one
  continuation with independent seeds; the statistic of a continuation is the mean over its tokens
  of log softmax(target logits / T) at the emitted token (one target forward over prompt + output).
  Under the null the two statistics of a pair are exchangeable, so their difference is symmetric
  about zero: a Wilcoxon signed-rank test over the pairs (scipy).
- the first-cycle token test: on one question, every method samples `seeds` short continuations;
  the token at output position 1 (the first one a draft-and-verify cycle emits; position 0 comes
  from the prefill alone) is histogrammed, and the method's histogram is compared with ar's by a
  chi-square test of homogeneity (scipy), tokens with fewer than `MIN_CELL` draws pooled.

A method passes when neither p-value is below `alpha` / 2 (Bonferroni over its two tests: a lossless
method fails with probability at most `alpha`). These tests have power against gross errors
(a biased acceptance rule shifts the log-probability; a wrong residual shifts the first-cycle
token); the exact-law unit test (tests/realrun/test_decoder.py, realrun/exact_law.py) is the sharp
check on a small vocabulary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch

ALPHA = 0.01
MIN_CELL = 5  # first-cycle tokens drawn fewer times than this (both samples together) are pooled
FIRST_CYCLE_POSITION = 1


@dataclass
class LawCheck:
    """One method's distributional check against plain sampling in the same bench run."""

    logprob_p: float | None  # Wilcoxon signed-rank over (question, repeat) pairs
    logprob_mean: float | None  # the method's mean tempered log-prob per token
    logprob_mean_ar: float | None
    pairs: int
    token_p: float | None  # chi-square homogeneity of the first-cycle token
    seeds: int
    alpha: float = ALPHA

    @property
    def passed(self) -> bool:
        return all(p is None or p >= self.alpha / 2 for p in (self.logprob_p, self.token_p))

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@torch.no_grad()
def tempered_logprob(target, prompt: list[int], out: list[int], temperature: float) -> float | None:
    """Mean over the emitted tokens of log softmax(logits / T) at each one (None for an empty output)."""
    if not out:
        return None
    device = next(target.parameters()).device
    ids = torch.tensor([prompt + out], device=device)
    logits = target(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return float(logp.gather(1, torch.tensor(out, device=device)[:, None]).mean())


def logprob_test(method: list[float], ar: list[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences (None with fewer than 5 pairs)."""
    from scipy.stats import wilcoxon

    diff = np.asarray(method) - np.asarray(ar)
    if len(diff) < 5:
        return None
    if not np.any(diff):
        return 1.0
    return float(wilcoxon(diff, zero_method="zsplit").pvalue)


def token_test(method: list[int], ar: list[int]) -> float | None:
    """Chi-square p-value that two samples of tokens come from one law (rare tokens pooled)."""
    from scipy.stats import chi2_contingency

    a, b = Counter(method), Counter(ar)
    common = [t for t in set(a) | set(b) if a[t] + b[t] >= MIN_CELL]
    rows = [[a[t] for t in common], [b[t] for t in common]]
    rest = [len(method) - sum(rows[0]), len(ar) - sum(rows[1])]
    if sum(rest) > 0:
        rows[0].append(rest[0])
        rows[1].append(rest[1])
    if len(rows[0]) < 2:
        return 1.0  # one token takes (almost) all the mass in both samples: nothing to tell apart
    return float(chi2_contingency(np.asarray(rows)).pvalue)


def first_cycle_tokens(method, prompt_ids: list[int], seeds: list[int]) -> list[int]:
    """The token at `FIRST_CYCLE_POSITION` of `method`'s output, one per seed (runs that stop before it
    are left out)."""
    outs = [method(prompt_ids, seed=s, max_new_tokens=FIRST_CYCLE_POSITION + 1).tokens for s in seeds]
    return [o[FIRST_CYCLE_POSITION] for o in outs if len(o) > FIRST_CYCLE_POSITION]
