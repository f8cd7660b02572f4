"""Load a target and (optionally) a drafter with every compatibility check, for the CLI and tools."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ltd_sim.errors import LTDError
from realrun.drafters import Drafter, Eagle3Drafter, LMDrafter, NgramDrafter
from realrun.models import (LoadedModel, context_limit, default_draft_dir, eos_token_ids, load_causal_lm,
                            pick_device, pick_dtype, resolve_target)
from realrun.ngram import NgramConfig, make_proposer, read_inputs

DRAFT_KINDS = ("lm", "eagle3")  # draft models; "ngram" (NGRAM_KIND) has none
NGRAM_KIND = "ngram"


@dataclass
class ModelPair:
    target: LoadedModel
    drafter: Drafter | None
    draft_path: Path | None
    draft_kind: str | None  # "lm", "eagle3", "ngram" (no draft model) or None (no drafter)
    eos_ids: set[int]
    context_limit: int
    notes: list[str] = field(default_factory=list)  # what loading decided for the user (caps, defaults)
    ngram: NgramConfig | None = None  # set when n-gram branches join (or form) the tree


def resolve_draft(draft: str | None, draft_kind: str | None) -> tuple[Path | None, str | None]:
    if draft is None:
        return None, None
    if draft == "default":
        path = default_draft_dir()
        if not (path / "config.json").is_file():
            raise LTDError(f"no default draft head at {path}; build one with `ltd draft build`")
        return path, "eagle3"
    path = Path(draft)
    if not (path / "config.json").is_file():
        raise LTDError(f"no draft model at {path} (expected a directory with config.json)")
    kind = draft_kind or guess_draft_kind(path)
    if kind not in DRAFT_KINDS:
        raise LTDError(f"--draft-kind must be one of {', '.join(DRAFT_KINDS)}, got {kind!r}")
    return path, kind


def guess_draft_kind(path: Path) -> str:
    """"eagle3" when config.json is an EAGLE-3 head's in any published layout, else "lm"."""
    import json

    from realrun.head_formats import EAGLE3_ARCHITECTURES

    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return "lm"  # loading it as an lm then reports what is wrong
    if not isinstance(raw, dict):
        return "lm"
    if "ltd" in raw or raw.get("speculators_model_type") or \
            any(a in EAGLE3_ARCHITECTURES for a in raw.get("architectures") or []):
        return "eagle3"
    return "lm"


def load_drafter(path: Path, kind: str, target: LoadedModel) -> Drafter:
    vocab = target.vocab_size
    if kind == "eagle3":
        from realrun.eagle3 import load_head

        param = next(target.model.parameters())
        head = load_head(path, target.model, device=param.device, dtype=param.dtype)
        return Eagle3Drafter(head, vocab)
    draft = load_causal_lm(path, target.device, next(target.model.parameters()).dtype)
    if draft.tokenizer is not None and target.tokenizer is not None:
        if draft.tokenizer.get_vocab() != target.tokenizer.get_vocab():
            raise LTDError(f"the draft at {path} uses another tokenizer than the target; "
                           "an lm draft must share the target's vocabulary")
    return LMDrafter(draft.model, vocab)


def ngram_setting(draft: str | None, draft_kind: str | None, ngram: NgramConfig | None):
    """The n-gram config a load uses: `ngram` (--ngram), or the defaults for --draft-kind ngram
    (which takes no --draft: that drafter has no model)."""
    if draft_kind != NGRAM_KIND:
        return ngram
    if draft is not None:
        raise LTDError("--draft-kind ngram drafts from the context alone: it takes no --draft")
    return ngram or NgramConfig()


def load_pair(target: str | None = None, draft: str | None = None, draft_kind: str | None = None,
              device: str | None = None, dtype: str | None = None, ngram: NgramConfig | None = None) -> ModelPair:
    """Resolve and load everything before any work starts, so a bad input fails at once.

    `ngram` (or `draft_kind` "ngram") adds n-gram branches to the drafter's tree (or makes them the tree)."""
    ngram = ngram_setting(draft, draft_kind, ngram)
    ngram_inputs = read_inputs(ngram) if ngram is not None else None  # its files fail before the models load
    draft_path, kind = resolve_draft(draft, None if draft_kind == NGRAM_KIND else draft_kind)
    dev = pick_device(device)
    tgt = load_causal_lm(resolve_target(target), dev, pick_dtype(dtype, dev))
    drafter = load_drafter(draft_path, kind, tgt) if draft_path is not None else None
    limit, notes = context_limit(tgt.model), []
    if isinstance(drafter, Eagle3Drafter):
        notes += list(getattr(drafter.head, "load_notes", []))
        head_limit = drafter.head.cfg.max_position_embeddings
        if head_limit < limit:  # the head was trained on shorter contexts: do not run it past them
            notes.append(f"the draft head was made for contexts up to {head_limit} tokens (the target "
                         f"takes {limit}): generation is capped at {head_limit}")
            limit = head_limit
    if ngram_inputs is not None:
        proposer = make_proposer(ngram_inputs, tgt.vocab_size, tgt.tokenizer)
        drafter = NgramDrafter(proposer, drafter, tgt.vocab_size)
        kind = kind or NGRAM_KIND
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return ModelPair(tgt, drafter, draft_path, kind, eos_token_ids(tgt.model, tgt.tokenizer), limit, notes, ngram)


def set_threads(threads: int | None = None) -> int:
    """Torch threads for the forward passes: `threads` when given (a command's --threads), else every
    core (torch's default can leave some idle in subprocesses). Returns the count; below 1 -> LTDError."""
    import os

    if threads is not None and threads < 1:
        raise LTDError(f"--threads must be at least 1, got {threads}")
    count = threads if threads is not None else max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(count)
    return count
