"""Training the head: every constant of the recipe (`TrainConfig`), a fresh head (`init_head`), the
training-time-test loop with its time-based cosine schedule (`train_head`, resumable from a checkpoint)
and the held-out top-1 it is scored by (`head_top1`). Measurements behind the defaults: docs/draft_head.md."""

from __future__ import annotations

import copy

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ltd_sim import defaults
from ltd_sim.io import write_with
from realrun.draft_head.corpus import CODE_SOURCES
from realrun.draft_head.features import FeatureData
from realrun.progress import progress_bar
from realrun.draft_head.ttt import StepStats, drafted_mask, step_targets, ttt_forward, ttt_loss
from realrun.draft_head.vocab import make_t2d_index
from realrun.eagle3 import Eagle3Head


@dataclass
class TrainConfig:
    ttt_steps: int = defaults.MAX_DEPTH  # unrolled steps: the tree depth
    batch: int = 1  # sequences per optimizer step: on a CPU's budget many small steps beat few large ones
    lr: float = 2e-3
    min_lr_frac: float = 0.05  # the cosine schedule ends at this share of `lr`
    warmup: int = 10  # optimizer steps of linear warm-up
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    clip_norm: float = 1.0  # gradient norm clip
    decay: float = 0.8  # loss weight of unrolled step j: decay ** j (the deep steps pay less)
    init_std: float = 0.02  # normal init of the head's matrices ...
    init_std_out: float = 0.01  # ... and of the ones that write into the residual (o_proj, down_proj)
    fc_identity_noise: float = 0.005  # noise on fc's identity start
    eval_batch: int = 8  # sequences per held-out scoring batch
    max_steps: int | None = None
    seconds: float | None = None  # time budget of the training stage
    eval_every_s: float = 150.0
    checkpoint_every_s: float = 120.0
    seed: int = 0


@dataclass
class TrainState:
    step: int = 0
    seen_positions: int = 0
    train_seconds: float = 0.0
    log: list[dict] = field(default_factory=list)  # one point per evaluation (see `train_head`)


@dataclass
class HeadTop1:
    """Held-out agreement of a head with the target, per unrolled step."""

    top1: list[float]  # all positions with a label (out of the draft vocabulary = miss)
    top1_code: list[float]
    top1_chat: list[float]
    top1_generated: list[float]  # generated tokens only: what decoding drafts
    loss: list[float]
    positions: int
    positions_generated: int


def cosine_lr_scale(step: int, done: float, warmup: int, min_frac: float) -> float:
    """The learning-rate factor: linear warm-up over `warmup` steps, then a cosine from 1 to `min_frac`
    over `done` (the share of the stage's steps or seconds spent)."""
    cosine = 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
    return min(1.0, (step + 1) / warmup) * (min_frac + (1 - min_frac) * cosine)


def init_head(target: torch.nn.Module, vocab_ids: np.ndarray, seed: int = 0, target_name: str = "",
              cfg: TrainConfig | None = None) -> Eagle3Head:
    """A fresh head for `target`: draft vocab `vocab_ids`, lm_head/norm from the target's own output
    layer (a strong start), the rest small random; a frozen fp32 copy of the target's embeddings."""
    from torch import nn

    from realrun.eagle3 import Eagle3Config, target_fingerprint

    cfg = cfg or TrainConfig()
    torch.manual_seed(seed)
    head_cfg = Eagle3Config.for_target(target.config, len(vocab_ids), target_fingerprint=target_fingerprint(target),
                                       target_name=target_name or str(getattr(target.config, "_name_or_path", "")))
    head = Eagle3Head(head_cfg)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.ndim == 2:
                writes_residual = name.endswith(("o_proj.weight", "down_proj.weight"))
                nn.init.normal_(p, std=cfg.init_std_out if writes_residual else cfg.init_std)
        head.set_vocab_map(torch.as_tensor(vocab_ids))
        out_w = target.get_output_embeddings().weight.detach().float()
        head.lm_head.weight.copy_(out_w[torch.as_tensor(vocab_ids)])
        scale = final_norm_scale(target)
        if scale is not None and scale.shape == head.norm.weight.shape:
            head.norm.weight.copy_(scale)
        # fc starts as the identity on the high layer's feature (close to the target's last state)
        ht = head_cfg.target_hidden_size
        if head_cfg.hidden_size == ht:
            head.fc.weight.zero_()
            head.fc.weight[:, 2 * ht:].copy_(torch.eye(ht))
            head.fc.weight.add_(torch.randn_like(head.fc.weight) * cfg.fc_identity_noise)
    # a frozen fp32 copy of the target's embedding *module*: some scale in their forward (Gemma
    # multiplies by sqrt(hidden)), and inference attaches the target's own module
    emb = copy.deepcopy(target.get_input_embeddings()).float().requires_grad_(False)
    head.attach_embeddings(emb)
    return head


