"""How well can anything the decoder sees predict whether the head's first draft is accepted?

The oracle's lead over the best static setting comes mostly from knowing which cycles accept
nothing, so a policy is bounded by how well its inputs predict that. On a build's stored features
(held-out sequences as the test set, generated positions only, as decoding drafts them) this fits
logistic regressions of "the head's step-1 top-1 equals the target's next token" on:

- the step-1 top-1 probability alone (what the paper's features carry),
- top-1, top-2 and the entropy over the whole draft vocabulary,
- those plus the head's hidden state (a SpecDec++-style acceptance head),
- those plus the target's fused hidden layers (the head's input),

and prints each one's ROC AUC on the held-out positions.

    python benchmarks/acceptance_predictability.py [--head DIR] [--work DIR] [--train-sequences 400]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from realrun.draft_head import BuildConfig
from realrun.draft_head.build import default_work_dir
from realrun.draft_head.features import FeatureData, heldout_mask
from realrun.draft_head.ttt import drafted_mask, step_targets, ttt_forward
from realrun.draft_head.vocab import make_t2d_index
from realrun.eagle3 import load_head
from realrun.loading import set_threads
from realrun.models import default_draft_dir, load_causal_lm, resolve_target


@torch.no_grad()
def step1_signals(head, data: FeatureData, rows: np.ndarray, t2d: torch.Tensor):
    """Per generated position of `rows`: (head hidden, target features, [p1, p2, entropy], accepted)."""
    captured = {}
    hook = head.norm.register_forward_hook(lambda mod, inp, out: captured.__setitem__("h", inp[0]))
    hid, feat, scal, hit = [], [], [], []
    try:
        for b0 in range(0, len(rows), 8):
            idx = rows[b0:b0 + 8]
            batch = data.batch(idx, "cpu", torch.float32)
            feats = batch.feats
            logits = ttt_forward(head, feats, batch.tokens, 1)[0]
            (target, valid), = step_targets(batch.labels, batch.lens, t2d, 1)
            drafted = valid & drafted_mask(batch.gen_start, feats.shape[1], 0)  # what decoding drafts
            logp = torch.log_softmax(logits[drafted], -1)
            top = logp.topk(2, -1).values.exp()
            ent = -(logp.exp() * logp).sum(-1)
            scal.append(torch.stack([top[:, 0], top[:, 1], ent], 1).numpy())
            hid.append(captured["h"][drafted].numpy())
            feat.append(feats[drafted].numpy())
            hit.append((logits[drafted].argmax(-1) == target[drafted]).numpy())
    finally:
        hook.remove()
    return np.concatenate(hid), np.concatenate(feat), np.concatenate(scal), np.concatenate(hit)


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head", default=None, help="head folder (default: the default head)")
    ap.add_argument("--work", default=None, help="its build's work folder (default: beside the head)")
    ap.add_argument("--target", default=None)
    ap.add_argument("--train-sequences", type=int, default=400, help="training sequences the regressions fit on")
    ap.add_argument("--seed", type=int, default=BuildConfig.seed, help="the build's --seed (it sets the split)")
    args = ap.parse_args()
    set_threads()
    head_dir = Path(args.head) if args.head else default_draft_dir()
    work = Path(args.work) if args.work else default_work_dir(head_dir)
    data = FeatureData.load(work / "features")
    held = heldout_mask(len(data), BuildConfig.val_fraction, args.seed)
    head = load_head(head_dir, load_causal_lm(resolve_target(args.target)).model).eval()
    t2d = make_t2d_index(head)
    rng = np.random.default_rng(args.seed)
    train_rows = rng.permutation(np.flatnonzero(~held))[:args.train_sequences]
    tr = step1_signals(head, data, train_rows, t2d)
    te = step1_signals(head, data, np.flatnonzero(held), t2d)
    print(f"{len(tr[3])} training / {len(te[3])} held-out generated positions; step-1 top-1 accepted "
          f"{te[3].mean():.3f} of held-out")

    def inputs(part, which):
        hid, feat, scal, _ = part
        logs = np.log(scal + 1e-9)
        if which == "p1":
            return logs[:, :1]
        if which == "scalars":
            return logs
        return np.hstack([logs, hid] + ([feat] if which.endswith("target_features") else []))

    print("p1 (raw probability, no fit)".ljust(44), f"AUC {roc_auc_score(te[3], te[2][:, 0]):.3f}")
    for which in ("p1", "scalars", "scalars+head_hidden", "scalars+head_hidden+target_features"):
        for c in ((1.0,) if which in ("p1", "scalars") else (0.003, 0.01, 0.1)):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
            model.fit(inputs(tr, which), tr[3])
            auc = roc_auc_score(te[3], model.predict_proba(inputs(te, which))[:, 1])
            print(f"logistic on {which} (C {c})".ljust(44), f"AUC {auc:.3f}")


if __name__ == "__main__":
    main()
