"""Features: the target's greedy responses (`greedy_generate`), its teacher-forced hidden states and
argmax labels (`extract_features`, `featurize`), and the sharded store they are written to and read
from (`FeatureData`). Epochs never rerun the target."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltd_sim.errors import LTDError
from ltd_sim.io import write_with
from realrun.progress import progress_bar

NOT_GENERATED = 10**9  # the generated-span start of teacher-forced text: no index is a drafted token
STORE_FIELDS = ("feats", "tokens", "labels", "lens", "src", "gen_start")


@torch.no_grad()
def greedy_generate(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int],
                    pad_id: int) -> list[list[int]]:
    """The target's greedy continuations of a batch of prompts (left padding, one `generate`)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                         eos_token_id=sorted(eos_ids) or None, top_k=None, top_p=None, temperature=None)
    res = []
    for row in out[:, width:].tolist():
        cut = []
        for t in row:
            cut.append(t)
            if t in eos_ids:
                break
        res.append(cut)
    return res


@torch.no_grad()
def extract_features(model: torch.nn.Module, seqs: list[list[int]], layers: list[int],
                     chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced pass over a batch of sequences (right padding): (features f16 [B, chunk, F],
    argmax labels int32 [B, chunk]) of each sequence's last `chunk` positions (all of it when it is
    shorter). A longer sequence is run whole, so that the stored window's features have seen the
    whole context (a long prompt before a response), as they have at inference."""
    device = next(model.parameters()).device
    b = len(seqs)
    width = max(chunk, max(len(s) for s in seqs))
    ids = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                use_cache=False)
    starts = [max(len(s) - chunk, 0) for s in seqs]
    rows = torch.arange(b)[:, None]
    cols = torch.as_tensor(starts)[:, None] + torch.arange(chunk)[None]
    feats = torch.cat([out.hidden_states[i][rows, cols] for i in layers], dim=-1)
    labels = out.logits[rows, cols].argmax(-1).to(torch.int32).cpu().numpy()
    return feats.to(torch.float16).cpu().numpy(), labels


@dataclass
class FeatureData:
    """All stored training positions in memory: sequences padded to `chunk`."""

    feats: np.ndarray  # f16 [N, L, F]
    tokens: np.ndarray  # int32 [N, L]
    labels: np.ndarray  # int32 [N, L] target argmax at each position (its next token)
    lens: np.ndarray  # int32 [N]
    src: np.ndarray  # int8 [N]
    gen_start: np.ndarray  # int32 [N]: first generated token's index (>= length: none)

    def __len__(self) -> int:
        return len(self.lens)

    @classmethod
    def load(cls, folder: Path) -> "FeatureData":
        shards = sorted(Path(folder).glob("feat_*.npz"))
        if not shards:
            raise LTDError(f"no feature shards in {folder}")
        parts = [np.load(s) for s in shards]
        for shard, part in zip(shards, parts):
            if set(STORE_FIELDS) - set(part.files):
                raise LTDError(f"{shard} was written by an older toolkit; build in a fresh work folder")
        return cls(**{k: np.concatenate([p[k] for p in parts]) for k in STORE_FIELDS})

    def subset(self, idx) -> "FeatureData":
        return FeatureData(self.feats[idx], self.tokens[idx], self.labels[idx], self.lens[idx], self.src[idx],
                           self.gen_start[idx])

    def batch(self, idx, device: torch.device | str, dtype: torch.dtype) -> "FeatureBatch":
        """Sequences `idx` as tensors, cut to the longest one's length."""
        n = int(self.lens[idx].max())
        return FeatureBatch(
            feats=torch.from_numpy(self.feats[idx, :n].astype(np.float32)).to(device=device, dtype=dtype),
            tokens=torch.from_numpy(self.tokens[idx, :n].astype(np.int64)).to(device),
            labels=torch.from_numpy(self.labels[idx, :n].astype(np.int64)).to(device),
            lens=torch.from_numpy(self.lens[idx].astype(np.int64)).to(device),
            gen_start=torch.from_numpy(self.gen_start[idx].astype(np.int64)).to(device))


