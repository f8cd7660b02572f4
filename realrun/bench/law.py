"""The bench's distributional check at T > 0: does a method's output follow the target's own law?

At T = 0 the bench compares outputs token for token; sampled outputs differ run to run, so equality
means nothing there. The timed runs share their seeds across methods (common random numbers: two
decoders that sample alike give the same output, so their speed compares without the noise of
different continuations), which makes them useless as independent samples. So the check has runs of
its own: on one question, every method samples `seeds` short continuations with seeds of its own, and
two tests compare them with plain sampling's (`ar`):

- the tempered log-probability test: a continuation's statistic is the mean over its tokens of
  log softmax(target logits / T) at the emitted token (one target forward over prompt + output);
  under the null both samples are independent draws of one law: a two-sided Mann-Whitney U test (scipy).
- the first-cycle token test: the token at output position 1 (the first one a draft-and-verify cycle
  emits; position 0 comes from the prefill alone), histogrammed; a chi-square test of homogeneity
  (scipy), tokens with fewer than `MIN_CELL` draws pooled.

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

    logprob_p: float | None  # Mann-Whitney U of the runs' mean tempered log-probs, against ar's
    logprob_mean: float | None  # the method's mean over its runs
    logprob_mean_ar: float | None
    token_p: float | None  # chi-square homogeneity of the first-cycle token, against ar's
    seeds: int  # the method's own runs
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
    """Two-sided Mann-Whitney U p-value that two independent samples share one law (None under 5 each)."""
    from scipy.stats import mannwhitneyu

    if min(len(method), len(ar)) < 5:
        return None
    if len(set(method) | set(ar)) == 1:
        return 1.0
    return float(mannwhitneyu(method, ar, alternative="two-sided").pvalue)


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


@dataclass
class LawSample:
    """One method's own runs for the check: first-cycle tokens and mean tempered log-probs."""

    tokens: list[int]
    logprobs: list[float]


def law_sample(method, target, prompt_ids: list[int], seeds: list[int], new_tokens: int,
               temperature: float) -> LawSample:
    """`method` (called as `method(prompt_ids, seed=, max_new_tokens=)`) once per seed."""
    outs = [method(prompt_ids, seed=s, max_new_tokens=new_tokens).tokens for s in seeds]
    return LawSample([o[FIRST_CYCLE_POSITION] for o in outs if len(o) > FIRST_CYCLE_POSITION],
                     [lp for o in outs if (lp := tempered_logprob(target, prompt_ids, o, temperature)) is not None])


def check_law(mine: LawSample, ar: LawSample, is_ar: bool = False) -> LawCheck:
    """Both tests of `mine` against ar's sample (ar itself: the reference, no test)."""
    return LawCheck(None if is_ar else logprob_test(mine.logprobs, ar.logprobs),
                    float(np.mean(mine.logprobs)) if mine.logprobs else None,
                    float(np.mean(ar.logprobs)) if ar.logprobs else None,
                    None if is_ar else token_test(mine.tokens, ar.tokens), len(mine.tokens))
