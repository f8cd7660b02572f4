"""How a saved head decodes: tau (tokens per cycle) under the static EAGLE-3 setting on prompts it never
trained on, per category and per tree level, with every cycle's depth-8 tree kept so that other static
settings can be replayed on them exactly (greedy decoding: the tree of depth D is the first D steps).
The library behind `benchmarks/draft_head.py` and `benchmarks/draft_head_scaling.py`."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.tree import accepted_length_on_trace

CODE_CATEGORY = "humaneval"


def heldout_prompts(questions: Path | None, per_category: int, humaneval: int) -> list[tuple[str, str]]:
    """(category, prompt): the first `humaneval` problems of HumanEval's "evaluation" range and
    `per_category` questions of each category of a Spec-Bench file (when there is one), categories
    interleaved so that a time cap still covers all of them."""
    from realrun.prompts import humaneval_problems, humaneval_prompt, read_prompts

    by_cat: dict[str, list[str]] = defaultdict(list)
    by_cat[CODE_CATEGORY] = [humaneval_prompt(code) for _, code in humaneval_problems("evaluation")[:humaneval]]
    if questions is not None and Path(questions).is_file():
        for record in read_prompts(questions, option="--questions"):
            if len(by_cat[record["category"]]) < per_category:
                by_cat[record["category"]].append(record["text"])
    by_cat = {c: v for c, v in by_cat.items() if v}
    order = []
    for i in range(max((len(v) for v in by_cat.values()), default=0)):
        order += [(c, v[i]) for c, v in by_cat.items() if i < len(v)]
    return order


@dataclass
class CycleRecord:
    category: str
    tree: Any  # the cycle's depth-8 draft tree (`ltd_sim.tree`)
    continuation: np.ndarray  # the target's next tokens after the cycle's root


@dataclass
class StaticTau:
    records: list[CycleRecord]
    tau_per_category: dict[str, float]
    tau_spec_bench_mean: float  # over the categories other than HumanEval
    per_level_acceptance: dict[int, float]  # share of cycles accepting level l
    per_level_acceptance_code: dict[int, float]

    def replay(self, depth: int, size: int) -> float:
        """Tau of another static (depth, size) on the recorded trees (exact under greedy decoding)."""
        return float(np.mean([accepted_length_on_trace(r.tree, depth, size, r.continuation) + 1
                              for r in self.records]))


def static_tau(pair, order: list[tuple[str, str]], max_new_tokens: int, deadline: float | None = None,
               verbose: bool = True) -> StaticTau:
    """Greedy decoding of `order` ((category, prompt) pairs) with the static EAGLE-3 setting (top-k 10,
    depth 8, V 60) and `pair`'s drafter; stops adding prompts at `deadline` (time.monotonic)."""
    from realrun.decoder import DecodeConfig, generate
    from realrun.models import encode_prompt

    target, tok = pair.target.model, pair.target.tokenizer
    k, depth, size = defaults.TOP_K, defaults.MAX_DEPTH, defaults.STATIC_SIZE
    cfg = DecodeConfig(max_new_tokens=max_new_tokens, top_k=k, max_depth=depth)
    records: list[CycleRecord] = []
    per_cat = defaultdict(list)
    if verbose:
        print(f"static EAGLE-3 (top-k {k}, depth {depth}, V {size}), {len(order)} prompts, "
              f"max {max_new_tokens} new tokens", flush=True)
    for n_done, (cat, prompt) in enumerate(order):
        if deadline is not None and time.monotonic() > deadline:
            print(f"time cap: stopped after {n_done} prompts", flush=True)
            break
        ids = encode_prompt(tok, prompt)
        trees = []
        res = generate(target, ids, pair.drafter, cfg, StaticDepth(depth), StaticSize(size), eos_ids=pair.eos_ids,
                       context_limit=pair.context_limit, on_cycle=lambda t, r: trees.append((t, r)))
        out = res.token_ids
        pos = 0  # index in `out` of each cycle's root
        for tree, rec in trees:
            records.append(CycleRecord(cat, tree, np.asarray(out[pos + 1:pos + 1 + depth], dtype=np.int64)))
            per_cat[cat].append(rec.accepted + 1)
            pos += rec.accepted + 1
        if verbose:
            print(f"  {cat:15s} tau {res.tau:.2f}  {len(out)} tokens  {res.decode_tokens_per_s:.1f} tok/s decode rate", flush=True)

    tau_cat = {c: round(float(np.mean(v)), 3) for c, v in per_cat.items()}
    spec_cats = [c for c in per_cat if c != CODE_CATEGORY]
    tau_spec_mean = float(np.mean([tau_cat[c] for c in spec_cats])) if spec_cats else float("nan")
    acc = np.array([len(r.tree.tokens) and accepted_length_on_trace(r.tree, depth, size, r.continuation)
                    for r in records])
    is_code = np.array([r.category == CODE_CATEGORY for r in records], dtype=bool)

    def levels(sel: np.ndarray) -> dict[int, float]:
        return {lvl: round(float((acc[sel] >= lvl).mean()), 4) for lvl in range(1, depth + 1)} if sel.any() else {}

    return StaticTau(records, tau_cat, tau_spec_mean, levels(np.ones(len(acc), dtype=bool)), levels(is_code))
