"""The reduced draft vocabulary: which target ids the head can propose (`choose_draft_vocab`), how many
labels it covers (`coverage`), and the target -> draft id index training scores against (`make_t2d_index`)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from realrun.eagle3 import Eagle3Head


def choose_draft_vocab(label_counts: Counter, size: int, always: set[int] | None = None,
                       vocab_size: int | None = None) -> np.ndarray:
    """Sorted target ids: `always` first (template, prompt tokens), then the most frequent labels."""
    chosen: list[int] = []
    seen: set[int] = set()
    for t, _ in sorted(((t, label_counts.get(t, 0)) for t in (always or ())), key=lambda x: -x[1]):
        if len(chosen) < size and t not in seen:
            chosen.append(t)
            seen.add(t)
    for t, _ in label_counts.most_common():
        if len(chosen) >= size:
            break
        if t not in seen:
            chosen.append(t)
            seen.add(t)
    t = 0
    while len(chosen) < size and vocab_size is not None and t < vocab_size:  # pad with low ids
        if t not in seen:
            chosen.append(t)
            seen.add(t)
        t += 1
    return np.array(sorted(chosen), dtype=np.int64)


def coverage(labels: np.ndarray, t2d: np.ndarray) -> float:
    """Share of `labels` (target ids) inside the draft vocabulary (`t2d`: bool per target id)."""
    return float(t2d[labels].mean()) if len(labels) else float("nan")


def make_t2d_index(head: Eagle3Head) -> torch.Tensor:
    """target id -> draft id (-1 outside the draft vocabulary)."""
    d2t = head.d2t.cpu()
    ids = torch.arange(len(d2t)) + d2t
    index = torch.full((head.cfg.vocab_size,), -1, dtype=torch.long)
    index[ids] = torch.arange(len(d2t))
    return index
