"""The one observation feature function (DESIGN.md, "One source of truth").

The simulator's tables, the gymnasium envs, the real-decoder policy controllers and any later
real-decoder env all build observations by calling `observe(tree_so_far, context_len)`.

Feature sets (the name is saved with every policy, so old policies keep running as they were trained):
- "paper_v1": the paper's observation below; the depth policy is asked after each draft step only
  (the first step is always taken);
- "paper_v2" (default): the same observation, and the depth policy is also asked *before* the first
  step, on the observation of the root-only tree (`pre_draft_observation`: depth 0, context length,
  empty frontier and pool). STOP there is the "no draft" action D = 0: the cycle is a plain decoding
  step with no draft forward. The decision sees only what is known before drafting (the context
  length), so the simulator's tables stay per-position and exact.

The observation, every entry normalised into [0, 1]:
- frontier: the `top_k` best cumulative log-probs of the nodes the latest step created, sorted, as
  probabilities exp(score) (0 pads a frontier narrower than top_k);
- tree: the pool's r-th best cumulative log-prob for every r = V of the size grid (V >= 1), as
  probabilities: what the V-th verified token is worth, for each V the size policy may pick;
- depth / max_depth;
- log(1 + context_len) / log(1 + CONTEXT_NORM), clipped to 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ltd_sim import defaults
from ltd_sim.tree import DraftTree

FEATURE_SET = "paper_v2"
FEATURE_SETS = ("paper_v1", "paper_v2")  # every set this toolkit reads; one observation layout for both
CONTEXT_NORM = 4096


@dataclass(frozen=True)
class FeatureSpec:
    name: str = FEATURE_SET
    top_k: int = defaults.TOP_K
    max_depth: int = defaults.MAX_DEPTH
    size_grid: tuple = defaults.SIZE_GRID
    context_norm: int = CONTEXT_NORM

    @property
    def ranks(self) -> np.ndarray:
        return np.asarray([v for v in self.size_grid if v > 0], dtype=np.int64)

    @property
    def asks_before_draft(self) -> bool:
        """Whether the depth policy also decides before the first draft step (D = 0 allowed)."""
        return self.name != "paper_v1"

    @property
    def dim(self) -> int:
        return self.top_k + len(self.ranks) + 2

    def to_json(self) -> dict:
        d = asdict(self)
        d["size_grid"] = list(self.size_grid)
        d["dim"] = self.dim
        return d

    @classmethod
    def from_json(cls, d: dict) -> "FeatureSpec":
        from ltd_sim.errors import LTDError

        if d.get("name") not in FEATURE_SETS:
            raise LTDError(f"unknown feature set {d.get('name')!r}; this toolkit computes {', '.join(FEATURE_SETS)}")
        return cls(d["name"], int(d["top_k"]), int(d["max_depth"]), tuple(d["size_grid"]),
                   int(d["context_norm"]))


DEFAULT_SPEC = FeatureSpec()


def _top_desc(values: np.ndarray, n: int) -> np.ndarray:
    """The n largest values, descending, padded with -inf."""
    out = np.full(n, -np.inf, dtype=np.float64)
    if len(values) == 0:
        return out
    m = min(n, len(values))
    top = np.partition(values, len(values) - m)[len(values) - m:] if m < len(values) else values
    out[:m] = np.sort(top)[::-1][:m]
    return out


def observe(tree: DraftTree, context_len: int, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """Observation float32 [spec.dim] for the tree built so far (depth >= 1) at this context length."""
    depth = tree.depth
    scores = tree.scores.astype(np.float64)
    frontier = scores[tree.nodes_up_to(depth - 1):] if depth >= 1 else scores[:0]
    ranked = _top_desc(scores[1:], int(spec.ranks[-1]))[spec.ranks - 1]
    ctx = min(np.log1p(max(context_len, 0)) / np.log1p(spec.context_norm), 1.0)
    return np.concatenate((np.exp(_top_desc(frontier, spec.top_k)), np.exp(ranked),
                           [min(depth / spec.max_depth, 1.0), ctx])).astype(np.float32)


def pre_draft_tree() -> DraftTree:
    """The tree before any draft step: the root alone (its token does not enter the observation)."""
    return DraftTree(np.zeros(1, np.int64), np.array([-1]), np.zeros(1, np.float32), np.zeros(1, np.int8))


def pre_draft_observation(context_len: int, spec: FeatureSpec = DEFAULT_SPEC) -> np.ndarray:
    """The depth policy's observation before the first draft step (feature set "paper_v2"): `observe`
    of the root-only tree, so depth 0, an empty frontier and pool, and the context length."""
    return observe(pre_draft_tree(), context_len, spec)


def step_stats(tree: DraftTree) -> tuple[np.ndarray, np.ndarray]:
    """Per draft step d = 1..depth, the draft-side signals the literature's heuristics stop on:

    - confidence: conditional probability of the best node step d created (its own token's
      probability given its parent), as transformers' `assistant_confidence_threshold` and DISCO's
      confidence stop use for a chain;
    - entropy: entropy of the draft distribution that produced that node (its parent's children),
      from the top-k log-probs, the remaining mass lumped as one outcome (a lower bound), as in the
      entropy stops of AdaEDL and SVIP.
    """
    depth = tree.depth
    conf = np.zeros(depth, np.float32)
    ent = np.zeros(depth, np.float32)
    scores = tree.scores.astype(np.float64)
    cond = scores - scores[np.maximum(tree.parents, 0)]
    start = 1
    for d in range(1, depth + 1):
        end = tree.nodes_up_to(d)
        best = start + int(np.argmax(scores[start:end]))
        conf[d - 1] = np.exp(cond[best])
        sib = np.flatnonzero(tree.parents[start:end] == tree.parents[best]) + start
        p = np.exp(cond[sib])
        rest = max(1.0 - p.sum(), 0.0)
        ent[d - 1] = -(p * np.log(np.maximum(p, 1e-12))).sum() - (rest * np.log(rest) if rest > 0 else 0.0)
        start = end
    return conf, ent