def final_norm_scale(target: torch.nn.Module) -> torch.Tensor | None:
    """The per-channel scale of the target's final norm, as the head's Llama RMSNorm weight.

    Read by applying the norm to a vector of ones (rms 1), so variants that store the weight
    differently (Gemma's 1 + w) give their effective scale; LayerNorm (GPT-NeoX) gives its weight."""
    base = getattr(target, "base_model", target)
    norm = getattr(base, "norm", None) or getattr(base, "final_layer_norm", None) or getattr(base, "ln_f", None)
    if norm is None or getattr(norm, "weight", None) is None:
        return None
    if isinstance(norm, torch.nn.LayerNorm):
        return norm.weight.detach().float().clone()
    weight = norm.weight
    with torch.no_grad():
        ones = torch.ones(1, weight.shape[-1], dtype=weight.dtype, device=weight.device)
        return norm(ones)[0].detach().float().cpu()


@torch.no_grad()
def head_top1(head: Eagle3Head, data: FeatureData, t2d_index: torch.Tensor, steps: int,
              batch: int = TrainConfig.eval_batch) -> HeadTop1:
    """Held-out per-step top-1 agreement (over all positions with a label, out-of-vocab = miss)
    and loss; split by source (code / chat) and on generated tokens alone."""
    head.eval()
    dev = head.lm_head.weight.device
    hits = np.zeros((2, steps))
    count = np.zeros((2, steps))
    gen_hits, gen_count = np.zeros(steps), np.zeros(steps)
    losses = np.zeros(steps)
    nb = 0
    for b0 in range(0, len(data), batch):
        idx = np.arange(b0, min(b0 + batch, len(data)))
        bt = data.batch(idx, dev, torch.float32)
        logits = ttt_forward(head, bt.feats, bt.tokens, steps)
        targets = step_targets(bt.labels, bt.lens, t2d_index, steps)
        is_code = torch.from_numpy(np.isin(data.src[idx], CODE_SOURCES)).to(dev)[:, None]
        for j, (lg, (tgt, valid)) in enumerate(zip(logits, targets)):
            hit = (lg.argmax(-1) == tgt) & (tgt >= 0)
            for g, sel in enumerate((is_code, ~is_code)):
                m = valid & sel
                hits[g, j] += (hit & m).sum().item()
                count[g, j] += m.sum().item()
            drafted = valid & drafted_mask(bt.gen_start, bt.feats.shape[1], j)
            gen_hits[j] += (hit & drafted).sum().item()
            gen_count[j] += drafted.sum().item()
            ok = tgt >= 0
            if ok.any():
                losses[j] += F.cross_entropy(lg[ok], tgt[ok]).item()
        nb += 1
    head.train()

    def share(h: np.ndarray, c: np.ndarray) -> list[float]:
        return (h / np.maximum(c, 1)).round(4).tolist()

    return HeadTop1(top1=share(hits.sum(0), count.sum(0)), top1_code=share(hits[0], count[0]),
                    top1_chat=share(hits[1], count[1]), top1_generated=share(gen_hits, gen_count),
                    loss=(losses / max(nb, 1)).round(4).tolist(), positions=int(count.sum(0)[0]),
                    positions_generated=int(gen_count[0]))


