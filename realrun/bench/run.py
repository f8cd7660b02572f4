"""Running the bench: its options (`BenchConfig`), the methods, the measured grid sweep, the greedy
equality check (T = 0) or the distributional check (T > 0, `realrun.bench.law`) and `run_bench`,
which times every method on every question, interleaved."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from ltd_sim.trace import Sampling
from realrun.bench.law import LawCheck, check_law, law_sample
from realrun.bench.questions import Question, as_questions
from realrun.bench.stats import QuestionRun, paired_ratio, summarize
from realrun.drafters import NgramDrafter
from realrun.decoder import DecodeConfig
from realrun.measure import (DECODE_RATE, END_TO_END_RATE, RATE_LABELS, DecoderMethod, HFAssistedMethod,
                             Measurement)
from realrun.progress import progress_bar
from realrun.sampling import stream_seed

METHODS = ("ar", "eagle3", "grid", "ltd-sim", "ltd", "hf-assisted", "hf-prompt-lookup")
DRAFTER_METHODS = ("eagle3", "grid", "ltd-sim", "ltd")
# reference peers far slower than the contenders on a CPU: `peer_questions` may run them on fewer
# questions (their speedup is then against ar on those same questions)
PEER_METHODS = ("eagle3", "hf-assisted")
#: the rate of the headline tokens/s, speedups and paired ratios (docs/bench.md, "Which rate")
HEADLINE_RATE = END_TO_END_RATE
# The measured grid sweep: no draft (D = 0), a coarse grid of D <= V <= top_k * D, then the neighbours
# of the best few; no draft is measured in both stages, so the sweep never picks below plain decoding.
NO_DRAFT = (0, 0)
SWEEP_DEPTHS = (1, 2, 3, 4, 6, 8)
SWEEP_SIZES = (1, 2, 4, 8, 16, 32, 60)
SWEEP_QUESTIONS = 2
SWEEP_TOKENS = 48
SWEEP_KEEP = 4
LAW_SEEDS = 100  # T > 0: short runs per method on one question for the distributional check
LAW_TOKENS = 4  # new tokens per such run (the first-cycle token and up to three after it)


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

def parse_methods(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Method names from "a,b" or a list, checked; `ar` is added first when missing (the reference)."""
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise LTDError(f"unknown method(s) {unknown or spec!r}; choose from {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise LTDError(f"--methods lists a method twice: {spec}")
    if "ar" not in names:  # the reference of speedup and of the equality check
        names.insert(0, "ar")
    return names


def parse_grid(spec) -> tuple[int, int]:
    """(D, V) from "D,V" or a pair, within the decoder's bounds; D = 0 is "no draft" (V moot: 0)."""
    try:
        d, v = (int(x) for x in (spec.split(",") if isinstance(spec, str) else spec))
    except (ValueError, TypeError):
        raise LTDError(f"--grid takes D,V (two integers: draft depth and tree tokens verified), got {spec!r}") from None
    if not 0 <= d <= defaults.MAX_DEPTH_LIMIT or v < 0:
        raise LTDError(f"--grid D,V needs 0 <= D <= {defaults.MAX_DEPTH_LIMIT} and V >= 0, got {d},{v}")
    return (d, v) if d >= 1 else NO_DRAFT


def grid_from_file(path: str | os.PathLike) -> tuple[int, int]:
    """(D, V) from `ltd sim eval --json` output (its best_static), a bench report.json (its grid
    method), a tune grid.json or a plain {"depth", "size"} JSON."""
    from ltd_sim.io import read_json

    p = Path(path)
    data = read_json(p, "--grid-from")
    data = data if isinstance(data, dict) else {}
    methods = data.get("methods") if isinstance(data.get("methods"), dict) else {}
    for row in (methods.get("best_static"), data.get("grid"), data):
        if isinstance(row, dict) and "depth" in row and "size" in row:
            return parse_grid((row["depth"], row["size"]))
    raise LTDError(f"--grid-from {p} has no static setting (expected `ltd sim eval --json` output, "
                   "a bench report.json, or {\"depth\": D, \"size\": V})")


@dataclass
class BenchConfig:
    """Every option of a bench run; `validate` checks them all, before any model loads.

    `grid_setting`: (D, V) for `grid`; None runs a measured sweep (`sweep_grid`) on the first
    `sweep_questions` questions. `hf_draft`: a path, a module, or None (a layer-skip draft from the
    target). `peer_questions`: run the slow reference peers (`PEER_METHODS`) on the first N questions
    only. `temperature` > 0: every method samples at (temperature, top_p), each run with its own seed
    derived from `seed` and shared by the methods (common random numbers), and the distributional check
    (`law_seeds` short runs per method, seeds of their own) replaces greedy equality. Torch threads are
    the caller's (`realrun.loading.set_threads`)."""

    methods: str | list[str] | tuple[str, ...] = ("ar", "eagle3", "grid")
    policy_dir: str | os.PathLike | None = None
    sim_policy_dir: str | os.PathLike | None = None
    grid_setting: str | tuple[int, int] | None = None
    max_new_tokens: int = defaults.MAX_NEW_TOKENS
    repeats: int = 1
    warmups: int = 1
    hf_draft: str | os.PathLike | torch.nn.Module | None = None
    hf_tokens: int = defaults.ASSISTANT_TOKENS
    grid_candidates: list[tuple[int, int]] | None = None
    sweep_questions: int = SWEEP_QUESTIONS
    sweep_tokens: int = SWEEP_TOKENS
    peer_questions: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    law_seeds: int = LAW_SEEDS

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p)

    def validate(self) -> "BenchConfig":
        """Check every option; normalise `methods` to a list and `grid_setting` to (D, V). Returns self."""
        self.methods = parse_methods(self.methods)
        if self.grid_setting is not None:
            self.grid_setting = parse_grid(self.grid_setting)
        if self.max_new_tokens < 1 or self.repeats < 1 or self.warmups < 0:
            raise LTDError("--max-new-tokens and --repeats must be at least 1, --warmups at least 0")
        if self.sweep_questions < 1 or self.sweep_tokens < 1:
            raise LTDError("--sweep-questions and --sweep-tokens must be at least 1")
        if self.peer_questions is not None and self.peer_questions < 1:
            raise LTDError(f"--peer-questions must be at least 1, got {self.peer_questions}")
        if self.hf_tokens < 1:
            raise LTDError(f"--hf-tokens must be at least 1, got {self.hf_tokens}")
        Sampling(self.temperature, self.top_p)  # checks --temperature and --top-p, in one line
        if self.temperature > 0 and "hf-prompt-lookup" in self.methods:
            raise LTDError("method hf-prompt-lookup is greedy only (transformers' prompt lookup proposes "
                           "tokens without a draft distribution): drop it or --temperature")
        if self.law_seeds < 10:
            raise LTDError(f"--law-seeds must be at least 10, got {self.law_seeds}")
        for name, flag, folder, what in (("ltd", "--policy", self.policy_dir, "a fine-tuned"),
                                          ("ltd-sim", "--sim-policy", self.sim_policy_dir, "a simulation-pretrained")):
            if name in self.methods and not folder:
                raise LTDError(f"method {name} needs {flag} DIR ({what} policy folder)")
            if folder and not (Path(folder) / "spec.json").is_file():
                raise LTDError(f"{flag} {folder}: no policy there (expected spec.json, depth.zip, size.zip)")
        return self

    def draft_for(self, draft: str | None) -> str | None:
        """The draft to load: the given one, else the cached head when a method needs a drafter."""
        if draft is None and any(m in DRAFTER_METHODS for m in parse_methods(self.methods)):
            return "default"
        return draft

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("hf_draft", "grid_candidates")}
        return {**out, "policy_dir": _str(self.policy_dir), "sim_policy_dir": _str(self.sim_policy_dir)}