@dataclass
class FeatureBatch:
    """A batch of stored sequences as tensors (see `FeatureData` for the fields)."""

    feats: torch.Tensor  # [B, n, 3Ht]
    tokens: torch.Tensor  # [B, n]
    labels: torch.Tensor  # [B, n]
    lens: torch.Tensor  # [B]
    gen_start: torch.Tensor  # [B]


def pack_sequences(items: list[tuple[list[int], int, int]], chunk: int,
                   max_context: int = 0) -> list[tuple[list[int], int, int]]:
    """Split (token ids, generated-span start, src) into pieces of at most `chunk` tokens.

    An item of at most `max_context` tokens is kept whole instead: `extract_features` runs all of
    it and stores its last `chunk` positions (a long prompt's tail and the response after it)."""
    out = []
    for ids, gen_start, src in items:
        if chunk < len(ids) <= max_context:
            out.append((ids, gen_start, src))
            continue
        for start in range(0, max(len(ids) - 1, 1), chunk - 1):
            piece = ids[start:start + chunk]
            if len(piece) >= 4:
                out.append((piece, gen_start - start, src))
    return out


def heldout_mask(n: int, val_fraction: float, seed: int = 0) -> np.ndarray:
    """The build's stable held-out split: sequence i is held out by a hash of i, so a resume that adds
    sequences keeps the earlier ones on their side (and `benchmarks/draft_heads.py` can compare heads
    on the same held-out sequences)."""
    held = ((np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(seed)) % np.uint64(1000)
            < np.uint64(int(val_fraction * 1000)))
    if held.sum() < 2 or (~held).sum() < 2:
        held = np.arange(n) % 10 == 0
    return held


@dataclass
class Featurized:
    items: int  # items done
    positions: int  # positions stored


def featurize(model: torch.nn.Module, items: list[tuple[list[int], int, int]], layers: list[int], chunk: int,
              batch: int, out_dir: Path, shard_index: int, max_seconds: float | None = None, progress: bool = True,
              max_context: int = 0) -> Featurized:
    """Feature shards for (ids, gen_start, src) items. Generated spans (index >= gen_start) take the
    exact generated next token as label. Items longer than `chunk` but at most `max_context` tokens
    keep their last `chunk` tokens (features over all of them); longer ones are split.
    """
    pieces = pack_sequences(items, chunk, max_context)
    # the stored window of a whole-kept item: its last `chunk` tokens
    pieces = [(ids[-chunk:], gen_start - max(len(ids) - chunk, 0), src, ids) for ids, gen_start, src in pieces]
    t0 = time.monotonic()
    done_items = 0
    positions = 0
    bar = progress_bar(len(pieces), "features", "seq", enabled=progress, leave=True)
    for b0 in range(0, len(pieces), batch):
        if max_seconds is not None and time.monotonic() - t0 > max_seconds:
            break
        group = pieces[b0:b0 + batch]
        feats, labels = extract_features(model, [g[3] for g in group], layers, chunk)
        tokens = np.zeros((len(group), chunk), dtype=np.int32)
        lens = np.zeros(len(group), dtype=np.int32)
        for row, (ids, gen_start, _src, _whole) in enumerate(group):
            n = len(ids)
            tokens[row, :n] = ids
            lens[row] = n
            g = max(gen_start - 1, 0)  # label of position i is token i+1: exact in the generated span
            if gen_start - 1 < n - 1:
                labels[row, g:n - 1] = np.asarray(ids[g + 1:n], dtype=np.int32)
        # first index whose token the target generated (0: the whole piece; >= len: none, e.g.
        # teacher-forced text): a label at index k >= gen_start is a token the decoder would draft
        gen_starts = np.array([min(max(g[1], 0), chunk) for g in group], dtype=np.int32)
        arrays = dict(feats=feats, tokens=tokens, labels=labels, lens=lens,
                      src=np.array([g[2] for g in group], dtype=np.int8), gen_start=gen_starts)
        write_with(out_dir / f"feat_{shard_index:05d}.npz", lambda tmp: np.savez(tmp, **arrays))
        shard_index += 1
        positions += int(lens.sum())
        done_items = b0 + len(group)
        bar.update(len(group))
    bar.close()
    return Featurized(done_items, positions)
