"""The cost-model interface the simulator consumes (DESIGN.md, "Cost model").

The profiler (`profiler/`) fits concrete models from measurements of the real decoder's phases and
saves them as JSON; `ltd_sim` only relies on this protocol, so it never imports the profiler.
"""

from __future__ import annotations

from typing import Protocol


class CostModel(Protocol):
    """Seconds spent by one draft-and-verify cycle of the real decoder, by phase."""

    def draft_step(self, step: int, top_k: int, context_len: int) -> float:
        """One draft step (step 1 expands the root, later steps a beam of top_k nodes)."""

    def verify(self, size: int, context_len: int) -> float:
        """One target forward over the root plus `size` tree tokens (size 0 = plain decoding)."""

    def overhead(self, depth: int, size: int, top_k: int) -> float:
        """Fixed per-cycle work: tree selection, mask building, acceptance, KV compaction, policy."""

    def predict_cycle(self, depth: int, size: int, context_len: int, top_k: int) -> float:
        """draft (sum over steps) + verify + overhead, in seconds."""


def predict_cycle(model: CostModel, depth: int, size: int, context_len: int, top_k: int) -> float:
    """The one definition of a cycle's cost from its parts; concrete models may call it."""
    draft = sum(model.draft_step(s, top_k, context_len) for s in range(1, depth + 1))
    return draft + model.verify(size, context_len) + model.overhead(depth, size, top_k)