def _str(x) -> str | None:
    return None if x is None else str(x)


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------

Method = Callable[[list[int]], object]


def _load_hf_draft(hf_draft, pair) -> tuple[torch.nn.Module, str]:
    from realrun.models import layer_skip_draft, load_causal_lm

    target = pair.target
    if hf_draft is None:
        draft = layer_skip_draft(target.model)
        return draft, f"layer-skip draft: first {len(draft.model.layers)} of the target's layers"
    if isinstance(hf_draft, torch.nn.Module):
        return hf_draft.eval(), "given module"
    loaded = load_causal_lm(hf_draft, target.device, next(target.model.parameters()).dtype)
    if loaded.tokenizer is not None and target.tokenizer is not None \
            and loaded.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        raise LTDError(f"--hf-draft {hf_draft} uses another tokenizer than the target")
    return loaded.model, str(hf_draft)


def policy_method(name: str, pair, policy_dir, max_new: int, sampling: Sampling = Sampling()) -> DecoderMethod:
    """Saved depth and size policies on our decoder, at their own top-k and max depth."""
    from ltd_sim.features import check_ngram_match
    from ltd_sim.policy import PolicyController, calibration_mismatch, sampling_mismatch

    ctrl = PolicyController(policy_dir)
    spec = ctrl.spec
    check_ngram_match(spec, getattr(pair, "ngram", None) is not None, f"the {name} policies in {policy_dir}")
    cfg = DecodeConfig(max_new_tokens=max_new, top_k=spec.top_k, max_depth=spec.max_depth,
                       temperature=sampling.temperature, top_p=sampling.top_p)
    # policies that never draft here decode without the drafter: plain decoding, nothing to catch up on
    never = pair.drafter is not None and ctrl.never_drafts(pair.context_limit)
    return DecoderMethod(name, pair, None if never else pair.drafter, cfg, lambda: (ctrl, ctrl),
                         {"policy": str(policy_dir), "top_k": spec.top_k, "max_depth": spec.max_depth,
                          "size_grid": list(spec.size_grid), "features": spec.name,
                          "made_for": ctrl.info.get("device"), "never_drafts": never,
                          "sampling_note": sampling_mismatch(ctrl.info, sampling.temperature, sampling.top_p),
                          "calibration_note": calibration_mismatch(ctrl.info, pair.drafter.proposer.calibration.digest())
                          if isinstance(pair.drafter, NgramDrafter) else None})


