"""`ltd pipeline`: the whole job on one pair of models, resumable stage by stage.

    draft head -> profile -> trace -> pretrain (simulator) -> sim eval -> finetune (real decoder) -> bench -> report

With `--ngram` (docs/ngram.md, "The pipeline with --ngram") the drafter is the head plus n-gram branches:
the traces record the hybrid trees, a `calibrate` stage after `trace` fits the n-gram scores on the
train split (RUN/ngram_calibration.json), and every later stage simulates and decodes with that fit.

Each stage writes its artifact under the run directory and a marker `stages/NAME.json` holding the
stage's configuration (its budget, the digests of the artifacts it read, and the device setting it
ran on: torch threads and dtype). A stage whose marker matches is skipped, so a rerun after an
interruption continues where it stopped, and a stage reruns when anything upstream changed or when
the run's device differs from the one the stage ran on (rerun, never reused). Stages that take long resume inside themselves too (the draft build,
trace recording per prompt, PPO phases).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ltd_sim.io import read_json, write_json
from ltd_sim.errors import LTDError
from ltd_sim.trace import Sampling
from realrun.ngram import NgramConfig
from realrun.pipeline_report import write_report

CALIBRATION_FILE = "ngram_calibration.json"  # the n-gram calibration a --ngram run fits on its traces


@dataclass(frozen=True)
class StageBudget:
    """How much work each stage may do. `full` is the README's main job; `quick` a first look."""

    name: str
    draft_minutes: float  # only when the head must be built
    profile_preset: str
    trace_prompts: int
    trace_tokens: int
    stage1_steps: int
    stage2_steps: int
    rounds: int
    finetune_minutes: float
    grid_trials: int
    bench_questions: int
    bench_tokens: int
    bench_repeats: int
    bench_peer_questions: int  # eagle3 and hf-assisted (slow here) run on this many of the questions
    bench_law_seeds: int = 100  # T > 0: short runs per method for the bench's distributional check


SAMPLED_TRACE_SAMPLES = 2  # T > 0: continuations recorded per trace prompt

BUDGETS = {
    "full": StageBudget("full", draft_minutes=30, profile_preset="quick", trace_prompts=25, trace_tokens=96,
                   stage1_steps=100_000, stage2_steps=100_000, rounds=2, finetune_minutes=1.5,
                   grid_trials=104, bench_questions=16, bench_tokens=64, bench_repeats=1,
                   bench_peer_questions=2),
    "quick": StageBudget("quick", draft_minutes=10, profile_preset="quick", trace_prompts=12, trace_tokens=64,
                    stage1_steps=30_000, stage2_steps=20_000, rounds=1, finetune_minutes=0.5,
                    grid_trials=40, bench_questions=4, bench_tokens=64, bench_repeats=1,
                    bench_peer_questions=2),
    # seconds, for the end-to-end test on tiny models
    "tiny": StageBudget("tiny", draft_minutes=0.4, profile_preset="tiny", trace_prompts=5, trace_tokens=16,
                   stage1_steps=1024, stage2_steps=512, rounds=1, finetune_minutes=0.15,
                   grid_trials=8, bench_questions=2, bench_tokens=12, bench_repeats=1,
                   bench_peer_questions=1, bench_law_seeds=20),
}


