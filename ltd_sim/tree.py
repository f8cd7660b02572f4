"""Tree arithmetic on draft trees, written once for the real decoder and the simulator.

A draft tree is the candidate pool of one draft-and-verify cycle (DESIGN.md, "Draft tree semantics"):
node 0 is the root (the last committed token); nodes are numbered in creation order, so a parent
always has a smaller index than its children, and the nodes of step s come after those of step s-1.

Everything here is numpy on small arrays (a pool holds at most k + (D-1)k^2 nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROOT = 0


@dataclass
class DraftTree:
    """The candidate pool of one cycle. Arrays are indexed by node; node 0 is the root."""

    tokens: np.ndarray  # int64 [n]: token id of each node (the root's is the last committed token)
    parents: np.ndarray  # int32 [n]: parent node index, -1 for the root
    scores: np.ndarray  # float32 [n]: cumulative draft log-probability (root 0)
    steps: np.ndarray  # int8 [n]: draft step that created the node == its depth (root 0)

    def __post_init__(self) -> None:
        n = len(self.tokens)
        if not (len(self.parents) == len(self.scores) == len(self.steps) == n) or n == 0:
            raise ValueError("a DraftTree needs equal-length, non-empty node arrays")

    @property
    def num_nodes(self) -> int:
        return len(self.tokens)

    @property
    def depth(self) -> int:
        return int(self.steps[-1])

    def nodes_up_to(self, depth: int) -> int:
        """Number of nodes (root included) created by the first `depth` draft steps."""
        return int(np.searchsorted(self.steps, depth, side="right"))

    def truncated(self, depth: int) -> "DraftTree":
        """The tree a cycle stopping after `depth` steps would have built (a prefix of this one)."""
        n = self.nodes_up_to(depth)
        return DraftTree(self.tokens[:n], self.parents[:n], self.scores[:n], self.steps[:n])


def select_verify_set(scores: np.ndarray, size: int) -> np.ndarray:
    """Root plus the `size` highest-scoring candidates, in node order.

    Ties break towards the smaller index, so a child whose score equals its parent's (a draft
    probability of exactly 1) never enters without the parent: the set is a connected subtree.
    """
    size = min(max(int(size), 0), len(scores) - 1)
    if size == 0:
        return np.zeros(1, dtype=np.int64)
    candidates = scores[1:]
    order = np.argsort(-candidates, kind="stable")[:size] + 1
    return np.concatenate(([ROOT], np.sort(order))).astype(np.int64)


def local_parents(parents: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """Parent of each selected node as an index into `selected` (-1 for the root)."""
    position = np.full(len(parents), -1, dtype=np.int64)
    position[selected] = np.arange(len(selected))
    out = position[parents[selected]]
    out[0] = -1
    if (out[1:] < 0).any():
        raise ValueError("verify set is not a connected subtree")
    return out


def ancestor_mask(parents_local: np.ndarray) -> np.ndarray:
    """Bool [m, m]: mask[i, j] is True when j is i or an ancestor of i (parents precede children)."""
    m = len(parents_local)
    mask = np.eye(m, dtype=bool)
    for i in range(1, m):
        mask[i] |= mask[parents_local[i]]
    return mask


def is_chain(parents_local: np.ndarray) -> bool:
    """True when every node's parent is the node before it: a plain causal sequence."""
    return bool(np.array_equal(parents_local[1:], np.arange(len(parents_local) - 1)))


def greedy_accept(
    parents_local: np.ndarray, tokens: np.ndarray, target_next: np.ndarray
) -> tuple[list[int], int]:
    """Greedy acceptance on a verified tree.

    `target_next[i]` is the target's next token after node i (its argmax at node i). Starting at the
    root, descend into the child whose token equals the target's next token at the current node.
    Returns the accepted nodes (local indices, root excluded, root-to-leaf order) and the bonus
    token: the target's next token after the last accepted node.
    """
    path: list[int] = []
    node = 0
    children = children_lists(parents_local)
    while True:
        want = target_next[node]
        nxt = next((c for c in children[node] if tokens[c] == want), None)
        if nxt is None:
            return path, int(want)
        path.append(nxt)
        node = nxt