def static_method(name: str, pair, depth: int, size: int, max_new: int, top_k: int = defaults.TOP_K,
                  sampling: Sampling = Sampling()) -> DecoderMethod:
    """A static (D, V) on our decoder; D = 0 never drafts, so it decodes without the drafter (plain
    decoding: no hidden states kept for a catch-up that never comes)."""
    cfg = DecodeConfig(max_new_tokens=max_new, top_k=top_k, max_depth=max(depth, 1),
                       temperature=sampling.temperature, top_p=sampling.top_p)
    return DecoderMethod(name, pair, pair.drafter if depth >= 1 else None, cfg, lambda: (StaticDepth(depth), StaticSize(size)),
                         {"top_k": top_k, "depth": depth, "size": size})


def build_methods(pair, cfg: BenchConfig) -> dict[str, Method]:
    """Every method of `cfg` but `grid` (whose setting may need the sweep), by name."""
    built: dict[str, Method] = {}
    s = cfg.sampling
    for name in cfg.methods:
        if name == "ar":
            built[name] = DecoderMethod("ar", pair, None, DecodeConfig(max_new_tokens=cfg.max_new_tokens,
                                                                       temperature=s.temperature, top_p=s.top_p),
                                        lambda: (StaticDepth(1), StaticSize(0)), {})
        elif name == "eagle3":
            built[name] = static_method(name, pair, *defaults.EAGLE3_SETTING, cfg.max_new_tokens, sampling=s)
        elif name in ("ltd", "ltd-sim"):
            built[name] = policy_method(name, pair, cfg.policy_dir if name == "ltd" else cfg.sim_policy_dir,
                                        cfg.max_new_tokens, s)
        elif name == "hf-assisted":
            draft, desc = _load_hf_draft(cfg.hf_draft, pair)
            built[name] = HFAssistedMethod(pair, draft, cfg.hf_tokens, cfg.max_new_tokens,
                                           {"draft": desc, "num_assistant_tokens": cfg.hf_tokens,
                                            "schedule": "constant"}, s.temperature, s.top_p)
        elif name == "hf-prompt-lookup":
            built[name] = HFAssistedMethod(pair, None, cfg.hf_tokens, cfg.max_new_tokens,
                                           {"prompt_lookup_num_tokens": cfg.hf_tokens})
    return built


# --------------------------------------------------------------------------------------------
# The measured grid sweep
# --------------------------------------------------------------------------------------------

def sweep_candidates(top_k: int = defaults.TOP_K) -> list[tuple[int, int]]:
    return [NO_DRAFT] + [(d, v) for d in SWEEP_DEPTHS for v in SWEEP_SIZES if d <= v <= top_k * d]


