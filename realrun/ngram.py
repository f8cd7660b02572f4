"""N-gram draft branches: continuations of the longest earlier match of the context's suffix (docs/ngram.md).

A training-free source of draft tokens (prompt lookup). `NgramIndex` maps every n-gram of a token
stream (n in [ngram_min, ngram_max]) to the positions right after its occurrences, and is updated as
tokens commit, so a lookup never rescans the context. `propose` finds the longest suffix of the
committed context that occurred earlier (in the context, or in an optional corpus of earlier outputs),
takes the continuations of its `max_branches` most recent occurrences, and merges them into a trie.
The proposal is a pure function of the committed context and the corpus: a trace recorder and the
decoder see the same branches at the same position.

Scores make n-gram nodes comparable with a draft head's cumulative log-probs, so that "root + the V
best nodes" stays one connected subtree (DESIGN.md, "Merged draft sources"): the formula, the
calibration table and its fit on traces live in `ltd_sim.ngram_calibration`.

`merge_proposal` grafts a proposal into a drafter's tree: siblings carrying the same token become one
node (the greedy walk and the lossless sampler assume distinct siblings) with the larger score, and
every node says which source produced it (`SourcedTree.sources`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ltd_sim import defaults
from ltd_sim.errors import LTDError
from ltd_sim.ngram_calibration import NgramCalibration, best_first_score, branch_scores
from ltd_sim.tree import SOURCE_HEAD, SOURCE_NGRAM, DraftTree, NgramSignals, SourcedTree

__all__ = ["NgramCalibration", "SOURCE_HEAD", "SOURCE_NGRAM", "SourcedTree", "NgramSignals"]  # re-exported

CORPUS_FORMAT = "ltd-ngram-corpus"
FORMAT_VERSION = 1
MAX_NGRAM = defaults.MAX_NGRAM
SEPARATOR = -1  # between corpus sequences: no n-gram and no continuation crosses it


@dataclass(frozen=True)
class NgramConfig:
    """What the n-gram source looks for (`--ngram-min/--ngram-max`, `--ngram-corpus`, `--ngram-calibration`)."""

    ngram_min: int = defaults.NGRAM_MIN  # shortest suffix that counts as a match
    ngram_max: int = defaults.NGRAM_MAX  # longest suffix tried first
    max_branches: int = defaults.NGRAM_BRANCHES  # most recent occurrences used: at most that many branches
    corpus: str | None = None  # an ltd-ngram-corpus JSON file of earlier outputs, searched like the context
    calibration: str | None = None  # an ltd-ngram-calibration JSON file (default: the prior)

    def validate(self) -> None:
        if self.ngram_min < 1:
            raise LTDError(f"--ngram-min must be at least 1, got {self.ngram_min}")
        if self.ngram_max < self.ngram_min:
            raise LTDError(f"--ngram-min ({self.ngram_min}) is above --ngram-max ({self.ngram_max})")
        if self.ngram_max > MAX_NGRAM:
            raise LTDError(f"--ngram-max must be at most {MAX_NGRAM}, got {self.ngram_max}")
        if self.max_branches < 1:
            raise LTDError(f"n-gram max_branches must be at least 1, got {self.max_branches}")


# --------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------

class NgramIndex:
    """Every n-gram (n in [ngram_min, ngram_max]) of a token stream -> the positions right after it.

    `append` registers the n-grams ending at the new token: O(ngram_max) per token, never a rescan.
    `end_segment` separates corpus sequences (no n-gram or continuation crosses the separator)."""

    def __init__(self, ngram_min: int, ngram_max: int):
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], list[int]] = {}
        self._segment_start = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def append(self, token: int) -> None:
        self.tokens.append(int(token))
        end = len(self.tokens)
        for n in range(self.ngram_min, min(self.ngram_max, end - self._segment_start) + 1):
            self.ends.setdefault(tuple(self.tokens[end - n:end]), []).append(end)

    def extend(self, tokens) -> None:
        for token in tokens:
            self.append(token)

    def end_segment(self) -> None:
        self.tokens.append(SEPARATOR)
        self._segment_start = len(self.tokens)

    def continuation(self, end: int, depth: int) -> list[int]:
        """Up to `depth` tokens from position `end`, cut at the stream's end or a separator."""
        cont = self.tokens[end:end + depth]
        return cont[:cont.index(SEPARATOR)] if SEPARATOR in cont else cont


def index_of(tokens, cfg: NgramConfig) -> NgramIndex:
    index = NgramIndex(cfg.ngram_min, cfg.ngram_max)
    index.extend(tokens)
    return index


