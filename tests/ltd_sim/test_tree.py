"""Tree arithmetic (ltd_sim.tree): selection, masks, greedy acceptance, the EAGLE-2 growth rule."""

import numpy as np

from ltd_sim.tree import (DraftTree, TreeBuilder, accepted_length_on_trace, ancestor_mask, greedy_accept,
                          is_chain, local_parents, select_verify_set)


def small_tree() -> DraftTree:
    #        0
    #      /   \
    #     1     2
    #    / \     \
    #   3   4     5
    tokens = np.array([100, 11, 12, 13, 14, 15])
    parents = np.array([-1, 0, 0, 1, 1, 2])
    scores = np.array([0.0, -0.1, -0.5, -0.3, -0.9, -0.6], dtype=np.float32)
    steps = np.array([0, 1, 1, 2, 2, 2], dtype=np.int8)
    return DraftTree(tokens, parents, scores, steps)


def test_select_verify_set_top_v_in_node_order():
    t = small_tree()
    assert select_verify_set(t.scores, 0).tolist() == [0]
    assert select_verify_set(t.scores, 1).tolist() == [0, 1]
    assert select_verify_set(t.scores, 3).tolist() == [0, 1, 2, 3]
    assert select_verify_set(t.scores, 99).tolist() == [0, 1, 2, 3, 4, 5]  # clipped to the pool


def test_ties_keep_the_subtree_connected():
    # a child with probability 1 has its parent's score; the parent must come first
    scores = np.array([0.0, -0.2, -0.2, -0.2], dtype=np.float32)
    parents = np.array([-1, 0, 1, 2])
    for v in range(4):
        sel = select_verify_set(scores, v)
        local_parents(parents, sel)  # raises if disconnected


def test_ancestor_mask_and_chain():
    t = small_tree()
    sel = select_verify_set(t.scores, 5)
    lp = local_parents(t.parents, sel)
    mask = ancestor_mask(lp)
    assert mask[3].tolist() == [True, True, False, True, False, False]
    assert mask[5].tolist() == [True, False, True, False, False, True]
    assert not is_chain(lp)
    assert is_chain(np.array([-1, 0, 1, 2]))


def test_greedy_accept_follows_target_argmax():
    t = small_tree()
    sel = select_verify_set(t.scores, 5)
    lp = local_parents(t.parents, sel)
    toks = t.tokens[sel]
    # target: after root 11, after node 1 -> 14, after node 4 -> 77 (bonus)
    target_next = np.array([11, 14, 0, 0, 77, 0])
    path, bonus = greedy_accept(lp, toks, target_next)
    assert path == [1, 4] and bonus == 77
    path, bonus = greedy_accept(lp, toks, np.array([99, 0, 0, 0, 0, 0]))
    assert path == [] and bonus == 99


def test_accepted_length_on_trace_respects_depth_and_size():
    t = small_tree()
    cont = np.array([11, 14, 5])
    assert accepted_length_on_trace(t, 2, 5, cont) == 2
    assert accepted_length_on_trace(t, 1, 5, cont) == 1
    assert accepted_length_on_trace(t, 2, 3, cont) == 1  # node 4 (score -0.9) is not in the top 3
    assert accepted_length_on_trace(t, 2, 0, cont) == 0


def test_tree_builder_eagle2_rule():
    b = TreeBuilder(root_token=7, top_k=2, max_depth=3)
    b.add_step(np.log(np.array([[0.6, 0.3]])), np.array([[1, 2]]))
    assert b.beam.tolist() == [1, 2]
    b.add_step(np.log(np.array([[0.5, 0.4], [0.9, 0.1]])), np.array([[3, 4], [5, 6]]))
    tree = b.tree()
    assert tree.num_nodes == 1 + 2 + 4 and tree.depth == 2
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 2, 2]
    np.testing.assert_allclose(tree.scores[3:], np.log([0.3, 0.24, 0.27, 0.03]), rtol=1e-5)
    assert b.beam.tolist() == [3, 5]  # the best two of the four candidates
    assert tree.truncated(1).num_nodes == 3