def _neighbours(d: int, v: int, top_k: int) -> list[tuple[int, int]]:
    depths = list(range(max(1, d - 1), d + 2))
    grid = [g for g in defaults.SIZE_GRID if g > 0]
    i = grid.index(v) if v in grid else int(np.searchsorted(grid, v))
    sizes = grid[max(0, i - 1): i + 2]
    return [(a, b) for a in depths for b in sizes if a <= b <= top_k * a]


def sweep_grid(pair, questions: list[Question], max_new: int, top_k: int = defaults.TOP_K,
               candidates: list[tuple[int, int]] | None = None, keep: int = SWEEP_KEEP,
               log: Callable[[str], None] | None = None, sampling: Sampling = Sampling(),
               seed: int = 0) -> tuple[tuple[int, int], list[dict]]:
    """The fastest static (D, V) by the bench's headline rate, measured: every candidate on the first
    question, then the best `keep` and the grid neighbours of the best on all `questions`. Each row
    holds both rates of each stage (`stage1_*` on the first question). At T > 0 every candidate samples
    with the same seed per question (common random numbers: less noise between candidates)."""
    cands = list(candidates or sweep_candidates(top_k))
    rows: dict[tuple[int, int], dict] = {}

    def measure(setting: tuple[int, int], qs: list[Question]) -> Measurement:
        method = static_method("grid", pair, *setting, max_new, top_k, sampling)
        return Measurement.of([method(q.prompt_ids, seed=stream_seed(seed, i)) for i, q in enumerate(qs)])

    static_method("grid", pair, *cands[0], max_new, top_k, sampling)(questions[0].prompt_ids, seed=seed)
    for c in cands:
        m = measure(c, questions[:1])
        rows[c] = {"depth": c[0], "size": c[1], f"stage1_{DECODE_RATE}": m.decode_tokens_per_s,
                   f"stage1_{END_TO_END_RATE}": m.end_to_end_tokens_per_s}
    best = sorted(rows, key=lambda c: -rows[c][f"stage1_{HEADLINE_RATE}"])[:keep]
    stage2 = list(dict.fromkeys(best + _neighbours(*best[0], top_k) + [NO_DRAFT]))
    for c in stage2:
        m = measure(c, questions)
        rows.setdefault(c, {"depth": c[0], "size": c[1]}).update(
            {DECODE_RATE: m.decode_tokens_per_s, END_TO_END_RATE: m.end_to_end_tokens_per_s})
    pick = max(stage2, key=lambda c: rows[c][HEADLINE_RATE])
    if log:
        log(f"grid sweep: {len(cands)} settings on 1 question, {len(stage2)} on {len(questions)}: "
            f"best D={pick[0]} V={pick[1]} ({rows[pick][HEADLINE_RATE]:.1f} tok/s, {RATE_LABELS[HEADLINE_RATE]})")
    return pick, sorted(rows.values(), key=lambda r: (r["depth"], r["size"]))


# --------------------------------------------------------------------------------------------
# Greedy equality
# --------------------------------------------------------------------------------------------

def near_tie_tolerance(dtype: torch.dtype, top1: float) -> float:
    """The logit gap under which float rounding (of the tree mask) may flip a greedy argmax."""
    rel = 1e-3 if dtype == torch.float32 else 3e-2
    return rel * max(1.0, abs(top1))


@torch.no_grad()
def check_equal(target, prompt: list[int], ref: list[int], out: list[int]) -> dict | None:
    """None when `out` equals `ref`; otherwise the first mismatch, measured: the target's top-2
    logits there (plain causal forward over prompt + ref prefix) and whether it is a near-tie."""
    if out == ref:
        return None
    i = next((j for j, (a, b) in enumerate(zip(ref, out)) if a != b), min(len(ref), len(out)))
    info = {"position": i, "ar_token": ref[i] if i < len(ref) else None,
            "token": out[i] if i < len(out) else None, "near_tie": False}
    if info["ar_token"] is None or info["token"] is None:
        info["reason"] = "length differs"
        return info
    device = next(target.parameters()).device
    logits = target(input_ids=torch.tensor([prompt + ref[:i]], device=device), logits_to_keep=1).logits[0, -1].float()
    top = logits.topk(2)
    vals, idx = top.values.tolist(), top.indices.tolist()
    gap = vals[0] - vals[1]
    tol = near_tie_tolerance(next(target.parameters()).dtype, vals[0])
    info.update(top2=idx, top2_logits=vals, gap=gap, tolerance=tol,
                near_tie=bool(gap <= tol and {info["ar_token"], info["token"]} <= set(idx)))
    return info