def children_lists(parents_local: np.ndarray) -> list[list[int]]:
    """Children of every node, in node order."""
    children: list[list[int]] = [[] for _ in range(len(parents_local))]
    for i in range(1, len(parents_local)):
        children[int(parents_local[i])].append(i)
    return children


def tree_positions(steps: np.ndarray, selected: np.ndarray, root_position: int) -> np.ndarray:
    """Position id of each selected node: root position plus node depth."""
    return root_position + steps[selected].astype(np.int64)


def accepted_length_on_trace(
    tree: DraftTree, depth: int, size: int, continuation: np.ndarray
) -> int:
    """Draft tokens a cycle with (depth, size) accepts, given the target's greedy continuation.

    `continuation[d]` is the target's token at depth d + 1 below the root. Under greedy decoding the
    target's next token at an accepted node of depth d is continuation[d], which is all the tree
    walk needs; so this is the decoder's own acceptance rule replayed on a recorded tree.
    """
    n = tree.nodes_up_to(depth)
    selected = select_verify_set(tree.scores[:n], size)
    parents = local_parents(tree.parents[:n], selected)
    node_depths = tree.steps[selected].astype(np.int64)
    # At depths beyond the recorded continuation no acceptance is possible: -1 never matches a token.
    padded = np.concatenate((continuation, [-1]))
    target_next = padded[np.minimum(node_depths, len(continuation))]
    path, _ = greedy_accept(parents, tree.tokens[selected], target_next)
    return len(path)


class TreeBuilder:
    """Grows a draft tree step by step by the EAGLE-2 rule (DESIGN.md).

    Step 1 expands the root into its top-k children. Every later step expands each beam node into
    its top-k children; all k^2 candidates join the pool, scored by cumulative log-prob, and the best
    k form the next beam. Arrays are preallocated for `max_depth` steps.
    """

    def __init__(self, root_token: int, top_k: int, max_depth: int):
        capacity = 1 + top_k + max(0, max_depth - 1) * top_k * top_k
        self.top_k = top_k
        self.tokens = np.zeros(capacity, dtype=np.int64)
        self.parents = np.full(capacity, -1, dtype=np.int32)
        self.scores = np.zeros(capacity, dtype=np.float32)
        self.steps = np.zeros(capacity, dtype=np.int8)
        self.tokens[0] = root_token
        self.num_nodes = 1
        self.depth = 0
        self.beam = np.zeros(1, dtype=np.int64)  # the nodes the next step expands

    def add_step(self, child_logp: np.ndarray, child_tokens: np.ndarray) -> None:
        """Add the children of the current beam: `child_logp`, `child_tokens` are [len(beam), k]."""
        b, k = child_logp.shape
        cumulative = (self.scores[self.beam][:, None] + child_logp).astype(np.float32).ravel()
        start, end = self.num_nodes, self.num_nodes + b * k
        self.tokens[start:end] = child_tokens.ravel()
        self.parents[start:end] = np.repeat(self.beam, k)
        self.scores[start:end] = cumulative
        self.depth += 1
        self.steps[start:end] = self.depth
        self.num_nodes = end
        keep = np.argsort(-cumulative, kind="stable")[: self.top_k]
        self.beam = np.sort(keep) + start

    def tree(self) -> DraftTree:
        n = self.num_nodes
        return DraftTree(self.tokens[:n], self.parents[:n], self.scores[:n], self.steps[:n])


