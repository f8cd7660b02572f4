"""N-gram scores on the head's scale: the calibration table, its fit on traces, and re-scoring.

An n-gram node at depth j of a branch found with a match of length m scores

    log(share) + sum_{i <= j} log r(m, i)

(docs/ngram.md): `share` is the fraction of the used occurrences whose continuation passes through
the node, r(m, i) the rate at which the i-th token of a branch is accepted given the tokens before it
were. `NgramCalibration` holds log r; until it is fitted on traces the prior r(m, i) = (m + i - 1) /
(m + i) is used. `fit_calibration` measures r on recorded trees; `rescore` gives a recorded tree the
scores another calibration would have given it (exact: the tree's shape does not depend on them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ltd_sim.errors import LTDError
from ltd_sim.tree import SOURCE_HEAD, SOURCE_NGRAM, SourcedTree, greedy_path

CALIBRATION_FORMAT = "ltd-ngram-calibration"
CALIBRATION_VERSION = 1
PRIOR_WEIGHT = 2.0  # pseudo-observations of the prior in every fitted cell (few observations stay near it)


@dataclass
class NgramCalibration:
    """log r(m, i), rows m = 1..rows (longer matches use the last row), columns i = 1..cols (deeper
    tokens use the last column); every entry <= 0, so a node never outscores its parent."""

    log_rate: np.ndarray  # float [rows, cols]
    fitted: bool = False  # False: the prior, not measured on traces
    note: str = "prior r(m, i) = (m + i - 1) / (m + i)"

    def __post_init__(self) -> None:
        self.log_rate = np.asarray(self.log_rate, dtype=np.float64)
        if self.log_rate.ndim != 2 or 0 in self.log_rate.shape:
            raise LTDError("an n-gram calibration needs a non-empty table [match length, position]")
        if not np.isfinite(self.log_rate).all() or (self.log_rate > 0).any():
            raise LTDError("an n-gram calibration's log rates must be finite and <= 0")

    @classmethod
    def prior(cls, rows: int = 16, cols: int = 64) -> "NgramCalibration":
        """r(m, i) = (m + i - 1) / (m + i): longer matches, and branches already followed further,
        are trusted more; P(first j tokens accepted) = m / (m + j)."""
        m = np.arange(1, rows + 1)[:, None]
        i = np.arange(1, cols + 1)[None, :]
        return cls(np.log((m + i - 1) / (m + i)))

    def cumulative(self, match_len: int, depth: int) -> np.ndarray:
        """[depth]: sum_{i <= j} log r(match_len, i) for j = 1..depth."""
        row = self.log_rate[min(max(match_len, 1), self.log_rate.shape[0]) - 1]
        cols = np.minimum(np.arange(depth), len(row) - 1)
        return np.cumsum(row[cols])

    def digest(self) -> str:
        """A short digest of the table (trace manifests and policy specs name the calibration by it)."""
        import hashlib

        return hashlib.sha256(np.ascontiguousarray(self.log_rate).tobytes()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "fitted": self.fitted,
                "note": self.note, "log_rate": self.log_rate.tolist()}

    def save(self, path) -> None:
        from ltd_sim.io import write_json

        write_json(path, self.to_json())

    @classmethod
    def load(cls, path) -> "NgramCalibration":
        from ltd_sim.io import read_json

        raw = read_json(path, "--ngram-calibration")
        if not isinstance(raw, dict) or raw.get("format") != CALIBRATION_FORMAT or "log_rate" not in raw:
            raise LTDError(f"--ngram-calibration {path} is not an {CALIBRATION_FORMAT} file")
        if raw.get("version") != CALIBRATION_VERSION:
            raise LTDError(f"--ngram-calibration {path} has version {raw.get('version')!r}; "
                           f"this toolkit reads version {CALIBRATION_VERSION}")
        try:
            return cls(np.asarray(raw["log_rate"], dtype=np.float64), bool(raw.get("fitted", False)),
                       str(raw.get("note", "")))
        except (TypeError, ValueError) as exc:
            raise LTDError(f"--ngram-calibration {path}: bad log_rate table ({exc})") from None


def branch_scores(log_share: np.ndarray, match_len: int, depths: np.ndarray,
                  calibration: NgramCalibration) -> np.ndarray:
    """float32 scores of n-gram nodes from their float32 log shares and depths: the one formula the
    proposer and `rescore` share (so a re-scored trace carries the decoder's very bits)."""
    depths = np.asarray(depths, dtype=np.int64)
    if len(depths) == 0:
        return np.zeros(0, dtype=np.float32)
    cum = calibration.cumulative(match_len, int(depths.max()))
    return (np.asarray(log_share, dtype=np.float32).astype(np.float64) + cum[depths - 1]).astype(np.float32)


def best_first_score(scores: np.ndarray, depths: np.ndarray) -> float:
    """The best score among the first tokens of the branches (-inf when there is none)."""
    first = np.asarray(scores)[np.asarray(depths) == 1]
    return float(first.max()) if len(first) else float("-inf")


def rescore(tree: SourcedTree, calibration: NgramCalibration) -> SourcedTree:
    """The tree `calibration` would have scored: n-gram scores recomputed, merged nodes keep the larger
    of the head's and the n-gram's score, the signals' best score follows."""
    is_ngram = (tree.sources & SOURCE_NGRAM) != 0
    if not is_ngram.any():
        return tree
    scores = tree.scores.copy()
    ngram = branch_scores(tree.ngram_share[is_ngram], tree.ngram.match_len, tree.steps[is_ngram], calibration)
    has_head = (tree.sources[is_ngram] & SOURCE_HEAD) != 0
    scores[is_ngram] = np.where(has_head, np.maximum(tree.head_scores[is_ngram], ngram), ngram)
    signals = replace(tree.ngram, best_score=best_first_score(ngram, tree.steps[is_ngram]))
    return SourcedTree(tree.tokens, tree.parents, scores, tree.steps, tree.sources, tree.head_scores,
                       tree.ngram_share, signals)


def acceptance_counts(tree: SourcedTree, continuation: np.ndarray, rows: int, cols: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(reached, accepted) [rows, cols] of one recorded tree: for every node the target's path reaches
    (the root, then each accepted node) that has n-gram children at depth i, reached[m, i] += 1, and
    accepted[m, i] += 1 when the path goes on into one of them (m: the tree's match length)."""
    reached = np.zeros((rows, cols), np.int64)
    accepted = np.zeros((rows, cols), np.int64)
    m = tree.ngram.match_len
    is_ngram = (tree.sources & SOURCE_NGRAM) != 0
    if m < 1 or not is_ngram[1:].any():
        return reached, accepted
    row = min(m, rows) - 1
    path = greedy_path(tree, continuation)
    on_path = np.zeros(tree.num_nodes, dtype=bool)
    on_path[path] = True
    on_path[0] = True
    for parent in np.flatnonzero(on_path):
        kids = np.flatnonzero((tree.parents == parent) & is_ngram)
        if len(kids) == 0:
            continue
        col = min(int(tree.steps[kids[0]]), cols) - 1
        reached[row, col] += 1
        accepted[row, col] += int(on_path[kids].any())
    return reached, accepted


def fit_calibration(pairs, rows: int, cols: int, prior: NgramCalibration | None = None,
                    weight: float = PRIOR_WEIGHT) -> tuple[NgramCalibration, np.ndarray]:
    """r(m, i) measured on (tree, continuation) pairs of recorded hybrid or n-gram trees: accepted /
    reached per cell, each cell shrunk towards the prior by `weight` pseudo-observations. Returns the
    calibration and the reached counts [rows, cols] (how much each cell rests on)."""
    if not weight > 0:
        raise LTDError(f"the prior's weight must be above 0 (cells nothing reached keep the prior), got {weight}")
    prior = prior or NgramCalibration.prior(rows, cols)
    prior_rate = np.exp(np.stack([prior.log_rate[min(m, prior.log_rate.shape[0]) - 1,
                                                 np.minimum(np.arange(cols), prior.log_rate.shape[1] - 1)]
                                  for m in range(1, rows + 1)]))
    reached = np.zeros((rows, cols), np.int64)
    accepted = np.zeros((rows, cols), np.int64)
    for tree, continuation in pairs:
        r, a = acceptance_counts(tree, continuation, rows, cols)
        reached += r
        accepted += a
    if reached.sum() == 0:
        raise LTDError("the traces hold no n-gram branch the target's path reached: nothing to calibrate on "
                       "(record them with --ngram or --draft-kind ngram)")
    rate = (accepted + weight * prior_rate) / (reached + weight)
    rate = np.clip(rate, 1e-4, 1.0)
    note = f"fitted on {int(reached.sum())} reached branch tokens ({int(accepted.sum())} accepted), prior weight {weight:g}"
    return NgramCalibration(np.log(rate), fitted=True, note=note), reached
