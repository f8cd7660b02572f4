"""Optuna studies (DESIGN.md, "Optuna tunes the hyperparameters"): PPO + feature hyperparameters, and
the static grid (the strong "EAGLE-3 + grid search" baseline).

- `ppo`: each trial pretrains the depth and size policies in simulation (`ltd_sim.train.pretrain`,
  a short budget) with the trial's `PretrainConfig` and feature settings; its objective is the
  simulated throughput of the best pair on the validation traces. The best `confirm` trials are then
  decoded on the real decoder (held-out prompts) and the one with the best measured decode rate is
  copied to OUT/policies (the best simulated one when nothing is confirmed).
- `grid`: each trial is one static (D, V), D >= 1; its objective is the simulated throughput on the
  train and val traces (never the test fifth). The "no draft" setting (D = 0, V = 0: plain decoding
  with the drafter loaded) joins the ranking without a trial (it has one value), and is always among
  the settings measured, so the grid is never chosen below plain decoding on this device. The best
  `confirm` settings are measured on the real decoder and the one with the best decode rate is
  written to OUT/grid.json (format below), which `ltd bench --grid-from` reads.

Measurements go through `realrun.measure` and report both rates by their names: the decode rate
(prefill excluded; the simulator's quantity, so confirmation selects on it) and the end-to-end rate
(prefill included; the bench's headline).

Storage: default `sqlite:///OUT/optuna.db`; `storage` takes any Optuna storage URL (postgresql://...,
mysql://...) or a path ending `.journal` / `.log` (an `optuna.storages.JournalStorage` over a
`JournalFileBackend`, for a shared file system), so several workers on several machines share one
study (`load_if_exists=True`): run the same command on each.

grid.json: {"format": "ltd-grid", "version": 1, "depth": D, "size": V, "top_k": k, "max_depth": M,
"source": "measured" | "simulated", "selected_by": "decode_tokens_per_s", "simulated_tokens_per_s": x,
"measured_decode_tokens_per_s": y | null, "measured_end_to_end_tokens_per_s": z | null,
"candidates": [{"depth", "size", "simulated_tokens_per_s", "measured_decode_tokens_per_s",
"measured_end_to_end_tokens_per_s"}], "study", "trials", "traces", "cost"}.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ltd_sim.errors import LTDError
from ltd_sim.io import write_json
from ltd_sim.trace import require_sampling, split_prompts
from realrun.measure import DECODE_RATE, END_TO_END_RATE, measure_many
from realrun.simulate import cost_device

KINDS = ("ppo", "grid")
DEFAULT_TRIALS = {"grid": 120, "ppo": 8}  # grid: more than its 8 x 13 settings, so the GridSampler covers it
GRID_FORMAT, GRID_VERSION = "ltd-grid", 2  # 2: both measured rates, named (1 had one "measured_tokens_per_s")
MEASURED_DECODE, MEASURED_END_TO_END = f"measured_{DECODE_RATE}", f"measured_{END_TO_END_RATE}"
NET_ARCHS = {"32x32": (32, 32), "64x64": (64, 64), "128x128": (128, 128), "64x64x64": (64, 64, 64)}
CONTEXT_NORMS = (1024, 4096, 16384)


def open_storage(storage: str | None, out_dir: Path):
    """An Optuna storage from a URL or a journal file path (default: SQLite in the run folder)."""
    import optuna

    if storage is None:
        storage = f"sqlite:///{(out_dir / 'optuna.db').resolve()}"
    if storage.endswith((".journal", ".log")) and "://" not in storage:
        from optuna.storages.journal import JournalFileBackend

        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    if "://" not in storage:
        raise LTDError(f"--storage must be an Optuna storage URL (sqlite:///F, postgresql://...) or a path ending "
                       f".journal or .log, got {storage!r}")
    kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}
    return _retry(lambda: optuna.storages.RDBStorage(storage, engine_kwargs=kwargs),
                  f"cannot open the Optuna storage {storage!r}")


def _retry(fn, what: str, attempts: int = 6):
    """Workers starting together race to create the schema or the study; the loser retries."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 (sqlalchemy / driver errors of many kinds)
            if i == attempts - 1:
                raise LTDError(f"{what}: {str(exc).splitlines()[0]}") from None
            time.sleep(0.3 * (i + 1))


def confirm_prompts(prompts: list) -> list:
    """The prompts confirmation decodes: the validation fifth (`ltd_sim.trace.split_of`) of 5 or more, else all."""
    return split_prompts(prompts)[1] if len(prompts) >= 5 else list(prompts)


