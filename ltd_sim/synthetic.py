"""Synthetic draft-tree traces (numpy only): for tests and speed benchmarks, never for figures.

Trees follow the EAGLE-2 rule exactly (`TreeBuilder`) over random draft distributions; the
"target's" continuation is planted on the best node of a step with probability `hit` times that
node's conditional draft probability (a calibrated draft), so acceptance follows the draft-side
features as it does with a real draft. Real traces come from `ltd trace`.
"""

from __future__ import annotations

import numpy as np

from ltd_sim.trace import TraceSequence
from ltd_sim.tree import TreeBuilder

VOCAB = 12


def random_tree(rng, root, k, depth, sharp, vocab=VOCAB):
    b = TreeBuilder(root, k, depth)
    for _ in range(depth):
        logits = rng.normal(size=(len(b.beam), vocab)) * sharp
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        ids = np.argsort(-logp, axis=1, kind="stable")[:, :k]
        b.add_step(np.take_along_axis(logp, ids, 1).astype(np.float32), ids)
    return b.tree()


def synthetic_sequence(rng, length=40, k=4, depth=6, prompt_len=7, hit=1.0, vocab=None,
                       max_sharp=3.0) -> TraceSequence:
    """One synthetic generation of `length` tokens (length - 1 positions)."""
    vocab = vocab or max(VOCAB, 2 * k)
    output = rng.integers(0, vocab, size=length)
    trees = []
    for p in range(length - 1):
        tree = random_tree(rng, int(output[p]), k, depth, sharp=float(rng.uniform(0.5, max_sharp)), vocab=vocab)
        # plant the continuation on the best child of each step with some probability
        cont = output[p + 1: p + 1 + depth]
        for d in range(1, min(depth, len(cont)) + 1):
            a, b_ = tree.nodes_up_to(d - 1), tree.nodes_up_to(d)
            best = a + int(np.argmax(tree.scores[a:b_]))
            cond = float(tree.scores[best] - tree.scores[tree.parents[best]])
            if rng.random() < hit * np.exp(cond):
                siblings = np.flatnonzero(tree.parents[a:b_] == tree.parents[best]) + a
                if cont[d - 1] not in tree.tokens[siblings]:
                    tree.tokens[best] = cont[d - 1]
        trees.append(tree)
    return TraceSequence.from_trees(trees, output, prompt_len + np.arange(length - 1), k, depth)