def digest(path: Path) -> str:
    """Content digest of a file or of every file under a folder (what a downstream stage read)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent if path.is_file() else path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Pipeline:
    """One run folder's stages, in order; `run()` runs (or skips) each and writes the report."""

    run_dir: Path
    budget: StageBudget
    target: str | None = None
    draft: str | None = None  # an EAGLE-3 head to use instead of building/reusing the default one
    log: Callable[[str], None] = print
    summaries: dict = field(default_factory=dict)
    head: Path | None = None  # the EAGLE-3 head every stage uses (set by `draft_head`)
    dtype: str | None = None  # the target's dtype (None/"auto": float32 on CPU); threads: the process's
    sampling: Sampling = Sampling()  # every stage traces, tunes, fine-tunes and benches at this setting
    ngram: NgramConfig | None = None  # --ngram: n-gram branches join the head's tree (calibration: unset)
    _pair: object = None  # the real decoder's models, loaded once for the stages that run it

    @property
    def device(self) -> dict:
        """The device setting every stage runs on, in its marker: a change reruns the stage."""
        import torch

        from profiler.device import dtype_name

        return {"threads": torch.get_num_threads(), "dtype": dtype_name(self.dtype)}

    @property
    def sampling_marker(self) -> dict:
        """The sampling setting in a stage's marker (nothing when greedy: greedy runs' markers stay valid)."""
        return {} if self.sampling.greedy else {"sampling": self.sampling.to_json()}

    @property
    def ngram_marker(self) -> dict:
        """The n-gram settings in a stage's marker (nothing without --ngram: those runs' markers stay valid)."""
        return {} if self.ngram is None else {"ngram": ngram_settings(self.ngram), "prompt_set": "ngram"}

    @property
    def calibration_path(self) -> Path:
        return self.run_dir / CALIBRATION_FILE

    def calibration_marker(self) -> dict:
        """The fitted calibration's digest for the stages that simulate or decode with it (nothing
        without --ngram)."""
        return {} if self.ngram is None else {"calibration": digest(self.calibration_path)}

    @property
    def calibration(self) -> str | None:
        """The fitted calibration's path for the simulator (None without --ngram)."""
        return None if self.ngram is None else str(self.calibration_path)

    @property
    def trace_samples(self) -> int:
        """Continuations recorded per prompt: one greedy; at T > 0 `SAMPLED_TRACE_SAMPLES` (a sampled
        acceptance is noisier, and the prompts stay few)."""
        return 1 if self.sampling.greedy else SAMPLED_TRACE_SAMPLES

    @property
    def cost_path(self) -> Path:
        return self.run_dir / "cost_model.json"

    @property
    def trace_dir(self) -> Path:
        return self.run_dir / "traces"

    def stage(self, name: str, config: dict, fn: Callable[[], dict], work: Path | None = None) -> dict:
        """Run `fn` unless `stages/NAME.json` says it already ran with this `config`; returns its summary.

        `work`: the stage's resumable folder (traces, PPO state, an Optuna study). An interrupted stage
        resumes from it; but when the stage last finished with another configuration, the folder holds
        a finished run of the old inputs, which the stage's own resumption would take as done: it is
        moved aside to `WORK.stale` (the previous stale copy dropped) and the stage starts afresh."""
        config = json.loads(json.dumps(config))  # compare as stored (tuples become lists)
        marker = self.run_dir / "stages" / f"{name}.json"
        if marker.is_file():
            try:
                done = json.loads(marker.read_text())
            except ValueError:
                done = {}
            if done.get("config") == config:
                self.log(f"[{name}] current, skipped ({marker})")
                self.summaries[name] = done["summary"] | {"seconds": done.get("seconds", 0.0), "skipped": True}
                return done["summary"]
            if work is not None and work.exists():
                stale = work.with_name(work.name + ".stale")
                shutil.rmtree(stale, ignore_errors=True)
                work.rename(stale)
                self.log(f"[{name}] inputs changed since it last ran: its old work moved to {stale}")
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        summary = fn()
        seconds = time.perf_counter() - t0
        write_json(marker, {"config": config, "summary": summary, "seconds": seconds})
        self.summaries[name] = summary | {"seconds": seconds, "skipped": False}
        self.log(f"[{name}] done in {seconds:.0f} s")
        return summary

    def run(self) -> dict:
        """Every stage in order: a stage reruns when its budget or anything it read changed."""
        b = self.budget
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.head = self.draft_head()
        head_digest = digest(self.head / "model.safetensors")
        dev = self.device
        ng = self.ngram_marker  # the profile times the n-gram phase at the run's settings
        self.stage("profile", {"preset": b.profile_preset, "head": head_digest, "device": dev, **ng}, self.profile)
        # traces depend on the dtype (numerics) and the sampling setting, not on the thread count
        sm = self.sampling_marker
        self.stage("trace", {"prompts": b.trace_prompts, "tokens": b.trace_tokens, "head": head_digest,
                             "dtype": dev["dtype"], **sm, **ng}, self.trace, work=self.trace_dir)
        if self.ngram is not None:  # n-gram scores fitted on the train split, used by every later stage
            self.stage("calibrate", {"traces": digest(self.trace_dir)}, self.calibrate)
        inputs = {"traces": digest(self.trace_dir), "cost": digest(self.cost_path), **self.calibration_marker()}
        sim_policy = Path(self.stage("pretrain", {"budget": asdict(b), **inputs}, self.pretrain,
                                     work=self.run_dir / "pretrain")["policies"])
        self.stage("sim_eval", {"policies": digest(sim_policy), **inputs}, lambda: self.sim_eval(sim_policy))
        grid = grid_setting(self.stage("grid", {"trials": b.grid_trials, "device": dev, **inputs, **sm}, self.grid,
                                       work=self.run_dir / "tune"))
        ltd_policy = self.run_dir / "finetune" / "policies"
        decoded = {**sm, **ng, **self.calibration_marker()}  # what the real decoder's pair drafts with
        self.stage("finetune", {"minutes": b.finetune_minutes, "policies": digest(sim_policy), "device": dev,
                                **decoded}, lambda: self.finetune(sim_policy), work=self.run_dir / "finetune")
        self.stage("bench", {"budget": asdict(b), "ltd": digest(ltd_policy), "sim": digest(sim_policy),
                             "grid": list(grid), "device": dev, **decoded},
                   lambda: self.bench(sim_policy, ltd_policy, grid))
        write_report(self.run_dir, b, self.summaries, self.sampling, self.ngram)
        return self.summaries

    # -- stages ---------------------------------------------------------------------------------

    def draft_head(self) -> Path:
        """--draft, else the cached default head, else a head built now (resumable)."""
        from realrun.models import default_draft_dir

        if self.draft is not None:
            head = Path(self.draft)
            if not (head / "config.json").is_file():
                raise LTDError(f"no EAGLE-3 head at --draft {head}")
            self.summaries["draft"] = {"head": str(head), "built": False, "seconds": 0.0, "skipped": True}
            return head
        head = default_draft_dir() if self.target in (None, "default") else None
        if head is not None and (head / "config.json").is_file():
            self.summaries["draft"] = {"head": str(head), "built": False, "seconds": 0.0, "skipped": True}
            self.log(f"[draft] cached head at {head}")
            return head
        from realrun.draft_head import BuildConfig, build

        t0 = time.perf_counter()
        report = build(self.target, cfg=BuildConfig(minutes=self.budget.draft_minutes), resume=True, log=self.log)
        out = Path(report.get("out") or default_draft_dir())
        self.summaries["draft"] = {"head": str(out), "built": True, "seconds": time.perf_counter() - t0,
                                   "skipped": False}
        return out

    def profile(self) -> dict:
        from realrun.probes import run_profile

        model = run_profile(self.target, str(self.head), "eagle3", dtype=self.dtype,
                            preset=self.budget.profile_preset, out=self.run_dir, force=True, log=self.log,
                            ngram=self.ngram).model
        return {"cost_model": str(self.cost_path), "cv_error": model.cv_errors()}

    def trace(self) -> dict:
        from realrun.loading import load_pair
        from realrun.models import encode_prompt
        from realrun.record import record_prompts

        # n-gram nodes scored with the prior: the calibration is fitted on these very traces (the
        # simulator re-scores them exactly, the recorded trees' shapes do not depend on the scores)
        pair = load_pair(self.target, str(self.head), "eagle3", dtype=self.dtype, ngram=self.ngram)
        return record_prompts(pair, self.trace_prompts(pair), self.trace_dir,
                              lambda t: encode_prompt(pair.target.tokenizer, t), self.budget.trace_tokens,
                              info=trace_origin(pair, self.head), sampling=self.sampling,
                              samples=self.trace_samples, seed=0)

    def calibrate(self) -> dict:
        """--ngram: r(m, i) measured on the train split's hybrid traces (docs/ngram.md)."""
        from realrun.simulate import fit_ngram_calibration

        return fit_ngram_calibration(str(self.trace_dir), self.calibration_path, split="train")

    def pretrain(self) -> dict:
        from ltd_sim.train import PretrainConfig, pretrain
        from realrun.simulate import cost_device, load_tables, ngram_spec

        b = self.budget
        traces, cost, cal = str(self.trace_dir), str(self.cost_path), self.calibration
        cfg = PretrainConfig(stage1_steps=b.stage1_steps, stage2_steps=b.stage2_steps, rounds=b.rounds)
        result = pretrain(load_tables(traces, cost, "train", calibration=cal),
                          load_tables(traces, cost, "val", calibration=cal),
                          self.run_dir / "pretrain", cfg, log=self.log,
                          extra_spec={"traces": traces, "cost": cost, "device": cost_device(cost),
                                      **ngram_spec(traces, cal)})
        return {"policies": str(result.out_dir / "policies"), "best_phase": result.best_phase,
                "val_tokens_per_s": result.val_tokens_per_s, "val_best_static": result.val_best_static}

    def sim_eval(self, sim_policy: Path) -> dict:
        from realrun.simulate import run_sim_eval

        table = run_sim_eval(str(self.trace_dir), str(self.cost_path), "test", str(sim_policy),
                             calibration=self.calibration)
        write_json(self.run_dir / "sim_eval.json", table)
        return table

    def pair(self):
        """The real decoder's target and head, loaded on first use and kept for the later stages; with
        --ngram its n-gram nodes are scored with the calibration the `calibrate` stage fitted."""
        if self._pair is None:
            from dataclasses import replace

            from realrun.loading import load_pair

            ngram = None if self.ngram is None else replace(self.ngram, calibration=self.calibration)
            self._pair = load_pair(self.target, str(self.head), "eagle3", dtype=self.dtype, ngram=ngram)
        return self._pair

    def encoded_trace_prompts(self) -> list[list[int]]:
        from realrun.measure import encode_prompts

        return encode_prompts(self.pair(), self.trace_prompts(self.pair()))

    def trace_prompts(self, pair) -> list[dict]:
        """The policies' prompts (traces, grid confirmation, fine-tuning): with --ngram, half of them
        long-input tasks (copy-heavy text, what n-gram branches are for) that leave room in the target's
        context for the traced tokens."""
        from realrun.measure import encode_prompts
        from realrun.prompts import default_trace_prompts, ngram_trace_prompts

        n, tokens = self.budget.trace_prompts, self.budget.trace_tokens
        if self.ngram is None:
            return default_trace_prompts(n)
        room = pair.context_limit - tokens - 1
        return ngram_trace_prompts(n, fits=lambda p: len(encode_prompts(pair, [p])[0]) < room)

    def grid(self) -> dict:
        """Optuna over the static (D, V) grid in simulation, the best 3 confirmed on the real decoder:
        the strong "EAGLE-3 + grid search" baseline."""
        from realrun.tune import run_tune

        return run_tune("grid", str(self.trace_dir), str(self.cost_path), self.run_dir / "tune",
                        trials=self.budget.grid_trials, confirm=3, pair=self.pair(),
                        prompts=self.encoded_trace_prompts(), max_new_tokens=self.budget.trace_tokens, log=self.log,
                        sampling=self.sampling, calibration=self.calibration)

    def finetune(self, sim_policy: Path) -> dict:
        from realrun.finetune import FinetuneConfig, run_finetune

        cfg = FinetuneConfig(temperature=self.sampling.temperature, top_p=self.sampling.top_p)
        return run_finetune(self.pair(), sim_policy, self.run_dir / "finetune", self.encoded_trace_prompts(),
                            minutes=self.budget.finetune_minutes, cfg=cfg, resume=True, log=self.log)

    def bench(self, sim_policy: Path, ltd_policy: Path, grid: tuple[int, int]) -> dict:
        from realrun.bench import BenchConfig, encode_questions, run_bench
        from realrun.prompts import default_bench_prompts

        b = self.budget
        questions = encode_questions(default_bench_prompts(b.bench_questions), self.pair().target.tokenizer)
        # with --ngram, transformers' prompt lookup is the external n-gram peer (it is greedy only)
        peer = ("hf-prompt-lookup",) if self.ngram is not None and self.sampling.greedy else ()
        cfg = BenchConfig(methods=("ar", "eagle3", "grid", "ltd-sim", "ltd", "hf-assisted") + peer,
                          policy_dir=ltd_policy, sim_policy_dir=sim_policy, grid_setting=grid,
                          max_new_tokens=b.bench_tokens, repeats=b.bench_repeats,
                          peer_questions=b.bench_peer_questions, temperature=self.sampling.temperature,
                          top_p=self.sampling.top_p, law_seeds=b.bench_law_seeds)
        report = run_bench(self.pair(), questions, cfg, out_dir=self.run_dir / "bench", log=self.log)
        return {"methods": report["methods"], "paired": report["paired"],
                "headline_rate": report["settings"]["headline_rate"]}


