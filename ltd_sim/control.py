"""The decoder's two control points, as protocols, and the static controllers (EAGLE-3 baseline).

The depth controller is asked before the first draft step whether to draft at all (`should_draft`:
False is the "no draft" action D = 0, a plain decoding step with no draft forward) and after every
draft step whether to take another; the size controller then picks V, the number of tree tokens the
target verifies (0 = the root alone, after drafting). Learned policies,
heuristics and static settings all implement these, in the real decoder and in the simulator alike.
"""

from __future__ import annotations

import time
from typing import Protocol

from ltd_sim.tree import DraftTree, NgramSignals


class DepthController(Protocol):
    def should_draft(self, context_len: int, ngram: NgramSignals | None = None) -> bool:
        """Before step 1: draft at all? (False: D = 0, the cycle verifies the root alone.) `ngram`:
        what an n-gram source found for this cycle, when the decoder has one."""

    def should_continue(self, tree: DraftTree, context_len: int) -> bool:
        """After step `tree.depth` (>= 1): take another draft step?"""


class SizeController(Protocol):
    def choose_size(self, tree: DraftTree, context_len: int) -> int:
        """How many tree tokens to verify with the root (clipped by the caller to the pool)."""


def wants_draft(ctrl, context_len: int, ngram: NgramSignals | None = None) -> bool:
    """`ctrl.should_draft(context_len, ngram)` (`ngram` passed only when there is one); a controller
    without that decision (written before D = 0 existed) always drafts."""
    ask = getattr(ctrl, "should_draft", None)
    if ask is None:
        return True
    return bool(ask(context_len) if ngram is None else ask(context_len, ngram))


class StaticDepth:
    """A fixed depth; depth 0 never drafts (plain decoding with the drafter loaded)."""

    def __init__(self, depth: int):
        self.depth = int(depth)

    def should_draft(self, context_len: int, ngram: NgramSignals | None = None) -> bool:
        return self.depth >= 1

    def should_continue(self, tree: DraftTree, context_len: int) -> bool:
        return tree.depth < self.depth


class StaticSize:
    def __init__(self, size: int):
        self.size = int(size)

    def choose_size(self, tree: DraftTree, context_len: int) -> int:
        return self.size


class TimedControl:
    """A depth and a size controller with the seconds spent inside their calls counted.

    The bench and the measurement harness report policy overhead (controller seconds over generation
    seconds) for every method alike, static ones included, so the count wraps the controllers rather
    than living in each of them."""

    def __init__(self, depth: DepthController, size: SizeController):
        self.depth, self.size = depth, size
        self.seconds = 0.0
        self.calls = 0

    def should_draft(self, context_len: int, ngram: NgramSignals | None = None) -> bool:
        start = time.perf_counter()
        out = wants_draft(self.depth, context_len, ngram)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def should_continue(self, tree: DraftTree, context_len: int) -> bool:
        return self._timed(self.depth.should_continue, tree, context_len)

    def choose_size(self, tree: DraftTree, context_len: int) -> int:
        return self._timed(self.size.choose_size, tree, context_len)

    def _timed(self, call, tree: DraftTree, context_len: int):
        start = time.perf_counter()
        out = call(tree, context_len)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out
