"""Record draft-tree traces with the real decoder (DESIGN.md, "Trace-driven simulation").

Run the decoder with StaticDepth(max_depth) and StaticSize(0): every cycle drafts the full
`max_depth` tree (handed to `on_cycle`) and then verifies the root alone, so it commits exactly the
target's next token: its greedy token, or at T > 0 a token sampled from the target's (temperature,
top-p) law. The cycles therefore visit every position of the output once, and the output itself is
each position's continuation. At T > 0 every (prompt, sample) gets its own seed, derived from the
run's seed and recorded in the file, so a trace can be recorded again exactly. With an n-gram source
(`--ngram`, `--draft-kind ngram`) the trees carry their n-gram branches, sources and signals (trace
format version 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from ltd_sim.io import read_json
from ltd_sim.trace import (HEAD, HYBRID, MANIFEST, NGRAM, Sampling, TraceSequence, load_sequence, save_sequence,
                           sequence_path, write_manifest)
from ltd_sim.tree import DraftTree
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import NgramDrafter
from realrun.sampling import stream_seed


def draft_sources(drafter) -> str:
    """Which sources a drafter drafts from (a trace header's `draft_sources`)."""
    if isinstance(drafter, NgramDrafter):
        return NGRAM if drafter.model is None else HYBRID
    return HEAD


def record_sequence(target, drafter, prompt_ids, max_new_tokens: int = defaults.MAX_NEW_TOKENS,
                    top_k: int = defaults.TOP_K, max_depth: int = defaults.MAX_DEPTH,
                    eos_ids=frozenset(), context_limit: int | None = None,
                    meta: dict | None = None, sampling: Sampling = Sampling(),
                    seed: int | None = None) -> TraceSequence:
    """One prompt's trace: a full tree at every position of the target's greedy output, or (T > 0) of
    one continuation the target samples with `seed`."""
    if drafter is None:
        raise LTDError("recording a trace needs a draft model (--draft)")
    trees: list[DraftTree] = []
    contexts: list[int] = []

    def on_cycle(tree: DraftTree, record) -> None:
        if record.size != 0 or record.accepted != 0:
            raise AssertionError("trace recording verifies the root alone (V = 0)")
        trees.append(tree)  # every cycle builds its tree afresh: nothing later writes into these arrays
        contexts.append(record.context_len)

    if not sampling.greedy and seed is None:
        raise LTDError("a sampled trace needs a seed (so that it can be recorded again)")
    cfg = DecodeConfig(max_new_tokens=max_new_tokens, top_k=top_k, max_depth=max_depth,
                       temperature=sampling.temperature, top_p=sampling.top_p, seed=seed)
    result = generate(target, prompt_ids, drafter, cfg, StaticDepth(max_depth), StaticSize(0),
                      eos_ids=eos_ids, context_limit=context_limit, on_cycle=on_cycle)
    info = {"prompt_len": int(np.asarray(prompt_ids).size), "stop_reason": result.stop_reason, **(meta or {})}
    if not sampling.greedy:
        info["seed"] = int(seed)
    return TraceSequence.from_trees(trees, result.token_ids, contexts, top_k, max_depth, info, sampling,
                                    draft_sources(drafter))


def ngram_manifest(proposer) -> dict:
    """The n-gram settings a trace folder records (the corpus and calibration by digest)."""
    from realrun.ngram import corpus_digest

    cfg = proposer.cfg
    return {"ngram_min": cfg.ngram_min, "ngram_max": cfg.ngram_max, "max_branches": cfg.max_branches,
            "corpus": corpus_digest(proposer.corpus), "calibration": proposer.calibration.digest()}


def check_folder_settings(out_dir: Path, settings: dict) -> None:
    """Refuse to add traces to a folder recorded with other settings (nothing there is touched)."""
    path = out_dir / MANIFEST
    if not path.is_file():
        return
    old = read_json(path, "trace manifest")
    for key, value in settings.items():
        if key in old and old[key] != value:
            raise LTDError(f"{out_dir} holds traces recorded with {key} = {old[key]!r}, not {value!r}; "
                           "record into another --out")
    if "sampling" not in old and settings.get("sampling", {}).get("temperature", 0) != 0:
        raise LTDError(f"{out_dir} holds greedy traces; record sampled ones into another --out")
    if "draft_sources" not in old and settings.get("draft_sources", HEAD) != HEAD:
        raise LTDError(f"{out_dir} holds traces of a draft model alone; record n-gram ones into another --out")


def _done(path: Path, sampling: Sampling) -> bool:
    if not path.is_file():
        return False
    try:
        seq = load_sequence(path)
    except LTDError:
        return False  # a damaged file from an interrupted run is recorded again
    if seq.sampling != sampling:
        raise LTDError(f"{path} was recorded at {seq.sampling.label()}, this run records at {sampling.label()}; "
                       "record into another --out")
    return True


def check_samples(sampling: Sampling, samples: int, seed: int | None) -> None:
    if samples < 1:
        raise LTDError(f"--samples must be at least 1, got {samples}")
    if sampling.greedy and samples > 1:
        raise LTDError("--samples above 1 needs --temperature above 0 (the greedy output is one sequence)")
    if seed is not None and seed < 0:
        raise LTDError(f"--seed must be >= 0, got {seed}")


def record_prompts(pair, prompts: list[dict], out_dir: str | Path, encode, max_new_tokens: int,
                   top_k: int = defaults.TOP_K, max_depth: int = defaults.MAX_DEPTH,
                   progress: bool = True, info: dict | None = None, sampling: Sampling = Sampling(),
                   samples: int = 1, seed: int = 0) -> dict:
    """Record every prompt (`samples` sampled continuations each at T > 0) into
    `out_dir/seq_NNNNN[_sJJ].npz`, skipping those already there (resume)."""
    from realrun.progress import progress_bar

    check_samples(sampling, samples, seed)
    out_dir = Path(out_dir)
    settings = {"top_k": top_k, "max_depth": max_depth, "sampling": sampling.to_json(),
                "draft_sources": draft_sources(pair.drafter)}
    if isinstance(pair.drafter, NgramDrafter):  # what shaped the branches: other settings, other traces
        settings["ngram"] = ngram_manifest(pair.drafter.proposer)
    if not sampling.greedy:
        settings["seed"] = seed
    check_folder_settings(out_dir, settings)
    write_manifest(out_dir, {**settings, "max_new_tokens": max_new_tokens, "num_prompts": len(prompts),
                             "samples": samples, **(info or {})})
    recorded = skipped = positions = 0
    bar = progress_bar(len(prompts) * samples, "trace", "seq", enabled=progress, leave=True)
    for i, prompt in enumerate(prompts):
        for j in range(samples):
            path = sequence_path(out_dir, i, j)
            if _done(path, sampling):
                skipped += 1
                bar.update(1)
                continue
            ids = encode(prompt["text"])
            seq = record_sequence(pair.target.model, pair.drafter, ids, max_new_tokens, top_k, max_depth,
                                  pair.eos_ids, pair.context_limit,
                                  {"prompt_id": prompt["id"], "category": prompt["category"], "sample": j},
                                  sampling, None if sampling.greedy else stream_seed(seed, i, j))
            save_sequence(path, seq)
            recorded += 1
            positions += seq.num_positions
            bar.set_postfix(positions=positions)
            bar.update(1)
    bar.close()
    return {"recorded": recorded, "skipped": skipped, "positions": positions, "out": str(out_dir),
            "sampling": sampling.label()}


def run_trace(prompts_path: str | Path, out_dir: str | Path, target: str | None = None, draft: str | None = None,
              draft_kind: str | None = None, device: str | None = None, dtype: str | None = None,
              max_new_tokens: int = defaults.MAX_NEW_TOKENS, limit: int | None = None,
              top_k: int = defaults.TOP_K, max_depth: int = defaults.MAX_DEPTH, chat: bool = True,
              threads: int | None = None, progress: bool = True, temperature: float = 0.0,
              top_p: float = 1.0, seed: int = 0, samples: int = 1, ngram=None) -> dict:
    """`ltd trace`: check every option, load the pair, and record the first `limit` prompts of
    `prompts_path` (all by default; `samples` sampled continuations each at `temperature` > 0) into
    `out_dir` (resumable). `ngram` (an `NgramConfig`; implied by `draft_kind` "ngram"): record the
    n-gram branches too. Returns `record_prompts`' summary."""
    from realrun.loading import load_pair, set_threads
    from realrun.models import encode_prompt
    from realrun.prompts import read_prompts

    # Every option is checked before the models load.
    if draft is None and draft_kind != "ngram":
        raise LTDError("`ltd trace` needs a drafter: --draft DIR (or --draft default), or --draft-kind ngram")
    if limit is not None and limit < 1:
        raise LTDError(f"--limit must be at least 1, got {limit}")
    DecodeConfig(max_new_tokens=max_new_tokens, top_k=top_k, max_depth=max_depth).validate(True)
    sampling = Sampling(temperature, top_p)
    check_samples(sampling, samples, seed)
    set_threads(threads)  # refuses --threads < 1 before anything is read
    prompts = read_prompts(prompts_path, limit)
    pair = load_pair(target, draft, draft_kind, device, dtype, ngram)
    encode = lambda text: encode_prompt(pair.target.tokenizer, text, chat=chat)  # noqa: E731
    info = {"target": str(pair.target.path), "draft": str(pair.draft_path) if pair.draft_path else None,
            "draft_kind": pair.draft_kind,
            "prompts": str(prompts_path), "chat": chat}
    return record_prompts(pair, prompts, out_dir, encode, max_new_tokens, top_k, max_depth,
                          progress=progress, info=info, sampling=sampling, samples=samples, seed=seed)
