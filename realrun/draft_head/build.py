"""`ltd draft build`: the whole build of a head as five resumable stages over one work folder.

`build` encodes the prompts, then runs `generate`, `make_features`, `split_and_vocab`, `train` and
`save`; what a resume needs is in the work folder (`BuildState` in state.json, generated.json,
features/, vocab.npy, train_ckpt.pt), every file written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltd_sim.errors import LTDError
from ltd_sim.io import write_json, write_with
from realrun.draft_head.corpus import (CHAT_SOURCES, CODE_SOURCES, SRC_GEN_CHAT, SRC_NAMES, build_long_prompts,
                                       build_prompts, teacher_texts)
from realrun.draft_head.features import NOT_GENERATED, FeatureData, featurize, greedy_generate, heldout_mask
from realrun.progress import progress_bar
from realrun.draft_head.logs import write_logs
from realrun.draft_head.state import BuildClock, BuildState, Generated
from realrun.draft_head.train import TrainConfig, TrainState, init_head, train_head
from realrun.draft_head.vocab import choose_draft_vocab, coverage
from realrun.eagle3 import Eagle3Head

@dataclass
class BuildConfig:
    minutes: float = 30.0
    draft_vocab: int = 8192
    chunk: int = 320  # tokens per stored sequence
    long_prompt_tokens: int = 704  # long-input prompts up to this many tokens (stored: their last `chunk`)
    max_new_tokens: int = 128
    gen_batch: int = 48
    feat_batch: int = 8
    feature_block: int = 64  # sequences featurized between two saves of the build's state
    min_response_tokens: int = 32  # a built-in short prompt leaves this much of `chunk` to its response
    teacher_text_chunks: int = 2  # teacher-forced text is cut to this many chunks
    gen_overrun: float = 1.5  # generation stops when a batch took this many times the time left
    stage_margin_s: float = 5.0  # a data stage with less time left than this is not started
    prompt_vocab_always: int = 1024  # the prompts' most frequent tokens always join the draft vocabulary
    gen_fraction: float = 0.33  # of the budget: generation ends by then
    data_fraction: float = 0.47  # ... all data (features and extra text) by then
    save_margin_s: float = 60.0
    min_train_s: float = 10.0
    feature_dtype: str = "auto"  # the teacher-forced pass: "auto" = bf16 where it is fast, else fp32
    val_fraction: float = 0.04
    seed: int = 0
    builtin_prompts: bool = True  # False (--only-prompts): the user's prompts alone
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        """One-line LTDErrors for settings no build can run with (named by their command-line options)."""
        if self.minutes <= 0:
            raise LTDError(f"--minutes must be positive, got {self.minutes}")
        if self.draft_vocab < 16:
            raise LTDError(f"--draft-vocab must be at least 16, got {self.draft_vocab}")
        if not 1 <= self.train.ttt_steps <= 16:
            raise LTDError(f"--ttt-steps must be in 1..16, got {self.train.ttt_steps}")
        if not 0 <= self.gen_fraction <= self.data_fraction < 1:
            raise LTDError(f"need 0 <= --gen-fraction <= --data-fraction < 1, got {self.gen_fraction} "
                           f"and {self.data_fraction}")
        if self.feature_dtype != "auto" and self.feature_dtype not in FEATURE_DTYPES:
            raise LTDError(f"feature dtype must be auto or one of {sorted(FEATURE_DTYPES)}, got {self.feature_dtype}")


FEATURE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX). Without them torch emulates bf16
    and a forward is several times slower than in fp32 (docs/draft_head.md)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def feature_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype of the teacher-forced feature pass: `name`, or for "auto" bf16 on CUDA and on CPUs with
    native bf16, fp32 elsewhere."""
    if name != "auto":
        return FEATURE_DTYPES[name]
    fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
    return torch.bfloat16 if fast else torch.float32


@dataclass
class EncodedPrompts:
    """Token ids and source of every prompt to generate from, in generation order."""

    items: list[tuple[list[int], int]]
    n_user: int  # items [0, n_user) are the user's (sorted by length)
    n_short: int  # then the built-in short ones; the long-input ones after them


@dataclass
class TrainingData:
    train: FeatureData
    val: FeatureData
    vocab_ids: np.ndarray
    positions: int
    by_source: dict[str, int]
    coverage: dict[str, float | None]