def trace_origin(pair, head: Path) -> dict:
    """What traces depend on, for the manifest: the target's and the drafter's weight digests and the
    dtype. `ltd port` reuses traces only where all three match."""
    from profiler.device import dtype_name

    param = next(pair.target.model.parameters())
    return {"target_digest": weights_digest(Path(pair.target.path)), "draft_digest": digest(head / "model.safetensors"),
            "dtype": dtype_name(str(param.dtype))}


def weights_digest(model_dir: Path) -> str:
    """Digest of a model folder's weights and config (what its greedy outputs depend on)."""
    files = sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(digest(f).encode())
    return h.hexdigest()[:16]


def ngram_settings(cfg: NgramConfig) -> dict:
    """What shapes a run's n-gram branches (its stage markers and report): the lengths, the branch
    count and the corpus by content digest (None: no corpus)."""
    corpus = None
    if cfg.corpus is not None:
        corpus = hashlib.sha256(Path(cfg.corpus).read_bytes()).hexdigest()[:16]
    return {"ngram_min": cfg.ngram_min, "ngram_max": cfg.ngram_max, "max_branches": cfg.max_branches,
            "corpus": corpus}


def grid_setting(summary: dict) -> tuple[int, int]:
    """The grid baseline's (D, V): the best setting measured on the real decoder, else simulated."""
    chosen = summary.get("chosen") or summary.get("best_params")
    return int(chosen["depth"]), int(chosen["size"])


