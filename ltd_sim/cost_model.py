"""The cost-model interface the simulator consumes (DESIGN.md, "Cost model").

The profiler (`profiler/`) fits concrete models from measurements of the real decoder's phases and
saves them as JSON; `ltd_sim` only relies on this protocol, so it never imports the profiler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Protocol


class CostModel(Protocol):
    """Seconds spent by one draft-and-verify cycle of the real decoder, by phase."""

    def draft_step(self, step: int, top_k: int, context_len: int) -> float:
        """One draft step (step 1 expands the root, later steps a beam of top_k nodes)."""

    def verify(self, size: int, context_len: int) -> float:
        """One target forward over the root plus `size` tree tokens (size 0 = plain decoding)."""

    def overhead(self, depth: int, size: int, top_k: int) -> float:
        """Fixed per-cycle work: tree selection, mask building, acceptance, KV compaction, policy."""

    def ngram(self, context_len: int, depth: int | None = None) -> float:
        """Finding the n-gram branches (the longest earlier match of the context's suffix) and merging
        them into the draft tree (once per draft step): paid by cycles whose tree has n-gram branches
        (`--ngram`, `--draft-kind ngram`), added by the simulator itself, never by `predict_cycle`.
        `depth`: the cycle's draft steps (None: a cycle of the deepest profiled depth)."""

    def predict_cycle(self, depth: int, size: int, context_len: int, top_k: int) -> float:
        """draft (sum over steps) + verify + overhead, in seconds."""


def ngram_seconds(model: CostModel, context_len: int, depth: int | None = None) -> float:
    """Seconds of one cycle's n-gram phase; 0.0 for cost models written before that term existed."""
    ngram = getattr(model, "ngram", None)
    if not callable(ngram):
        return 0.0
    return float(ngram(context_len) if depth is None else ngram(context_len, depth))


def predict_cycle(model: CostModel, depth: int, size: int, context_len: int, top_k: int) -> float:
    """The one definition of a cycle's cost from its parts; concrete models may call it."""
    draft = sum(model.draft_step(s, top_k, context_len) for s in range(1, depth + 1))
    return draft + model.verify(size, context_len) + model.overhead(depth, size, top_k)


ANALYTIC_KIND = "ltd_sim.analytic"


@dataclass
class AnalyticCostModel:
    """A synthetic, hand-written cost model with a CPU-like verify curve (for tests and examples).

    Not fitted to any measurement: real cost models come from `profiler/`. Its verify curve has the
    shape a CPU shows: one token (plain decoding) is cheap, the second costs far more (the matrix
    path changes), and beyond that cost grows in steps of `tile` tokens. All times in seconds.
    """

    verify_one: float = 0.012  # root alone
    verify_multi: float = 0.020  # root + 1 tree token
    verify_tile: float = 0.004  # each further started tile of `tile` tokens
    tile: int = 16
    verify_per_ctx: float = 2e-6  # attention over the context, per cached token
    draft_first: float = 0.002  # step 1 (also feeds the tokens committed last cycle)
    draft_later: float = 0.003  # each later step (a beam of top_k nodes)
    draft_per_ctx: float = 2e-7
    overhead_base: float = 0.0005
    overhead_per_token: float = 1e-5
    ngram_propose: float = 2e-5  # n-gram lookup + merge into the tree (an indexed lookup: no context term)

    def draft_step(self, step: int, top_k: int, context_len: int) -> float:
        return (self.draft_first if step == 1 else self.draft_later) + self.draft_per_ctx * context_len

    def verify(self, size: int, context_len: int) -> float:
        size = max(int(size), 0)
        base = self.verify_one if size == 0 else self.verify_multi + self.verify_tile * ((size - 1) // self.tile)
        return base + self.verify_per_ctx * context_len

    def overhead(self, depth: int, size: int, top_k: int) -> float:
        return self.overhead_base + self.overhead_per_token * size

    def ngram(self, context_len: int, depth: int | None = None) -> float:
        return self.ngram_propose

    def predict_cycle(self, depth: int, size: int, context_len: int, top_k: int) -> float:
        return predict_cycle(self, depth, size, context_len, top_k)

    def to_json(self) -> dict:
        return {"kind": ANALYTIC_KIND, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict) -> "AnalyticCostModel":
        from ltd_sim.errors import LTDError

        if d.get("kind") != ANALYTIC_KIND:
            raise LTDError(f"not an analytic cost model (kind {d.get('kind')!r})")
        names = {f.name for f in fields(cls)}
        return cls(**{k: float(v) if k != "tile" else int(v) for k, v in d.items() if k in names})