class _Tables:
    """Train / val / train+val simulator tables, built once per feature setting in this worker."""

    def __init__(self, traces, cost_path, calibration: str | None = None):
        from realrun.simulate import load_calibration, load_cost
        from ltd_sim.trace import load_traces

        self.cost = load_cost(cost_path)
        self.calibration = load_calibration(calibration)  # n-gram traces: re-scored as the decoder scores
        self.seqs = {s: load_traces(traces, s) for s in ("train", "val")}
        self._built: dict = {}

    def get(self, split: str, context_norm: int | None = None):
        from ltd_sim.features import spec_for
        from ltd_sim.sim import SimTables

        key = (split, context_norm)
        if key not in self._built:
            seqs = self.seqs["train"] + self.seqs["val"] if split == "trainval" else self.seqs[split]
            spec = None
            if context_norm is not None:
                from ltd_sim import defaults

                spec = spec_for(seqs[0].has_ngram, top_k=seqs[0].top_k, max_depth=seqs[0].max_depth,
                                size_grid=tuple(defaults.SIZE_GRID), context_norm=int(context_norm))
            self._built[key] = SimTables.build(seqs, self.cost, spec=spec, calibration=self.calibration)
        return self._built[key]


def suggest_pretrain(trial, trial_steps: int):
    """The PPO and feature search space: (PretrainConfig, context_norm)."""
    from ltd_sim.train import PretrainConfig

    n_steps = trial.suggest_categorical("n_steps", [64, 128, 256])
    cfg = PretrainConfig(
        n_steps=n_steps,
        batch_size=trial.suggest_categorical("batch_size", [256, 512, 1024]),
        n_epochs=trial.suggest_int("n_epochs", 2, 8),
        learning_rate=trial.suggest_float("learning_rate", 1e-4, 2e-3, log=True),
        gamma_depth=trial.suggest_categorical("gamma_depth", [0.95, 0.99, 1.0]),
        gamma_size=trial.suggest_categorical("gamma_size", [0.0, 0.5, 0.9]),
        gae_lambda=trial.suggest_float("gae_lambda", 0.8, 1.0),
        clip_range=trial.suggest_float("clip_range", 0.1, 0.3),
        ent_coef=trial.suggest_float("ent_coef", 0.0, 0.01),
        net_arch=NET_ARCHS[trial.suggest_categorical("net_arch", list(NET_ARCHS))],
        stage1_steps=trial_steps, stage2_steps=max(trial_steps // 2, 1), rounds=1, seed=trial.number)
    return cfg, trial.suggest_categorical("context_norm", list(CONTEXT_NORMS))


def check_options(kind: str, trials: int | None, confirm: int, trial_steps: int, has_decoder: bool) -> int:
    """Every tune option checked, before any model loads; returns the trial count (`DEFAULT_TRIALS` when
    None). `has_decoder`: a draft model and confirmation prompts are given."""
    if kind not in KINDS:
        raise LTDError(f"unknown study kind {kind!r}; choose one of {', '.join(KINDS)}")
    trials = DEFAULT_TRIALS[kind] if trials is None else trials
    if trials < 1:
        raise LTDError(f"--trials must be at least 1, got {trials}")
    if confirm < 0:
        raise LTDError(f"--confirm must be >= 0, got {confirm}")
    if confirm and not has_decoder:
        raise LTDError("--confirm needs the real decoder: --draft (and --target) and --prompts")
    if kind == "ppo" and trial_steps < 64:
        raise LTDError(f"--trial-steps must be at least 64, got {trial_steps}")
    return trials


def run_tune(kind: str, traces, cost, out_dir, trials: int | None = None, storage: str | None = None,
             study: str | None = None, confirm: int = 0, pair=None, prompts=None, trial_steps: int = 20_000, max_new_tokens: int = 64,
             seed: int | None = None, log=print, sampling=None, calibration: str | None = None) -> dict:
    """Run `trials` trials (None: `DEFAULT_TRIALS`) of the `kind` study in this worker (others may share the study), then
    confirm the best `confirm` on the real decoder (`pair`, `prompts`: token-id sequences, of which
    `confirm_prompts` are decoded). The confirmation decodes at the traces' sampling setting; `sampling`
    (a `ltd_sim.trace.Sampling`), when given, must be that setting. `calibration`: an n-gram calibration
    file the traces' n-gram branches are re-scored with (the one the decoder uses). Writes
    OUT/tune_KIND.json (and OUT/grid.json or OUT/policies) and returns its content."""
    import optuna

    trials = check_options(kind, trials, confirm, trial_steps,
                           has_decoder=pair is not None and pair.drafter is not None and bool(prompts))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = _Tables(traces, cost, calibration)  # bad traces or cost fail here, before the study opens
    traced_ngram = tables.seqs["train"][0].has_ngram
    if pair is not None and pair.drafter is not None and (getattr(pair, "ngram", None) is not None) != traced_ngram:
        raise LTDError(f"the traces in {traces} were recorded {'with' if traced_ngram else 'without'} n-gram branches; "
                       f"confirm with a decoder {'with' if traced_ngram else 'without'} them (--ngram)")
    name = study or f"ltd-{kind}"
    store = open_storage(storage, out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    tv = tables.get("trainval")
    if sampling is not None:
        require_sampling(tv.sampling, sampling, f"--traces {traces}")
    sampling = tv.sampling[0]
    if len(tv.sampling) > 1 and confirm:
        raise LTDError(f"--traces {traces} mixes sampling settings; --confirm decodes at one (record one setting)")
    sampler = optuna.samplers.TPESampler(seed=seed)
    if kind == "grid" and trials >= tv.max_depth * len(tv.grid):  # enough trials: the whole grid, shared
        sampler = optuna.samplers.GridSampler({"depth": list(range(1, tv.max_depth + 1)), "size": list(tv.grid)},
                                              seed=seed)
    st = _retry(lambda: optuna.create_study(study_name=name, storage=store, direction="maximize", sampler=sampler,
                                            load_if_exists=True), f"cannot open study {name!r}")

    device = cost_device(str(cost))  # what the trials' policies record as the device they were made for

    def objective(trial):
        trial.set_user_attr("worker", worker)
        if kind == "grid":
            from ltd_sim.sim import simulate_static

            depth = trial.suggest_int("depth", 1, tv.max_depth)
            size = trial.suggest_categorical("size", list(tv.grid))
            return simulate_static(tv, depth, tv.grid.index(size)).tokens_per_s
        from ltd_sim.train import pretrain

        cfg, norm = suggest_pretrain(trial, trial_steps)
        tdir = out / "trials" / f"trial_{trial.number:05d}"
        res = pretrain(tables.get("train", norm), tables.get("val", norm), tdir, cfg, log=lambda m: None,
                       extra_spec={"traces": str(traces), "cost": str(cost), "optuna_trial": trial.number,
                                   "device": device})
        trial.set_user_attr("policies", str(tdir / "policies"))
        trial.set_user_attr("val_best_static_tokens_per_s", res.val_best_static)
        return res.val_tokens_per_s

    t0 = time.perf_counter()
    st.optimize(objective, n_trials=trials, show_progress_bar=False)
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise LTDError(f"study {name!r} has no completed trial")
    ranked = sorted(done, key=lambda t: t.value, reverse=True)
    log(f"tune {kind}: {len(done)} trials in study {name!r} ({trials} by this worker in "
        f"{time.perf_counter() - t0:.1f}s); best simulated {ranked[0].value:.2f} tok/s {ranked[0].params}")
    summary = {"kind": kind, "study": name, "trials": len(done), "best_trial": ranked[0].number,
               "best_params": ranked[0].params, "best_value": ranked[0].value,
               "workers": sorted({t.user_attrs.get("worker", "?") for t in done}),
               "traces": str(traces), "cost": str(cost), "sampling": [x.to_json() for x in tv.sampling]}
    encoded = confirm_prompts(list(prompts)) if confirm else []
    if kind == "grid":
        summary.update(_finish_grid(ranked, tv, confirm, pair, encoded, max_new_tokens, out, summary, log, sampling))
    else:
        summary.update(_finish_ppo(ranked, confirm, pair, encoded, max_new_tokens, out, log, sampling))
    write_json(out / f"tune_{kind}.json", summary)
    return summary


def _finish_grid(ranked, tv, confirm, pair, prompts, max_new, out: Path, summary: dict, log, sampling) -> dict:
    from ltd_sim.sim import NO_DRAFT, simulate_static

    seen, candidates = set(), []
    for t in ranked:
        key = (int(t.params["depth"]), int(t.params["size"]))
        if key not in seen:
            seen.add(key)
            candidates.append({"depth": key[0], "size": key[1], "simulated_tokens_per_s": t.value,
                               MEASURED_DECODE: None, MEASURED_END_TO_END: None})
    no_draft = {"depth": NO_DRAFT[0], "size": NO_DRAFT[1], "simulated_tokens_per_s":
                simulate_static(tv, 0, 0).tokens_per_s, MEASURED_DECODE: None, MEASURED_END_TO_END: None}
    candidates = sorted(candidates + [no_draft], key=lambda c: -c["simulated_tokens_per_s"])[:max(confirm, 1)]
    if confirm and no_draft not in candidates:  # measured too: the grid never picks below plain decoding
        candidates.append(no_draft)
    if confirm:  # the candidates measured side by side, interleaved prompt by prompt
        from ltd_sim.control import StaticDepth, StaticSize
        from realrun.decoder import DecodeConfig

        cfg = DecodeConfig(max_new_tokens=max_new, top_k=tv.top_k, max_depth=tv.max_depth,
                           temperature=sampling.temperature, top_p=sampling.top_p, seed=0)
        runs = measure_many(pair, prompts, [(StaticDepth(c["depth"]), StaticSize(c["size"])) for c in candidates], cfg,
                            drafted=[c["depth"] > 0 for c in candidates])
        for c, r in zip(candidates, runs):
            c[MEASURED_DECODE], c[MEASURED_END_TO_END] = r.decode_tokens_per_s, r.end_to_end_tokens_per_s
            log(f"  confirm D={c['depth']} V={c['size']}: simulated {c['simulated_tokens_per_s']:.2f}, measured "
                f"{r.decode_tokens_per_s:.2f} tok/s decode rate, {r.end_to_end_tokens_per_s:.2f} end-to-end")
    measured = [c for c in candidates if c[MEASURED_DECODE] is not None]
    chosen = max(measured, key=lambda c: c[MEASURED_DECODE]) if measured else candidates[0]
    grid = {"format": GRID_FORMAT, "version": GRID_VERSION, "depth": chosen["depth"], "size": chosen["size"],
            "top_k": tv.top_k, "max_depth": tv.max_depth, "source": "measured" if measured else "simulated",
            "selected_by": DECODE_RATE, "simulated_tokens_per_s": chosen["simulated_tokens_per_s"],
            MEASURED_DECODE: chosen[MEASURED_DECODE], MEASURED_END_TO_END: chosen[MEASURED_END_TO_END],
            "candidates": candidates,
            "study": summary["study"], "trials": summary["trials"], "traces": summary["traces"],
            "cost": summary["cost"], "sampling": summary["sampling"]}
    write_json(out / "grid.json", grid)
    log(f"tune grid: D={grid['depth']} V={grid['size']} ({grid['source']}) -> {out / 'grid.json'}")
    return {"grid": str(out / "grid.json"), "chosen": {"depth": chosen["depth"], "size": chosen["size"]},
            "confirmed": measured}


def _finish_ppo(ranked, confirm, pair, prompts, max_new, out: Path, log, sampling) -> dict:
    from ltd_sim.policy import PolicyController, load_policies, save_policies
    from realrun.decoder import DecodeConfig

    ranked = [t for t in ranked if Path(t.user_attrs.get("policies", "")).is_dir()]  # this machine's trials
    if not ranked:
        return {"policies": None, "confirmed": []}
    confirmed = []
    if confirm:  # the best trials' policies measured side by side, interleaved prompt by prompt
        ctrls = [PolicyController(t.user_attrs["policies"]) for t in ranked[:confirm]]
        cfg = DecodeConfig(max_new_tokens=max_new, top_k=ctrls[0].spec.top_k, max_depth=ctrls[0].spec.max_depth,
                           temperature=sampling.temperature, top_p=sampling.top_p, seed=0)
        for t, res in zip(ranked, measure_many(pair, prompts, [(c, c) for c in ctrls], cfg)):
            confirmed.append({"trial": t.number, "params": t.params, "simulated_tokens_per_s": t.value,
                              MEASURED_DECODE: res.decode_tokens_per_s,
                              MEASURED_END_TO_END: res.end_to_end_tokens_per_s,
                              "policy_fraction": res.policy_fraction})
            log(f"  confirm trial {t.number}: simulated {t.value:.2f}, measured {res.decode_tokens_per_s:.2f} "
                f"tok/s decode rate, {res.end_to_end_tokens_per_s:.2f} end-to-end")
    best = max(confirmed, key=lambda c: c[MEASURED_DECODE])["trial"] if confirmed else ranked[0].number
    src = next(t for t in ranked if t.number == best).user_attrs["policies"]
    chosen = load_policies(src)
    save_policies(out / "policies", chosen.depth_model, chosen.size_model, chosen.spec, {**chosen.extras(), "tune": {"trial": best, "confirmed": bool(confirmed)}})
    log(f"tune ppo: trial {best} -> {out / 'policies'}")
    return {"policies": str(out / "policies"), "chosen_trial": best, "confirmed": confirmed}