def check_run_sampling(run_dir: Path, sampling: Sampling) -> None:
    """A run folder keeps the sampling setting it was made at (its traces, policies and bench belong to
    it): another setting is refused in one line, before anything is touched."""
    marker = run_dir / "stages" / "sampling.json"
    made_at = Sampling.from_json(read_json(marker, "the run's sampling marker")) if marker.is_file() else None
    if made_at is None and (run_dir / "stages" / "trace.json").is_file():
        made_at = Sampling()  # a run made before sampling settings existed: greedy
    if made_at is not None and made_at != sampling:
        raise LTDError(f"{run_dir} was made at {made_at.label()}; use another --out for a run at {sampling.label()}")
    write_json(marker, sampling.to_json())


def check_run_ngram(run_dir: Path, ngram: NgramConfig | None) -> None:
    """A run folder made with --ngram (hybrid traces, ngram_v1 policies) continues only with it, and one
    made without only without: the other is refused in one line, before anything is touched. Other
    n-gram lengths or corpus are fine (the trace stage and the stages after it rerun)."""
    marker = run_dir / "stages" / "ngram.json"
    if marker.is_file():
        made_with = read_json(marker, "the run's n-gram marker").get("ngram") is not None
    else:  # a run made before this marker existed had no n-gram branches
        made_with = False if (run_dir / "stages" / "trace.json").is_file() else None
    if made_with is not None and made_with != (ngram is not None):
        raise LTDError(f"{run_dir} was made {'with' if made_with else 'without'} --ngram; use another --out "
                       f"for a run {'without' if made_with else 'with'} it")