def _window_point(window: list[list[StepStats]]) -> dict:
    """Mean train loss and pooled top-1 per unrolled step over the optimizer steps since the last point."""
    arr = np.array([[(s.loss, s.hits, s.positions) for s in stats] for stats in window])  # [w, steps, 3]
    return {"train_loss": arr[:, :, 0].mean(0).round(4).tolist(),
            "train_top1": (arr[:, :, 1].sum(0) / np.maximum(arr[:, :, 2].sum(0), 1)).round(4).tolist()}


def train_head(head: Eagle3Head, data: FeatureData, cfg: TrainConfig, val: FeatureData | None = None,
               ckpt: Path | None = None, progress: bool = True, resume: bool = True) -> TrainState:
    """EAGLE-3 training-time-test training of `head` on stored features (resumable from `ckpt`).

    Stops after `cfg.max_steps` optimizer steps or `cfg.seconds` of training (cumulative over resumes);
    logs a point (train loss and top-1 since the last point, held-out `head_top1`) every
    `cfg.eval_every_s` and at the end."""
    dev = head.lm_head.weight.device
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.adam_betas)
    state = TrainState()
    if ckpt is not None and resume and Path(ckpt).is_file():
        saved = torch.load(ckpt, map_location=dev, weights_only=False)
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["opt"])
        state = TrainState(**saved["state"])
    t2d_index = make_t2d_index(head).to(dev)
    rng = np.random.default_rng(cfg.seed + state.step)
    head.train()
    t_begin = time.monotonic() - state.train_seconds
    last_eval = last_ckpt = time.monotonic()
    window: list[list[StepStats]] = []
    bar = progress_bar(cfg.max_steps, "train", "step", enabled=progress, leave=True)
    bar.update(state.step)

    def done() -> float:
        if cfg.max_steps:
            return state.step / cfg.max_steps
        return min(1.0, state.train_seconds / cfg.seconds) if cfg.seconds else 0.0

    def save_ckpt() -> None:
        if ckpt is not None:
            saved = {"head": head.state_dict(), "opt": opt.state_dict(), "state": asdict(state)}
            write_with(ckpt, lambda tmp: torch.save(saved, tmp))

    def log_point() -> None:
        point = {"step": state.step, "positions": state.seen_positions,
                 "train_s": round(state.train_seconds, 1), "lr": opt.param_groups[0]["lr"]}
        if window:
            point.update(_window_point(window))
        if val is not None and len(val):
            point["val"] = asdict(head_top1(head, val, t2d_index, cfg.ttt_steps, cfg.eval_batch))
        state.log.append(point)
        window.clear()

    while True:
        state.train_seconds = time.monotonic() - t_begin
        if cfg.max_steps is not None and state.step >= cfg.max_steps:
            break
        if cfg.seconds is not None and state.train_seconds >= cfg.seconds:
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * cosine_lr_scale(state.step, done(), cfg.warmup, cfg.min_lr_frac)
        idx = rng.choice(len(data), size=min(cfg.batch, len(data)), replace=False)
        batch = data.batch(idx, dev, torch.float32)
        result = ttt_loss(head, batch, t2d_index, cfg.ttt_steps, cfg.decay)
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        state.step += 1
        state.seen_positions += int(batch.lens.sum())
        window.append(result.steps)
        bar.update(1)
        first = result.steps[0]
        bar.set_postfix(loss=f"{float(result.loss.detach()):.3f}", top1=f"{first.hits / max(first.positions, 1):.2f}")
        now = time.monotonic()
        if now - last_eval > cfg.eval_every_s:
            log_point()
            last_eval = time.monotonic()
        if now - last_ckpt > cfg.checkpoint_every_s:
            state.train_seconds = time.monotonic() - t_begin
            save_ckpt()
            last_ckpt = time.monotonic()
    bar.close()
    state.train_seconds = time.monotonic() - t_begin
    log_point()
    save_ckpt()
    head.eval()
    return state
