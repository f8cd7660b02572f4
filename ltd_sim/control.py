"""The decoder's two control points, as protocols, and the static controllers (EAGLE-3 baseline).

The depth controller is asked after every draft step whether to take another; the size controller
then picks V, the number of tree tokens the target verifies (0 = the root alone). Learned policies,
heuristics and static settings all implement these, in the real decoder and in the simulator alike.
"""

from __future__ import annotations

from typing import Protocol

from ltd_sim.tree import DraftTree


class DepthController(Protocol):
    def should_continue(self, tree: DraftTree, context_len: int) -> bool:
        """After step `tree.depth` (>= 1): take another draft step?"""


class SizeController(Protocol):
    def choose_size(self, tree: DraftTree, context_len: int) -> int:
        """How many tree tokens to verify with the root (clipped by the caller to the pool)."""


class StaticDepth:
    def __init__(self, depth: int):
        self.depth = int(depth)

    def should_continue(self, tree: DraftTree, context_len: int) -> bool:
        return tree.depth < self.depth


class StaticSize:
    def __init__(self, size: int):
        self.size = int(size)

    def choose_size(self, tree: DraftTree, context_len: int) -> int:
        return self.size
