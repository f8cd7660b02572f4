"""Compare saved draft heads on the same held-out positions of a build's feature store.

A resumed or extended build adds sequences, so its own log's held-out figures are not comparable with
the previous build's. This scores every head given on one held-out set: the build's stable split
(`heldout_mask`), optionally cut at sequence N into the sequences an earlier build had (< N) and the
ones it added (>= N). Per unrolled step: top-1 agreement on generated tokens (what decoding drafts),
and on all positions by source (code / chat).

    python benchmarks/draft_heads.py HEAD_DIR [HEAD_DIR ...] [--work DIR] [--split-at N] [--steps 4] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from realrun.draft_head import BuildConfig
from realrun.draft_head.build import default_work_dir
from realrun.draft_head.features import FeatureData, heldout_mask
from realrun.draft_head.train import head_top1
from realrun.draft_head.vocab import make_t2d_index
from realrun.eagle3 import load_head
from realrun.loading import set_threads
from realrun.models import default_draft_dir, load_causal_lm, resolve_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("heads", nargs="+", help="head folders (published EAGLE-3 layout)")
    ap.add_argument("--work", default=None, help="build work folder (default: the default head's)")
    ap.add_argument("--target", default=None)
    ap.add_argument("--split-at", type=int, default=None, help="report sequences < N and >= N apart")
    ap.add_argument("--steps", type=int, default=4, help="unrolled steps to print")
    ap.add_argument("--seed", type=int, default=BuildConfig.seed, help="the build's --seed (it sets the split)")
    args = ap.parse_args()
    set_threads()
    work = Path(args.work) if args.work else default_work_dir(default_draft_dir())
    data = FeatureData.load(work / "features")
    held = np.flatnonzero(heldout_mask(len(data), BuildConfig.val_fraction, args.seed))
    groups = {"held-out": held}
    if args.split_at is not None:
        groups = {f"held-out < {args.split_at}": held[held < args.split_at],
                  f"held-out >= {args.split_at}": held[held >= args.split_at]}
    target = load_causal_lm(resolve_target(args.target)).model
    k = args.steps
    print(f"{len(data)} sequences in {work}; top-1 per unrolled step 1..{k}")
    for path in args.heads:
        head = load_head(path, target)
        t2d = make_t2d_index(head)
        for name, idx in groups.items():
            if len(idx) == 0:
                continue
            r = head_top1(head, data.subset(idx), t2d, max(k, 1))
            print(f"{Path(path).name:40s} {name:18s} {len(idx):4d} seq | generated "
                  f"{r.top1_generated[:k]} ({r.positions_generated} pos) | code {r.top1_code[:k]} "
                  f"| chat {r.top1_chat[:k]}")


if __name__ == "__main__":
    main()