def greedy_path(tree: DraftTree, continuation: np.ndarray) -> np.ndarray:
    """Nodes of the target's greedy path through the whole tree, in depth order (root excluded).

    A node is on the path when its token is the target's token at its depth and its parent is on the
    path. Siblings carry distinct tokens (top-k of one distribution), so there is at most one such
    node per depth: the path is a chain.
    """
    cont = np.asarray(continuation, dtype=np.int64)
    steps = tree.steps.astype(np.int64)
    padded = np.concatenate((cont, [-1]))  # depths beyond the continuation never match
    match = tree.tokens.astype(np.int64) == padded[np.clip(steps - 1, 0, len(cont))]
    on = np.zeros(tree.num_nodes, dtype=bool)
    on[ROOT] = True
    start = 1
    for step in range(1, tree.depth + 1):  # nodes of one step are contiguous; parents come before
        end = tree.nodes_up_to(step)
        on[start:end] = match[start:end] & on[tree.parents[start:end]]
        start = end
    on[ROOT] = False
    return np.flatnonzero(on)


def accepted_length_table(tree: DraftTree, continuation: np.ndarray, sizes) -> np.ndarray:
    """Accepted draft tokens for every depth 1..tree.depth and every V in `sizes`: int [depth, len(sizes)].

    Equal to `accepted_length_on_trace(tree, D, V, continuation)` for each (D, V), computed at once.
    The verify set of (D, V) is the root plus the V best candidates among the first D steps (score
    descending, smaller index first on ties, as `select_verify_set`); it is a connected subtree, so
    the accepted length is the number of greedy-path nodes of depth <= D inside it. A path node enters
    when V exceeds its rank among the step-<=D candidates.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    path = greedy_path(tree, continuation)
    depth = tree.depth
    table = np.zeros((depth, len(sizes)), dtype=np.int64)
    if len(path) == 0:
        return table
    cand = tree.scores[1:]
    idx = np.arange(1, tree.num_nodes)
    s = tree.scores[path][:, None]
    before = (cand[None, :] > s) | ((cand[None, :] == s) & (idx[None, :] < path[:, None]))
    ranks_upto = np.cumsum(before, axis=1)  # [len(path), n - 1]: rank among candidates 1..j+1
    path_depth = tree.steps[path].astype(np.int64)
    for d in range(1, depth + 1):
        n = tree.nodes_up_to(d)
        inside = path_depth <= d
        if not inside.any():
            continue
        rank = ranks_upto[inside, n - 2]
        table[d - 1] = (rank[None, :] < sizes[:, None]).sum(axis=1)
    return table


# --------------------------------------------------------------------------------------------
# Trees with several draft sources (DESIGN.md, "Merged draft sources")
# --------------------------------------------------------------------------------------------

SOURCE_HEAD = 1  # bit of `SourcedTree.sources`: the model drafter proposed the node
SOURCE_NGRAM = 2  # bit: an n-gram branch proposed it (both bits: merged)


@dataclass(frozen=True)
class NgramSignals:
    """What the n-gram source found for a cycle, known before any draft step: the signals a policy
    observes (feature set "ngram_v1")."""

    match_len: int = 0  # length of the longest context suffix that occurred earlier (0: none)
    matches: int = 0  # its earlier occurrences, context and corpus together
    best_score: float = float("-inf")  # the best first-token score of the branches (-inf: no branch)


@dataclass
class SourcedTree(DraftTree):
    """A draft tree whose nodes say which source proposed them, with what each source scored them.

    `scores` is what the tree arithmetic reads: the larger of the head's score and the n-gram score.
    The parts are kept so that a trace recorded with one n-gram calibration can be re-scored with
    another (`ltd_sim.ngram_calibration.rescore`): the n-gram score of a node is its `ngram_share`
    (log of the share of the used occurrences through it) plus the calibration's cumulative log rate
    at its depth, and neither the tree's shape nor the head's scores depend on the calibration."""

    sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))  # bits; root 0
    head_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # -inf: no head
    ngram_share: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # 0: no n-gram
    ngram: NgramSignals = NgramSignals()

    def truncated(self, depth: int) -> "SourcedTree":
        n = self.nodes_up_to(depth)
        return SourcedTree(self.tokens[:n], self.parents[:n], self.scores[:n], self.steps[:n], self.sources[:n],
                           self.head_scores[:n], self.ngram_share[:n], self.ngram)
