"""Record draft-tree traces with the real decoder (DESIGN.md, "Trace-driven simulation").

Run the decoder with StaticDepth(max_depth) and StaticSize(0): every cycle drafts the full
`max_depth` tree (handed to `on_cycle`) and then verifies the root alone, so it commits exactly the
target's next greedy token. The cycles therefore visit every position of the greedy output once,
and the output itself is each position's continuation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from ltd_sim.trace import TraceSequence, load_sequence, save_sequence, sequence_path, write_manifest
from ltd_sim.tree import DraftTree
from realrun.decoder import DecodeConfig, generate


def record_sequence(target, drafter, prompt_ids, max_new_tokens: int = defaults.MAX_NEW_TOKENS,
                    top_k: int = defaults.TOP_K, max_depth: int = defaults.MAX_DEPTH,
                    eos_ids=frozenset(), context_limit: int | None = None,
                    meta: dict | None = None) -> TraceSequence:
    """One prompt's trace: a full tree at every position of the target's greedy output."""
    if drafter is None:
        raise LTDError("recording a trace needs a draft model (--draft)")
    trees: list[DraftTree] = []
    contexts: list[int] = []

    def on_cycle(tree: DraftTree, record) -> None:
        if record.size != 0 or record.accepted != 0:
            raise AssertionError("trace recording verifies the root alone (V = 0)")
        trees.append(DraftTree(tree.tokens.copy(), tree.parents.copy(), tree.scores.copy(), tree.steps.copy()))
        contexts.append(record.context_len)

    cfg = DecodeConfig(max_new_tokens=max_new_tokens, top_k=top_k, max_depth=max_depth)
    result = generate(target, prompt_ids, drafter, cfg, StaticDepth(max_depth), StaticSize(0),
                      eos_ids=eos_ids, context_limit=context_limit, on_cycle=on_cycle)
    info = {"prompt_len": int(np.asarray(prompt_ids).size), "stop_reason": result.stop_reason, **(meta or {})}
    return TraceSequence.from_trees(trees, result.token_ids, contexts, top_k, max_depth, info)


def _done(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        load_sequence(path)
        return True
    except LTDError:
        return False  # a damaged file from an interrupted run is recorded again


def record_prompts(pair, prompts: list[dict], out_dir: str | Path, encode, max_new_tokens: int,
                   top_k: int = defaults.TOP_K, max_depth: int = defaults.MAX_DEPTH,
                   progress: bool = True, info: dict | None = None) -> dict:
    """Record every prompt into `out_dir/seq_NNNNN.npz`, skipping those already there (resume)."""
    from realrun.progress import progress_bar

    out_dir = Path(out_dir)
    write_manifest(out_dir, {"top_k": top_k, "max_depth": max_depth, "max_new_tokens": max_new_tokens,
                             "num_prompts": len(prompts), **(info or {})})
    recorded = skipped = positions = 0
    bar = progress_bar(len(prompts), "trace", "prompt", enabled=progress, leave=True)
    for i, prompt in enumerate(prompts):
        path = sequence_path(out_dir, i)
        if _done(path):
            skipped += 1
            bar.update(1)
            continue
        ids = encode(prompt["text"])
        seq = record_sequence(pair.target.model, pair.drafter, ids, max_new_tokens, top_k, max_depth,
                              pair.eos_ids, pair.context_limit,
                              {"prompt_id": prompt["id"], "category": prompt["category"]})
        save_sequence(path, seq)
        recorded += 1
        positions += seq.num_positions
        bar.set_postfix(positions=positions)
        bar.update(1)
    bar.close()
    return {"recorded": recorded, "skipped": skipped, "positions": positions, "out": str(out_dir)}


def run_trace(prompts_path: str | Path, out_dir: str | Path, target: str | None = None, draft: str | None = None,
              draft_kind: str | None = None, device: str | None = None, dtype: str | None = None,
              max_new_tokens: int = defaults.MAX_NEW_TOKENS, limit: int | None = None,
              top_k: int = defaults.TOP_K, max_depth: int = defaults.MAX_DEPTH, chat: bool = True,
              threads: int | None = None, progress: bool = True) -> dict:
    """`ltd trace`: check every option, load the pair, and record the first `limit` prompts of
    `prompts_path` (all by default) into `out_dir` (resumable). Returns `record_prompts`' summary."""
    from realrun.loading import load_pair, set_threads
    from realrun.models import encode_prompt
    from realrun.prompts import read_prompts

    # Every option is checked before the models load.
    if draft is None:
        raise LTDError("`ltd trace` needs a draft model: --draft DIR (or --draft default)")
    if limit is not None and limit < 1:
        raise LTDError(f"--limit must be at least 1, got {limit}")
    DecodeConfig(max_new_tokens=max_new_tokens, top_k=top_k, max_depth=max_depth).validate(True)
    set_threads(threads)  # refuses --threads < 1 before anything is read
    prompts = read_prompts(prompts_path, limit)
    pair = load_pair(target, draft, draft_kind, device, dtype)
    encode = lambda text: encode_prompt(pair.target.tokenizer, text, chat=chat)  # noqa: E731
    info = {"target": str(pair.target.path), "draft": str(pair.draft_path), "draft_kind": pair.draft_kind,
            "prompts": str(prompts_path), "chat": chat}
    return record_prompts(pair, prompts, out_dir, encode, max_new_tokens, top_k, max_depth,
                          progress=progress, info=info)