# --------------------------------------------------------------------------------------------
# Proposals
# --------------------------------------------------------------------------------------------

@dataclass
class NgramProposal:
    """The branches for one cycle: a trie below the root, nodes in depth order."""

    match_len: int  # length of the longest suffix that occurred earlier (0: no match)
    matches: int  # earlier occurrences of that suffix, context and corpus together
    tokens: np.ndarray  # int64 [n]
    parents: np.ndarray  # int64 [n]: index of the parent trie node, -1 for the root
    depths: np.ndarray  # int64 [n]: 1 for the root's children
    scores: np.ndarray  # float32 [n]: calibrated cumulative log score (ltd_sim.ngram_calibration)
    log_share: np.ndarray  # float32 [n]: log of the share of the used occurrences through the node

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def signals(self) -> NgramSignals:
        """What a policy may observe before drafting (feature set "ngram_v1")."""
        return NgramSignals(self.match_len, self.matches, best_first_score(self.scores, self.depths))

    def truncated(self, depth: int) -> "NgramProposal":
        """The proposal `propose` gives at a smaller depth (the trie's nodes are in depth order)."""
        n = int(np.searchsorted(self.depths, depth, side="right"))
        return NgramProposal(self.match_len, self.matches, self.tokens[:n], self.parents[:n], self.depths[:n],
                             self.scores[:n], self.log_share[:n])


def _earlier_ends(index: NgramIndex | None, key: tuple[int, ...], last: int,
                  current: int | None = None) -> tuple[int, list[int]]:
    """(count, ends of the `last` most recent) occurrences of `key` in `index`, the one ending at
    `current` (the context's own suffix, registered last) excluded. Slices only the tail: a frequent
    n-gram's list is never copied whole."""
    ends = index.ends.get(key, ()) if index is not None else ()
    count = len(ends)
    if count and ends[-1] == current:
        count -= 1
    return count, list(ends[max(0, count - last):count])


def _trie(continuations: list[list[int]]):
    """Merge continuations into a trie; returns (tokens, parents, depths, support) in depth order.
    `support` counts the continuations through each node."""
    tokens, parents, depths, support = [], [], [], []
    child: dict[tuple[int, int], int] = {}
    for cont in continuations:
        node = -1
        for depth, token in enumerate(cont, start=1):
            nxt = child.get((node, token))
            if nxt is None:
                nxt = child[(node, token)] = len(tokens)
                tokens.append(token), parents.append(node), depths.append(depth), support.append(0)
            support[nxt] += 1
            node = nxt
    order = np.argsort(np.asarray(depths, dtype=np.int64), kind="stable")  # parents before children
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    par = np.asarray(parents, dtype=np.int64)[order]
    par = np.where(par < 0, -1, where[np.maximum(par, 0)])
    return (np.asarray(tokens, dtype=np.int64)[order], par, np.asarray(depths, dtype=np.int64)[order],
            np.asarray(support, dtype=np.int64)[order])


def _empty_trie() -> tuple[np.ndarray, ...]:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, empty, np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)


def no_proposal() -> NgramProposal:
    return NgramProposal(0, 0, *_empty_trie())


def propose(context: NgramIndex, corpus: NgramIndex | None, cfg: NgramConfig, calibration: NgramCalibration,
            depth: int) -> NgramProposal:
    """Branches of up to `depth` tokens after the longest earlier match of the context's suffix.

    Suffix lengths go from ngram_max down to ngram_min; the first length with an earlier occurrence
    (context or corpus) wins. Its `max_branches` most recent occurrences (the context's, most recent
    first, then the corpus's, last sequence first) give the continuations. Which occurrences are used
    does not depend on `depth`, so the proposal at depth D is the one at a larger depth cut at D (the
    trace-replay property of DESIGN.md)."""
    if depth < 1:
        return no_proposal()
    for n in range(min(cfg.ngram_max, len(context)), cfg.ngram_min - 1, -1):
        key = tuple(context.tokens[-n:])
        in_context, recent = _earlier_ends(context, key, cfg.max_branches, current=len(context))
        in_corpus, recent_corpus = _earlier_ends(corpus, key, cfg.max_branches - len(recent))
        if not in_context and not in_corpus:
            continue
        used = [(context, e) for e in reversed(recent)] + [(corpus, e) for e in reversed(recent_corpus)]
        conts = [c for c in (index.continuation(e, depth) for index, e in used) if c]
        if not conts:  # every occurrence ends the stream: nothing follows it yet
            return NgramProposal(n, in_context + in_corpus, *_empty_trie())
        tokens, parents, depths, support = _trie(conts)
        log_share = np.log(support / len(used)).astype(np.float32)
        scores = branch_scores(log_share, n, depths, calibration)
        return NgramProposal(n, in_context + in_corpus, tokens, parents, depths, scores, log_share)
    return no_proposal()


