"""N-gram proposal cost against context length: the index must keep lookups flat as the context grows.

Tokenizes the project's own documentation (natural text with real repeats) with the target's tokenizer,
then, at each context length (default 256 and 4,096 tokens), in one run and side by side:

- `append`: feeding one committed token to the index (`NgramIndex.append`, what every commit costs);
- `propose`: one proposal of `--depth` tokens (`NgramProposer.propose`, what every cycle costs);
- `merge`: grafting that proposal into a draft tree of the EAGLE-3 default shape (top-k 10, depth 8:
  711 nodes, random scores; `merge_proposal`); `propose` and `merge` are also given over the positions
  where a match was found (no match: nothing to graft);
- `rescan`: the same proposal from an index built from scratch over the context (what a lookup would
  cost without the incremental index), for comparison.

Each is the median over `--calls` consecutive positions ending at the context length (every position
is a fresh suffix, as in decoding). Pure Python and numpy, one thread; no model is loaded.

    LTD_CACHE=/tmp/demo_cache3 python benchmarks/ngram_lookup.py [--contexts 256,4096] [--calls 400]
        [--depth 8] [--tokenizer DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ltd_sim import defaults
from ltd_sim.tree import TreeBuilder
from realrun.ngram import NgramConfig, NgramProposer, index_of, merge_proposal, propose

ROOT = Path(__file__).resolve().parents[1]


def doc_tokens(tokenizer_dir: str | None, needed: int) -> list[int]:
    from transformers import AutoTokenizer

    from realrun.models import default_target_dir

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or default_target_dir(), local_files_only=True)
    text = "\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"])
    ids = tok(text)["input_ids"]
    if len(ids) < needed:
        raise SystemExit(f"the documentation has {len(ids)} tokens; {needed} are needed")
    return ids


def head_shaped_tree(rng, top_k: int, depth: int, vocab: int):
    """A draft tree of the EAGLE-2 shape (what `--ngram` grafts into), random log-probs and tokens."""
    builder = TreeBuilder(0, top_k, depth)
    for _ in range(depth):
        b = len(builder.beam)
        logp = np.sort(np.log(rng.dirichlet(np.ones(top_k), size=b)), axis=1)[:, ::-1]
        builder.add_step(logp, rng.choice(vocab, size=(b, top_k), replace=True))
    return builder.tree()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(tokens: list[int], context: int, calls: int, depth: int, cfg: NgramConfig, tree) -> dict:
    proposer = NgramProposer(cfg)
    proposer.begin(tokens[:context - calls])
    append, prop, prop_hit, merge, merge_hit, rescan = [], [], [], [], [], []
    for pos in range(context - calls, context):
        append.append(timed(lambda: proposer.commit([tokens[pos]])))
        out = {}
        prop.append(timed(lambda: out.setdefault("p", proposer.propose(depth))))
        merge.append(timed(lambda: merge_proposal(tree, out["p"])))
        if len(out["p"]):  # the positions where a branch was found (no match: nothing to graft)
            prop_hit.append(prop[-1])
            merge_hit.append(merge[-1])
        if pos % 20 == 0:  # a rescan is slow at long contexts: sample it
            rescan.append(timed(lambda: propose(index_of(tokens[:pos + 1], cfg), None, cfg,
                                                proposer.calibration, depth)))
    us = lambda xs: round(1e6 * statistics.median(xs), 2)  # noqa: E731
    return {"context": context, "calls": calls, "append_us": us(append), "propose_us": us(prop),
            "propose_matched_us": us(prop_hit), "merge_us": us(merge), "merge_matched_us": us(merge_hit),
            "rescan_us": us(rescan), "match_rate": round(len(prop_hit) / calls, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="256,4096")
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--depth", type=int, default=defaults.MAX_DEPTH)
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the default target's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    tokens = doc_tokens(args.tokenizer, max(contexts))
    cfg = NgramConfig()
    tree = head_shaped_tree(np.random.default_rng(0), defaults.TOP_K, defaults.MAX_DEPTH, 49152)
    rows = [measure(tokens, c, min(args.calls, c - 8), args.depth, cfg, tree) for c in contexts]
    if args.json:
        print(json.dumps({"config": cfg.__dict__, "depth": args.depth, "rows": rows}, indent=2))
        return
    print(f"n-gram lookup (ngram {cfg.ngram_min}..{cfg.ngram_max}, {cfg.max_branches} branches, depth {args.depth}; "
          f"medians in microseconds)\n")
    print("| context | append | propose (all / matched) | merge into a 711-node tree (all / matched) "
          "| rescan (no index) | positions with a match |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['context']} | {r['append_us']} | {r['propose_us']} / {r['propose_matched_us']} | "
              f"{r['merge_us']} / {r['merge_matched_us']} | {r['rescan_us']} | {100 * r['match_rate']:.0f}% |")


if __name__ == "__main__":
    main()
