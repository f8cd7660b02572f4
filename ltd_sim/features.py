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
  length), so the simulator's tables stay per-position and exact;
- "ngram_v1": paper_v2 plus three n-gram signals (`NgramSignals`, known before the first step, so
  the "no draft" decision sees them too): the longest match length, the number of earlier
  occurrences, and the best first-token n-gram score. For decoders with an n-gram source (`--ngram`,
  `--draft-kind ngram`) only; policies of the other sets run without one, and each refuses the
  other's decoder (`check_ngram_match`).

The observation, every entry normalised into [0, 1]:
- frontier: the `top_k` best cumulative log-probs of the nodes the latest step created, sorted, as
  probabilities exp(score) (0 pads a frontier narrower than top_k);
- tree: the pool's r-th best cumulative log-prob for every r = V of the size grid (V >= 1), as
  probabilities: what the V-th verified token is worth, for each V the size policy may pick;
- depth / max_depth;
- log(1 + context_len) / log(1 + CONTEXT_NORM), clipped to 1;
- ngram_v1 only: min(match_len / NGRAM_NORM, 1), log(1 + matches) / log(1 + MATCHES_NORM) clipped to
  1, exp(best first-token n-gram score) (0 without a branch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ltd_sim import defaults
from ltd_sim.errors import LTDError
from ltd_sim.tree import DraftTree, NgramSignals, SourcedTree

FEATURE_SET = "paper_v2"
NGRAM_FEATURE_SET = "ngram_v1"  # the set of decoders with an n-gram source
FEATURE_SETS = ("paper_v1", "paper_v2", NGRAM_FEATURE_SET)  # every set this toolkit reads
CONTEXT_NORM = 4096
NGRAM_NORM = 16  # match lengths at or above this count as the longest
MATCHES_NORM = 256  # earlier occurrences at or above this count as the most
NO_SIGNALS = NgramSignals()


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
    def uses_ngram(self) -> bool:
        """Whether the observation holds the n-gram signals (the policies need an n-gram source)."""
        return self.name == NGRAM_FEATURE_SET

    @property
    def dim(self) -> int:
        return self.top_k + len(self.ranks) + 2 + (3 if self.uses_ngram else 0)

    def to_json(self) -> dict:
        d = asdict(self)
        d["size_grid"] = list(self.size_grid)
        d["dim"] = self.dim
        return d

    @classmethod
    def from_json(cls, d: dict) -> "FeatureSpec":
        if d.get("name") not in FEATURE_SETS:
            raise LTDError(f"unknown feature set {d.get('name')!r}; this toolkit computes {', '.join(FEATURE_SETS)}")
        return cls(d["name"], int(d["top_k"]), int(d["max_depth"]), tuple(d["size_grid"]),
                   int(d["context_norm"]))


DEFAULT_SPEC = FeatureSpec()


def spec_for(has_ngram: bool, **fields) -> FeatureSpec:
    """The default feature set for a decoder with (ngram_v1) or without (paper_v2) an n-gram source."""
    return FeatureSpec(NGRAM_FEATURE_SET if has_ngram else FEATURE_SET, **fields)


def check_ngram_match(spec: FeatureSpec, has_ngram: bool, where: str = "these policies") -> None:
    """Refuse, in one line, policies whose features do not match the decoder's draft sources."""
    if spec.uses_ngram and not has_ngram:
        raise LTDError(f"{where} observe n-gram signals (feature set {spec.name}): decode with --ngram or "
                       "--draft-kind ngram, as they were trained")
    if has_ngram and not spec.uses_ngram:
        raise LTDError(f"{where} were trained without n-gram signals (feature set {spec.name}): decode without "
                       "--ngram, or train policies on n-gram traces (ltd trace --ngram, then ltd pretrain)")


def ngram_features(signals: NgramSignals) -> np.ndarray:
    """The three n-gram entries of an ngram_v1 observation."""
    best = float(np.exp(signals.best_score)) if np.isfinite(signals.best_score) else 0.0
    return np.array([min(signals.match_len / NGRAM_NORM, 1.0),
                     min(np.log1p(max(signals.matches, 0)) / np.log1p(MATCHES_NORM), 1.0), best])


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
    """Observation float32 [spec.dim] for the tree built so far (depth >= 1) at this context length.
    ngram_v1 reads the n-gram signals a `SourcedTree` carries (none: no match)."""
    depth = tree.depth
    scores = tree.scores.astype(np.float64)
    frontier = scores[tree.nodes_up_to(depth - 1):] if depth >= 1 else scores[:0]
    ranked = _top_desc(scores[1:], int(spec.ranks[-1]))[spec.ranks - 1]
    ctx = min(np.log1p(max(context_len, 0)) / np.log1p(spec.context_norm), 1.0)
    parts = [np.exp(_top_desc(frontier, spec.top_k)), np.exp(ranked), [min(depth / spec.max_depth, 1.0), ctx]]
    if spec.uses_ngram:
        parts.append(ngram_features(getattr(tree, "ngram", NO_SIGNALS)))
    return np.concatenate(parts).astype(np.float32)


def pre_draft_tree(ngram: NgramSignals | None = None) -> DraftTree:
    """The tree before any draft step: the root alone (its token does not enter the observation),
    carrying the cycle's n-gram signals when there are some."""
    root = (np.zeros(1, np.int64), np.array([-1]), np.zeros(1, np.float32), np.zeros(1, np.int8))
    if ngram is None:
        return DraftTree(*root)
    return SourcedTree(*root, np.zeros(1, np.uint8), np.zeros(1, np.float32), np.zeros(1, np.float32), ngram)


def pre_draft_observation(context_len: int, spec: FeatureSpec = DEFAULT_SPEC,
                          ngram: NgramSignals | None = None) -> np.ndarray:
    """The depth policy's observation before the first draft step (feature sets paper_v2, ngram_v1):
    `observe` of the root-only tree, so depth 0, an empty frontier and pool, the context length, and
    (ngram_v1) the cycle's n-gram signals."""
    return observe(pre_draft_tree(ngram), context_len, spec)


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