class NgramProposer:
    """The n-gram source of one decoder: its config and calibration, the corpus index (built once),
    and the context index of the current generation (fed every committed token)."""

    def __init__(self, cfg: NgramConfig, calibration: NgramCalibration | None = None,
                 corpus: NgramIndex | None = None):
        cfg.validate()
        self.cfg = cfg
        self.calibration = calibration or NgramCalibration.prior()
        self.corpus = corpus
        self.context = NgramIndex(cfg.ngram_min, cfg.ngram_max)

    def begin(self, context_ids) -> None:
        """A new generation: index the prompt and the first token."""
        self.context = index_of(context_ids, self.cfg)

    def commit(self, tokens) -> None:
        self.context.extend(tokens)

    def propose(self, depth: int) -> NgramProposal:
        return propose(self.context, self.corpus, self.cfg, self.calibration, depth)


# --------------------------------------------------------------------------------------------
# Trees with sources, and the graft
# --------------------------------------------------------------------------------------------

def merge_proposal(tree: DraftTree, proposal: NgramProposal) -> SourcedTree:
    """`tree` (a drafter's, nodes in step order) with the proposal's branches grafted below its root.

    A branch node whose parent already has a child with its token is merged into that child, which
    keeps the larger score; the other branch nodes are added. Nodes are then put back in step order
    (stable: within a step, the drafter's nodes first), so that `DraftTree.truncated(D)` is the tree a
    cycle stopping at depth D builds. A merged node's score is at least its n-gram score, and a branch
    node's score is at most its n-gram parent's, so no node outscores its parent.

    A head tree has hundreds of nodes (711 at top-k 10, depth 8) and the trie a few dozen: only the
    trie is walked in Python, against a dict of the tree nodes that carry one of its tokens."""
    n = tree.num_nodes
    sources = np.full(n, SOURCE_HEAD, dtype=np.uint8)
    sources[0] = 0
    head_scores = tree.scores.astype(np.float32)
    share = np.zeros(n, dtype=np.float32)
    if len(proposal) == 0:
        return SourcedTree(tree.tokens, tree.parents, tree.scores, tree.steps, sources, head_scores, share,
                           proposal.signals)
    # (parent, token) -> node, for the tree nodes carrying a token of the trie (the only ones a branch
    # node can merge into); the root's parent -1 never matches
    carries = np.zeros(n, dtype=bool)
    for token in set(proposal.tokens.tolist()):
        carries |= tree.tokens == token
    maybe = np.flatnonzero(carries)
    keys = (tree.parents[maybe].astype(np.int64) << 32) | tree.tokens[maybe].astype(np.int64)
    child = dict(zip(keys.tolist(), maybe.tolist()))
    where: list[int] = []  # tree index of each trie node (added ones: n, n+1, ...)
    parent_of: list[int] = []  # tree index of each trie node's parent
    added = n
    for p, token in zip(proposal.parents.tolist(), proposal.tokens.tolist()):
        parent = 0 if p < 0 else where[p]
        node = child.get((parent << 32) | token, -1) if parent < n else -1  # an added parent has no tree child
        if node < 0:
            node, added = added, added + 1
        where.append(node), parent_of.append(parent)
    where, parent_of = np.asarray(where, dtype=np.int64), np.asarray(parent_of, dtype=np.int64)
    merged = where < n
    scores = tree.scores.copy()
    np.maximum.at(scores, where[merged], proposal.scores[merged])
    sources[where[merged]] |= SOURCE_NGRAM
    share[where[merged]] = proposal.log_share[merged]
    new = ~merged  # in trie order, which is the order of their indices n, n+1, ...
    added_nodes = int(new.sum())
    tokens = np.concatenate((tree.tokens, proposal.tokens[new]))
    parents = np.concatenate((tree.parents.astype(np.int64), parent_of[new]))
    scores = np.concatenate((scores, proposal.scores[new].astype(np.float32)))
    steps = np.concatenate((tree.steps, proposal.depths[new].astype(np.int8)))
    sources = np.concatenate((sources, np.full(added_nodes, SOURCE_NGRAM, dtype=np.uint8)))
    head_scores = np.concatenate((head_scores, np.full(added_nodes, -np.inf, dtype=np.float32)))
    share = np.concatenate((share, proposal.log_share[new]))
    order = np.argsort(steps, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    par = parents[order]
    par = np.where(par < 0, -1, rank[np.maximum(par, 0)])
    return SourcedTree(tokens[order].astype(np.int64), par.astype(np.int32), scores[order], steps[order],
                       sources[order], head_scores[order], share[order], proposal.signals)


# --------------------------------------------------------------------------------------------
# The corpus file
# --------------------------------------------------------------------------------------------

def tokenizer_digest(tokenizer) -> str:
    """A short digest of a tokenizer's vocabulary (token -> id): corpora say which one they were made with."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def write_corpus(path, sequences, vocab_size: int, tokenizer=None) -> None:
    """An ltd-ngram-corpus file (JSON): format, version, vocab_size, tokenizer digest (or null), sequences."""
    from ltd_sim.io import write_json

    write_json(path, {"format": CORPUS_FORMAT, "version": FORMAT_VERSION, "vocab_size": int(vocab_size),
                      "tokenizer": tokenizer_digest(tokenizer) if tokenizer is not None else None,
                      "sequences": [[int(t) for t in seq] for seq in sequences]})


def read_corpus(path) -> dict:
    """Parse and check the file's own fields; the vocabulary is checked against the target later
    (`corpus_index`), so that a bad file fails before any model loads."""
    from ltd_sim.io import read_json

    raw = read_json(path, "--ngram-corpus")
    if not isinstance(raw, dict) or raw.get("format") != CORPUS_FORMAT:
        raise LTDError(f"--ngram-corpus {path} is not an {CORPUS_FORMAT} file (docs/ngram.md)")
    if raw.get("version") != FORMAT_VERSION:
        raise LTDError(f"--ngram-corpus {path} has version {raw.get('version')!r}; "
                       f"this toolkit reads version {FORMAT_VERSION}")
    seqs, vocab = raw.get("sequences"), raw.get("vocab_size")
    if not isinstance(vocab, int) or not isinstance(seqs, list) or \
            not all(isinstance(s, list) and all(isinstance(t, int) for t in s) for s in seqs):
        raise LTDError(f"--ngram-corpus {path}: needs an integer vocab_size and sequences of token ids")
    return raw


def corpus_index(raw: dict, path, cfg: NgramConfig, vocab_size: int, tokenizer=None) -> NgramIndex:
    """The corpus's index, after checking that it was tokenized for the target's vocabulary."""
    if raw["vocab_size"] != vocab_size:
        raise LTDError(f"--ngram-corpus {path} was tokenized for a vocabulary of {raw['vocab_size']} tokens; "
                       f"the target's has {vocab_size}")
    digest = raw.get("tokenizer")
    if digest is not None and tokenizer is not None and digest != tokenizer_digest(tokenizer):
        raise LTDError(f"--ngram-corpus {path} was tokenized with another tokenizer (digest {digest}) than "
                       f"the target's ({tokenizer_digest(tokenizer)})")
    index = NgramIndex(cfg.ngram_min, cfg.ngram_max)
    for seq in raw["sequences"]:
        if seq and not 0 <= min(seq) <= max(seq) < vocab_size:
            raise LTDError(f"--ngram-corpus {path} holds token ids outside the vocabulary (0..{vocab_size - 1})")
        index.extend(seq)
        index.end_segment()
    return index


def corpus_digest(index: NgramIndex | None) -> str | None:
    """A short digest of a corpus index's token stream (None: no corpus)."""
    if index is None:
        return None
    return hashlib.sha256(np.asarray(index.tokens, dtype=np.int64).tobytes()).hexdigest()[:16]


@dataclass
class NgramInputs:
    """The n-gram source's files, read and checked before any model loads (a bad file fails at once)."""

    cfg: NgramConfig
    calibration: NgramCalibration
    corpus: dict | None  # the parsed corpus file; its vocabulary is checked once the target is known


def read_inputs(cfg: NgramConfig) -> NgramInputs:
    cfg.validate()
    calibration = NgramCalibration.load(cfg.calibration) if cfg.calibration else NgramCalibration.prior()
    return NgramInputs(cfg, calibration, read_corpus(cfg.corpus) if cfg.corpus else None)


def make_proposer(inputs: NgramInputs, vocab_size: int, tokenizer=None) -> NgramProposer:
    """The proposer for the target's vocabulary (and tokenizer, when it has one)."""
    corpus = None
    if inputs.corpus is not None:
        corpus = corpus_index(inputs.corpus, inputs.cfg.corpus, inputs.cfg, vocab_size, tokenizer)
    return NgramProposer(inputs.cfg, inputs.calibration, corpus)