def run_pipeline(run_dir: Path, budget_name: str, target: str | None = None, draft: str | None = None,
                 dtype: str | None = None, sampling: Sampling = Sampling(), ngram: NgramConfig | None = None) -> Path:
    """Run (or resume) every stage in `run_dir` at the named budget, on this process's threads (see
    `profiler.device.pin_threads`) and `dtype`; returns the report's path. A run folder keeps the budget
    it was made with, its sampling setting, and whether it has n-gram branches (`ngram`: --ngram's
    settings; its calibration is the run's own, fitted by the `calibrate` stage)."""
    budget = BUDGETS[budget_name]
    if run_dir.exists() and not run_dir.is_dir():
        raise LTDError(f"--out {run_dir} exists and is not a directory")
    if ngram is not None:
        from realrun.ngram import read_inputs

        if ngram.calibration is not None:
            raise LTDError("ltd pipeline fits its own n-gram calibration on its traces: drop --ngram-calibration")
        read_inputs(ngram)  # bad lengths or a bad corpus fail here, before the folder is touched
    marker = run_dir / "stages" / "budget.json"
    if marker.is_file():
        made_with = read_json(marker, "the run's budget marker").get("name")
        if made_with != budget.name:
            raise LTDError(f"{run_dir} was made with the {made_with!r} budget; use another --out for a "
                           f"{budget.name!r} run")
    check_run_ngram(run_dir, ngram)
    check_run_sampling(run_dir, sampling)
    write_json(marker, asdict(budget))
    write_json(run_dir / "stages" / "ngram.json", {"ngram": None if ngram is None else ngram_settings(ngram)})
    Pipeline(run_dir, budget, target, draft, dtype=dtype, sampling=sampling, ngram=ngram).run()
    return run_dir / "report.md"