@dataclass
class BuildRun:
    """What every stage of one build reads: its settings, folders, saved state and clock, and the target."""

    cfg: BuildConfig
    target_path: Path
    out_dir: Path
    work_dir: Path
    resume: bool
    state: BuildState
    clock: BuildClock
    target: torch.nn.Module
    tokenizer: Any
    log: Callable[[str], None]
    progress: bool

    @property
    def feat_dir(self) -> Path:
        return self.work_dir / "features"

    def save_state(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.state, name, value)
        self.state.spent_s = self.clock.spent()
        self.state.save(self.work_dir)


def default_work_dir(out_dir: Path) -> Path:
    """Where a build keeps its resumable state: `.build-NAME` beside the head it writes."""
    return Path(out_dir).parent / f".build-{Path(out_dir).name}"


def prompts_fingerprint(items: list[tuple[str, int]], builtin: bool) -> str:
    """What decides the generation batches beyond the seed ("" for the default: built-in prompts only)."""
    if not items and builtin:
        return ""
    return hashlib.sha256(json.dumps([items, builtin]).encode()).hexdigest()[:16]


def generation_batches(lengths: list[int], n_user: int, n_short: int, batch: int, seed: int) -> list[list[int]]:
    """Prompt indices per generation batch: the user's prompts [0, n_user) first (already sorted by
    length), then the built-in short ones [n_user, n_short) in their shuffled order, each batch sorted by
    length (less padding), then the long-input ones (sorted by length) in batches of similar length, the
    batch order shuffled."""
    def spans(lo, hi):
        return [list(range(i, min(i + batch, hi))) for i in range(lo, hi, batch)]

    long_batches = spans(n_short, len(lengths))
    random.Random(seed).shuffle(long_batches)
    return (spans(0, n_user) + [sorted(b, key=lambda i: lengths[i]) for b in spans(n_user, n_short)]
            + long_batches)


# -- stages ------------------------------------------------------------------------------------------