def device_fingerprint(pair, draft_name: str | None) -> dict:
    """The profiler's device fingerprint plus threads, CPUs, platform and the load average now."""
    from profiler.model import make_fingerprint

    param = next(pair.target.model.parameters())
    fp = make_fingerprint(param.device, param.dtype, str(pair.target.path.name), draft_name or "")
    fp.update(threads=torch.get_num_threads(), python=platform.python_version(),
              platform=platform.platform(), cpus=len(os.sched_getaffinity(0)))
    fp["loadavg_start"] = _loadavg()
    return fp


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------

def run_bench(pair, questions: list, cfg: BenchConfig | None = None, out_dir: str | os.PathLike | None = None,
              progress: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Benchmark the methods of `cfg` on `questions` with the models of `pair` (a
    `realrun.loading.ModelPair`), Spec-Bench protocol (docs/bench.md).

    `questions`: `Question`s, token-id lists or texts. Writes report.json, report.md and plots into
    `out_dir` when given. Returns the report (the content of report.json)."""
    from realrun.bench.report import build_report, write_output_corpus, write_report

    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = (cfg or BenchConfig()).validate()
    names = list(cfg.methods)
    need = [m for m in names if m in DRAFTER_METHODS]
    if need and pair.drafter is None:
        raise LTDError(f"methods {', '.join(need)} need a drafter (--draft default or --draft PATH)")
    qs = as_questions(questions, pair.target.tokenizer)

    built = build_methods(pair, cfg)
    grid_info = None
    if "grid" in names:
        setting = cfg.grid_setting
        if setting is None:
            swept = qs[:cfg.sweep_questions]
            setting, rows = sweep_grid(pair, swept, cfg.sweep_tokens, candidates=cfg.grid_candidates, log=log,
                                       sampling=cfg.sampling, seed=cfg.seed)
            grid_info = {"depth": setting[0], "size": setting[1], "source": "measured sweep",
                         "selected_by": HEADLINE_RATE, "sweep_questions": [q.qid for q in swept],
                         "sweep_tokens": cfg.sweep_tokens, "sweep": rows}
        else:
            grid_info = {"depth": setting[0], "size": setting[1], "source": "given"}
        built["grid"] = static_method("grid", pair, *setting, cfg.max_new_tokens, sampling=cfg.sampling)
    built = {n: built[n] for n in names}

    draft_name = str(pair.draft_path.name) if getattr(pair, "draft_path", None) else (pair.draft_kind or None)
    from profiler.model import device_mismatch

    fingerprint = device_fingerprint(pair, draft_name)
    for name, m in built.items():  # policies made for another device or sampling say so, in one line
        note = device_mismatch(getattr(m, "settings", {}).get("made_for"), fingerprint, f"the {name} policies")
        if note:
            log(note)
            m.settings["device_note"] = note
        if m.settings.get("sampling_note"):
            log(f"{name}: {m.settings['sampling_note']}")
    for m in built.values():  # first-call costs (allocations, kernels) belong to no timed run
        for w in range(cfg.warmups):
            m(qs[w % len(qs)].prompt_ids, seed=w)
    runs, checks = _interleave(pair, qs, built, cfg, progress)
    fingerprint["loadavg_end"] = _loadavg()
    if not cfg.sampling.greedy:
        checks = law_checks(pair, qs, built, cfg, log, progress)
    max_depth = max([getattr(m, "cfg", DecodeConfig()).max_depth for m in built.values()] + [1])
    report = build_report(runs, checks, qs, {n: m.settings for n, m in built.items()}, max_depth, cfg,
                          fingerprint, grid_info)
    if out_dir is not None:
        corpus = write_output_corpus(pair, runs["ar"], out_dir)
        report["files"] = write_report(report, out_dir) + [str(corpus)]
    return report


def _interleave(pair, qs: list[Question], built: dict[str, Method], cfg: BenchConfig, progress: bool
                ) -> tuple[dict[str, list[QuestionRun]], dict[str, list]]:
    """Every method on every question and repeat, the order rotated per question and repeat (a load
    burst then hits all methods alike rather than one). Greedy: every output checked against ar's
    (the mismatches, per method). Sampling: the methods share one seed per (question, repeat), so
    their speeds compare on like continuations (the law is checked apart, `law_checks`)."""
    names = list(built)
    greedy = cfg.sampling.greedy
    runs: dict[str, list[QuestionRun]] = {n: [] for n in names}
    checks: dict[str, list] = {n: [] for n in names}
    checked: dict[tuple, dict | None] = {}
    bar = progress_bar(len(qs) * cfg.repeats, "bench", "q", progress)
    for rep in range(cfg.repeats):
        for qi, q in enumerate(qs):
            shift = (qi + rep) % len(names)
            here = [n for n in names[shift:] + names[:shift]
                    if not (cfg.peer_questions is not None and n in PEER_METHODS and qi >= cfg.peer_questions)]
            seed = None if greedy else stream_seed(cfg.seed, qi, rep)
            for name in here:
                runs[name].append((q, rep, built[name](q.prompt_ids, seed=seed)))
            for name in [n for n in names if n in here and greedy]:
                out = runs[name][-1][2].tokens
                ref = runs["ar"][-1][2].tokens
                key = (q.qid, name, tuple(ref), tuple(out))
                if key not in checked:
                    checked[key] = check_equal(pair.target.model, q.prompt_ids, ref, out)
                    if checked[key] is not None:
                        checks[name].append({"question": q.qid, "repeat": rep, **checked[key]})
            bar.update(1)
    bar.close()
    return runs, checks


def law_checks(pair, qs: list[Question], built: dict[str, Method], cfg: BenchConfig, log,
               progress: bool = True) -> dict[str, LawCheck]:
    """T > 0: each method's distributional check against ar (`realrun.bench.law`): `cfg.law_seeds` runs of
    `LAW_TOKENS` tokens per method on the first question, each method with seeds of its own (independent
    samples; ar's are the reference)."""
    names = list(built)
    samples = {}
    bar = progress_bar(len(names), "law check", "method", progress)
    for i, name in enumerate(names):
        seeds = [stream_seed(cfg.seed, 1_000 + i, s) for s in range(cfg.law_seeds)]
        samples[name] = law_sample(built[name], pair.target.model, qs[0].prompt_ids, seeds, LAW_TOKENS,
                                   cfg.temperature)
        bar.update(1)
    bar.close()
    out = {}
    for name in names:
        check = check_law(samples[name], samples["ar"], is_ar=name == "ar")
        out[name] = check
        if name != "ar":
            log(f"{name}: distributional check {'passed' if check.passed else 'FAILED'} "
                f"(log-prob p = {check.logprob_p if check.logprob_p is None else round(check.logprob_p, 4)}, "
                f"first-cycle token p = {check.token_p if check.token_p is None else round(check.token_p, 4)})")
    return out


def method_summaries(runs: dict[str, list[QuestionRun]], checks: dict[str, list[dict]] | dict[str, LawCheck],
                     settings: dict[str, dict], max_depth: int) -> dict[str, dict]:
    """Per method: `summarize`'s figures, speedups against ar on the same questions (both rates), the
    verdicts (greedy: the mismatches against ar; sampling: the distributional check) and the settings."""
    out = {}
    for name, rs in runs.items():
        s = summarize(rs, max_depth)
        s["speedup"] = paired_ratio(rs, runs["ar"], HEADLINE_RATE, resamples=0)["ratio_of_means"]
        s["decode_speedup"] = paired_ratio(rs, runs["ar"], DECODE_RATE, resamples=0)["ratio_of_means"]
        s["questions"] = len({q.qid for q, _, _ in rs})
        check = checks[name]
        if isinstance(check, LawCheck):
            s["law"] = check.to_json()
            s["lossless"] = check.passed
            s["exact_match"] = None  # sampled outputs differ run to run: equality means nothing
            s["mismatches"] = []
        else:
            s["lossless"] = all(m.get("near_tie") for m in check)
            s["exact_match"] = not check
            s["mismatches"] = check
        s["settings"] = settings[name]
        out[name] = s
    return out
