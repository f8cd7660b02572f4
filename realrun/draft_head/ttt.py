"""EAGLE-3 training-time test: the head unrolled on its own outputs (`ttt_forward`), each unrolled
step's targets (`step_targets`), which of them decoding would draft (`drafted_mask`), and the loss.

The unrolled head is the inference head: every layer, norm, projection and the attention itself are
`realrun.eagle3`'s; only which keys a query sees is arranged here (`realrun.eagle3.attend`'s `own_kv`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from realrun.draft_head.features import FeatureBatch
from realrun.eagle3 import Eagle3Head, attend, repeat_kv


def ttt_forward(head: Eagle3Head, feats: torch.Tensor, tokens: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The head unrolled `steps` times on its own outputs (EAGLE-3 training-time test).

    feats [B, n, 3Ht] (target features at positions 0..n-1), tokens [B, n] (the sequence).
    Step j, index i: hidden = step-(j-1) output at i (step 0: fc(feats[i])), token t[i+1+j],
    position i+j; attends to step-0 keys at indices <= i and steps 1..j keys at index i, exactly
    what `Eagle3Drafter` feeds a depth-j node below root i at inference.
    Returns a list of draft-vocab logits [B, n, Vd], one per step (entry j predicts label[i+1+j])."""
    mid = head.midlayer
    attn = mid.self_attn
    b, n, _ = feats.shape
    hidden = head.fc(feats)
    base = torch.arange(n, device=feats.device)[None].expand(b, n)
    causal = torch.ones(n, n, dtype=torch.bool, device=feats.device).tril()
    step_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per unrolled step: its keys and values

    def tree_attention(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        q, k, v = attn.project(x, positions)
        step_kv.append((repeat_kv(k, attn.kv_groups), repeat_kv(v, attn.kv_groups)))
        (prefix_k, prefix_v), ancestors = step_kv[0], step_kv[1:]
        return attn.merge(attend(q, prefix_k, prefix_v, causal, own_kv=ancestors))

    outs = []
    for j in range(steps):
        tok = torch.zeros_like(tokens)
        if 1 + j < n:
            tok[:, : n - 1 - j] = tokens[:, 1 + j:]
        embeds = head.embed_tokens(tok).to(hidden.dtype)
        hidden = mid.step(embeds, hidden, lambda x, pos=base + j: tree_attention(x, pos))
        outs.append(head.lm_head(head.norm(hidden)))
    return outs


def step_targets(labels: torch.Tensor, lens: torch.Tensor, t2d_index: torch.Tensor,
                 steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step j: (draft-id targets [B, n] (-1 = no loss), valid [B, n] (label exists))."""
    b, n = labels.shape
    idx = torch.arange(n, device=labels.device)[None]
    out = []
    for j in range(steps):
        lab = torch.full_like(labels, -1)
        if 1 + j < n:
            lab[:, : n - 1 - j] = labels[:, 1 + j:]
        valid = (idx + 1 + j < lens[:, None]) & (lab >= 0)
        draft = torch.where(valid, t2d_index[lab.clamp_min(0)], torch.full_like(lab, -1))
        out.append((draft, valid))
    return out


def drafted_mask(gen_start: torch.Tensor, n: int, step: int) -> torch.Tensor:
    """[B, n]: entry `step` at index i predicts label i+1+step; True where that label is a token the
    target generated (what decoding drafts), False for prompt and teacher-forced positions."""
    index = torch.arange(n, device=gen_start.device)[None]
    return (gen_start[:, None] >= 0) & (index + 1 + step >= gen_start[:, None])


@dataclass
class StepStats:
    """One unrolled step of one batch."""

    loss: float  # cross entropy over in-vocabulary targets
    hits: int  # top-1 equal to the target's argmax
    positions: int  # positions with a label


@dataclass
class TTTLoss:
    loss: torch.Tensor  # the weighted mean of the steps' cross entropies (what is minimised)
    steps: list[StepStats]


def ttt_loss(head: Eagle3Head, batch: FeatureBatch, t2d_index: torch.Tensor, steps: int, decay: float) -> TTTLoss:
    """Per-step cross entropies weighted `decay ** j` (`TrainConfig.decay`), and per-step statistics."""
    logits = ttt_forward(head, batch.feats, batch.tokens, steps)
    targets = step_targets(batch.labels, batch.lens, t2d_index, steps)
    total = batch.feats.new_zeros(())
    wsum = 0.0
    stats = []
    for j, (lg, (tgt, valid)) in enumerate(zip(logits, targets)):
        in_vocab = tgt >= 0
        if in_vocab.any():
            lj = F.cross_entropy(lg[in_vocab].float(), tgt[in_vocab])
        else:
            lj = lg.sum() * 0.0
        w = decay ** j
        total = total + w * lj
        wsum += w
        hits = ((lg.argmax(-1) == tgt) & in_vocab).sum().item()
        stats.append(StepStats(float(lj.detach()), int(hits), int(valid.sum().item())))
    return TTTLoss(total / wsum, stats)