def encode_prompts(run: BuildRun, user_prompts: list[tuple[str, int]]) -> EncodedPrompts:
    """The user's prompts first, then the built-in short ones, then the built-in long-input ones (so
    that a resumed build's batches keep their order); a prompt and its response must fit the target's
    context."""
    from realrun.models import context_limit, encode_prompt

    cfg, tok = run.cfg, run.tokenizer
    max_prompt = min(cfg.long_prompt_tokens, context_limit(run.target) - cfg.max_new_tokens)
    if max_prompt < 16:
        raise LTDError(f"the target's context ({context_limit(run.target)} tokens) leaves no room for a prompt and "
                       f"{cfg.max_new_tokens} new tokens")

    def fitting(items: list[tuple[str, int]], limit: int) -> list[tuple[list[int], int]]:
        return [(ids, src) for ids, src in ((encode_prompt(tok, p), src) for p, src in items) if len(ids) <= limit]

    def by_length(items: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
        return sorted(fitting(items, max_prompt), key=lambda e: len(e[0]))

    encoded = by_length(user_prompts)
    if user_prompts:
        run.log(f"--prompts: {len(encoded)} of {len(user_prompts)} prompts fit {max_prompt} tokens")
        if not encoded:
            raise LTDError(f"none of the {len(user_prompts)} --prompts fits {max_prompt} tokens "
                           f"(the target's context less {cfg.max_new_tokens} new tokens)")
    n_user = len(encoded)
    if cfg.builtin_prompts:  # short ones kept in their shuffled order
        encoded += fitting(build_prompts(cfg.seed), min(cfg.chunk - cfg.min_response_tokens, max_prompt))
    n_short = len(encoded)
    if cfg.builtin_prompts:
        encoded += by_length(build_long_prompts(cfg.seed))
    return EncodedPrompts(encoded, n_user, n_short)


def generate(run: BuildRun, prompts: EncodedPrompts) -> Generated:
    """The target's greedy responses, batch by batch until the generation share of the budget is spent."""
    from realrun.models import eos_token_ids

    cfg, clock = run.cfg, run.clock
    eos = eos_token_ids(run.target, run.tokenizer)
    pad = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
    gen_file = run.work_dir / "generated.json"
    gen = Generated.load(gen_file)
    if clock.until(cfg.gen_fraction) > 0:  # a resumed build with a larger budget generates more
        encoded = prompts.items
        batches = generation_batches([len(ids) for ids, _ in encoded], prompts.n_user, prompts.n_short,
                                     cfg.gen_batch, cfg.seed)
        bar = progress_bar(len(batches), "generate", "batch", enabled=run.progress, leave=True)
        bar.update(gen.done)
        last_batch_s = None
        for bi in range(gen.done, len(batches)):
            left = clock.until(cfg.gen_fraction)
            if left <= 0 or (last_batch_s is not None and last_batch_s > cfg.gen_overrun * left):
                break
            t0 = time.monotonic()
            batch = batches[bi]
            outs = greedy_generate(run.target, [encoded[i][0] for i in batch], cfg.max_new_tokens, eos, pad)
            for i, o in zip(batch, outs):
                gen.items.append([encoded[i][0] + o, len(encoded[i][0]), encoded[i][1]])
            last_batch_s = time.monotonic() - t0
            gen.done = bi + 1
            gen.seconds += last_batch_s
            gen.save(gen_file)
            run.save_state()
            bar.update(1)
            bar.set_postfix(tok_s=f"{sum(len(o) for o in outs) / last_batch_s:.0f}")
        bar.close()
        run.save_state()
    if not gen.items:
        raise LTDError(f"the budget ran out before a response was generated ({clock.spent():.0f} s spent, "
                       f"generation may run until {cfg.gen_fraction:.0%} of {cfg.minutes:g} min); give more --minutes")
    run.log(f"generation: {len(gen.items)} responses, {gen.new_tokens} new tokens in {gen.seconds:.0f} s")
    return gen


def make_features(run: BuildRun, gen: Generated) -> float:
    """Feature shards of the generated sequences, then of teacher-forced local text until the data share
    of the budget is spent; returns the seconds spent."""
    from realrun.eagle3 import aux_layer_ids
    from realrun.models import load_causal_lm

    cfg, state = run.cfg, run.state
    layers = aux_layer_ids(run.target.config.num_hidden_layers)
    dtype = feature_dtype(cfg.feature_dtype, run.target.device)
    model = run.target if dtype == torch.float32 else load_causal_lm(run.target_path, dtype=dtype,
                                                                      with_tokenizer=False).model
    t0 = time.monotonic()

    def featurize_blocks(items: list, key: str, deadline_fraction: float | None, label: str,
                         max_context: int = 0) -> None:
        """Featurize items in blocks, recording progress item-exactly in `state.<key>` (resumable)."""
        block = cfg.feature_block
        for b0 in range(getattr(state, key), len(items), block):
            if deadline_fraction is not None and run.clock.until(deadline_fraction) <= cfg.stage_margin_s:
                break
            shard = len(list(run.feat_dir.glob("feat_*.npz")))
            featurize(model, items[b0:b0 + block], layers, cfg.chunk, cfg.feat_batch, run.feat_dir, shard,
                      progress=False, max_context=max_context)
            run.save_state(**{key: min(b0 + block, len(items))})
            if run.progress:
                print(f"\r{label}: {min(b0 + block, len(items))}/{len(items)} sequences, "
                      f"{run.clock.spent() / 60:.1f} min spent", end="", flush=True)
        if run.progress:
            print()

    if state.gen_feat_items < len(gen.items):
        featurize_blocks([(ids, p, src) for ids, p, src in gen.items], "gen_feat_items", None,
                         "features of generated text", max_context=cfg.long_prompt_tokens + cfg.max_new_tokens)
    if run.clock.until(cfg.data_fraction) > cfg.stage_margin_s and cfg.builtin_prompts:
        tf_items = []
        for user, text, src in teacher_texts(cfg.seed):
            ids = run.tokenizer.apply_chat_template([{"role": "user", "content": user},
                                                     {"role": "assistant", "content": text}], tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            tf_items.append(([int(t) for t in ids][: cfg.teacher_text_chunks * cfg.chunk], NOT_GENERATED, src))
        featurize_blocks(tf_items, "tf_items", cfg.data_fraction, "teacher-forced local text")
    return time.monotonic() - t0


def split_and_vocab(run: BuildRun, prompts: EncodedPrompts) -> TrainingData:
    """The stored features split into training and held-out sequences, and the draft vocabulary: the most
    frequent labels plus the chat template's and the prompts' tokens (a resume keeps its saved one)."""
    from realrun.models import encode_prompt

    cfg, tok = run.cfg, run.tokenizer
    data = FeatureData.load(run.feat_dir)
    held = heldout_mask(len(data), cfg.val_fraction, cfg.seed)
    val, trn = data.subset(np.flatnonzero(held)), data.subset(np.flatnonzero(~held))
    counts = Counter(np.concatenate([trn.labels[i, :trn.lens[i] - 1] for i in range(len(trn))]).tolist())
    template_ids = set(encode_prompt(tok, "x")) | set(tok.all_special_ids)
    prompt_counts = Counter(t for ids, _ in prompts.items for t in ids)
    always = template_ids | {t for t, _ in prompt_counts.most_common(cfg.prompt_vocab_always)}
    vocab_ids = choose_draft_vocab(counts + prompt_counts, cfg.draft_vocab, always, run.target.config.vocab_size)
    vocab_file = run.work_dir / "vocab.npy"
    if run.resume and vocab_file.is_file():  # a resumed build keeps the vocabulary its checkpoint was trained on
        vocab_ids = np.load(vocab_file)
    else:
        write_with(vocab_file, lambda tmp: np.save(tmp, vocab_ids))
    t2d = np.zeros(run.target.config.vocab_size, dtype=bool)
    t2d[vocab_ids] = True
    cov = {}
    for name, sel in (("all", None), ("code", CODE_SOURCES), ("chat", CHAT_SOURCES), ("gen_chat", (SRC_GEN_CHAT,))):
        rows = range(len(val)) if sel is None else [i for i in range(len(val)) if val.src[i] in sel]
        labs = [val.labels[i, :val.lens[i] - 1] for i in rows]
        cov[name] = round(coverage(np.concatenate(labs), t2d), 4) if labs else None
    by_src = {SRC_NAMES[s]: int(data.lens[data.src == s].sum()) for s in range(len(SRC_NAMES))}
    positions = int(data.lens.sum())
    run.save_state(data={"sequences": len(data), "positions": positions, "by_source": by_src, "coverage": cov})
    return TrainingData(trn, val, vocab_ids, positions, by_src, cov)


def train(run: BuildRun, data: TrainingData) -> tuple[Eagle3Head, TrainState]:
    """A fresh head (or the checkpoint's) trained for what is left of the budget."""
    cfg = run.cfg
    tcfg = cfg.train
    head = init_head(run.target, data.vocab_ids, cfg.seed, cfg=tcfg,
                     target_name=str(getattr(run.target.config, "_name_or_path", "")) or run.target_path.name)
    # the training stage's cumulative seconds: what is left, plus training that `spent_s` already
    # counts (a finished build saved its whole wall time; an interrupted one saved it before training,
    # so there the checkpoint's seconds count against what is left)
    tcfg.seconds = max(cfg.min_train_s, run.clock.left() - cfg.save_margin_s + run.state.train_s_in_spent)
    run.save_state(train_seconds_target=tcfg.seconds)
    run.log(f"training: {sum(p.numel() for p in head.parameters()) / 1e6:.1f}M parameters, "
            f"{tcfg.ttt_steps} unrolled steps, {tcfg.seconds / 60:.1f} min")
    state = train_head(head, data.train, tcfg, val=data.val, ckpt=run.work_dir / "train_ckpt.pt",
                       progress=run.progress, resume=run.resume)
    return head, state


def save(run: BuildRun, head: Eagle3Head, trained: TrainState, gen: Generated, feature_s: float,
         data: TrainingData) -> dict:
    """The head (published layout), its training logs and build_report.json; returns the report."""
    from realrun.eagle3 import save_head

    save_head(head, run.out_dir)
    write_logs(trained.log, run.out_dir)
    last = trained.log[-1] if trained.log else {}
    report = {"target": str(run.target_path), "out": str(run.out_dir), "minutes_budget": run.cfg.minutes,
              "wall_s": round(run.clock.spent(), 1), "generation_s": round(gen.seconds, 1),
              "generated_tokens": gen.new_tokens, "responses": len(gen.items),
              "feature_s": round(feature_s, 1), "positions": data.positions, "by_source": data.by_source,
              "draft_vocab": len(data.vocab_ids), "coverage": data.coverage, "train_steps": trained.step,
              "train_positions_seen": trained.seen_positions, "train_s": round(trained.train_seconds, 1),
              "ttt_steps": run.cfg.train.ttt_steps, "final_val": last.get("val"),
              "params_m": round(sum(p.numel() for p in head.parameters()) / 1e6, 2)}
    write_json(run.out_dir / "build_report.json", report)
    run.save_state(finished=True, train_s_in_spent=trained.train_seconds)
    val = last.get("val") or {}
    run.log(f"saved {run.out_dir} after {run.clock.spent() / 60:.1f} min; held-out top-1 per step "
            f"{val.get('top1')}, on generated tokens only (what decoding drafts) {val.get('top1_generated')}")
    return report


def open_run(target_path: str | os.PathLike | None, out: str | os.PathLike | None, cfg: BuildConfig, resume: bool,
             work: str | os.PathLike | None, progress: bool, log: Callable[[str], None],
             user_prompts: list[tuple[str, int]]) -> BuildRun:
    """The work folder (fresh, or resumed with its saved state checked against these prompts), the
    budget's clock, and the target."""
    from realrun.loading import set_threads
    from realrun.models import default_draft_dir, load_causal_lm, resolve_target

    set_threads()
    is_default = target_path is None or str(target_path) == "default"
    tpath = Path(resolve_target(target_path))
    out_dir = Path(out) if out else (default_draft_dir() if is_default else tpath.parent / f"{tpath.name}-eagle3")
    work_dir = Path(work) if work else default_work_dir(out_dir)
    saved = BuildState.load(work_dir) if resume else None
    state = saved or BuildState()
    if state.finished and cfg.minutes * 60.0 > state.spent_s:
        # a finished build given more minutes: split the new minutes into stages like a build's
        state.extend_origin_s = state.spent_s
        state.finished = False
    fingerprint = prompts_fingerprint(user_prompts, cfg.builtin_prompts)
    if saved is not None and saved.user_prompts != fingerprint:
        raise LTDError(f"the work folder {work_dir} was built with other prompts (--prompts, --only-prompts); "
                       "resume with the same ones, or build afresh without --resume")
    state.user_prompts = fingerprint
    if not cfg.builtin_prompts and not user_prompts:
        raise LTDError("--only-prompts needs --prompts FILE")
    if work_dir.exists() and not resume:
        shutil.rmtree(work_dir)
    (work_dir / "features").mkdir(parents=True, exist_ok=True)
    clock = BuildClock(cfg.minutes, state.spent_s, state.extend_origin_s)
    loaded = load_causal_lm(tpath)
    if loaded.tokenizer is None:
        raise LTDError(f"the target at {tpath} has no tokenizer; `ltd draft build` needs one to build prompts")
    tc = loaded.model.config
    log(f"target {tpath} ({tc.num_hidden_layers} layers, hidden {tc.hidden_size}, vocab {tc.vocab_size}); "
        f"budget {cfg.minutes:.0f} min; work dir {work_dir}")
    return BuildRun(cfg, tpath, out_dir, work_dir, resume, state, clock, loaded.model, loaded.tokenizer, log, progress)


def build(target_path: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
          cfg: BuildConfig | None = None, resume: bool = False, work: str | os.PathLike | None = None,
          progress: bool = True, log: Callable[[str], None] = print,
          user_prompts: list[tuple[str, int]] | None = None) -> dict:
    """Run the whole build for a local target; returns the report (also written as build_report.json).

    `user_prompts` ((text, source) pairs, `user_prompt_items`) are the user's own workload: they are
    generated first, before the built-in prompts, so that a short budget spends itself on them."""
    cfg = cfg or BuildConfig()
    cfg.validate()
    user_prompts = list(user_prompts or [])
    run = open_run(target_path, out, cfg, resume, work, progress, log, user_prompts)
    prompts = encode_prompts(run, user_prompts)
    gen = generate(run, prompts)
    feature_s = make_features(run, gen)
    data = split_and_vocab(run, prompts)
    run.log(f"data: {len(data.train) + len(data.val)} sequences, {data.positions} positions {data.by_source}; "
            f"features {feature_s:.0f} s; draft vocab {len(data.vocab_ids)}: held-out label coverage {data.coverage}")
    head, trained = train(run, data)
    return save(run, head, trained, gen, feature_s, data)
