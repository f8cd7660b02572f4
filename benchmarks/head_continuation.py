"""Which training recipe improves a saved head per minute of this machine? Side by side, same start.

Each variant continues training the same saved head (fresh AdamW, the same sequence order) for the
same wall-clock budget on the build's training split, then scores held-out top-1 per unrolled step on
generated tokens (what decoding drafts), on the build's own held-out split. Variants differ in the
number of unrolled training-time-test steps (`--ttt-steps 8,3`: 8 is the tree depth; fewer steps make
each optimizer step cheaper and put the loss on the shallow levels that pay on a CPU).

    python benchmarks/head_continuation.py [--head DIR] [--work DIR] [--minutes 10] [--ttt-steps 8,3] \
        [--lr 2e-4] [--save-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from realrun.draft_head import BuildConfig, TrainConfig
from realrun.draft_head.build import default_work_dir
from realrun.draft_head.features import FeatureData, heldout_mask
from realrun.draft_head.train import head_top1, train_head
from realrun.draft_head.vocab import make_t2d_index
from realrun.eagle3 import load_head, save_head
from realrun.loading import set_threads
from realrun.models import default_draft_dir, load_causal_lm, resolve_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head", default=None, help="head folder (default: the default head)")
    ap.add_argument("--work", default=None, help="its build's work folder (default: beside the head)")
    ap.add_argument("--target", default=None)
    ap.add_argument("--minutes", type=float, default=10.0, help="training time of each variant")
    ap.add_argument("--ttt-steps", default="8,3", help="comma-separated unrolled steps, one variant each")
    ap.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine to 30%% of it)")
    ap.add_argument("--steps", type=int, default=4, help="unrolled steps to score")
    ap.add_argument("--save-dir", default=None, help="save each variant's head here")
    ap.add_argument("--seed", type=int, default=BuildConfig.seed, help="the build's --seed (it sets the split)")
    args = ap.parse_args()
    variants = [int(x) for x in args.ttt_steps.split(",")]
    if args.minutes <= 0 or not all(1 <= v <= 16 for v in variants):
        ap.error("--minutes must be positive and every --ttt-steps in 1..16")
    set_threads()
    head_dir = Path(args.head) if args.head else default_draft_dir()
    work = Path(args.work) if args.work else default_work_dir(head_dir)
    data = FeatureData.load(work / "features")
    held = heldout_mask(len(data), BuildConfig.val_fraction, args.seed)
    train, val = data.subset(np.flatnonzero(~held)), data.subset(np.flatnonzero(held))
    target = load_causal_lm(resolve_target(args.target)).model
    start = load_head(head_dir, target)
    base = head_top1(start, val, make_t2d_index(start), args.steps)
    print(json.dumps({"variant": "start", "generated_top1": base.top1_generated[:args.steps],
                      "positions_generated": base.positions_generated}), flush=True)
    for ttt in variants:
        head = load_head(head_dir, target)
        cfg = TrainConfig(ttt_steps=ttt, lr=args.lr, min_lr_frac=0.3, warmup=20, seconds=args.minutes * 60,
                          eval_every_s=1e9, seed=args.seed + 7)
        t0 = time.monotonic()
        state = train_head(head, train, cfg, val=None, ckpt=None, progress=False)
        r = head_top1(head, val, make_t2d_index(head), args.steps)
        gain = [round(a - b, 4) for a, b in zip(r.top1_generated, base.top1_generated)]
        print(json.dumps({"variant": f"ttt_steps={ttt}", "optimizer_steps": state.step,
                          "seconds": round(time.monotonic() - t0), "generated_top1": r.top1_generated[:args.steps],
                          "gain": gain[:args.steps]}),
              flush=True)
        if args.save_dir:
            save_head(head, Path(args.save_dir) / f"ttt{ttt}")


if __name__ == "__main__":
    main()
