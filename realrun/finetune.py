"""Fine-tune the simulator's LTD policies on the real decoder (PPO, stable-baselines3; DESIGN.md).

`RealDecoderEnv` is a gymnasium env over the real decoder: `realrun.decoder.generate` runs in a
worker thread with a *bridge* controller at the control point being trained, which hands the
observation (the one feature function, `ltd_sim.features.observe`) to the env and waits for the
action; the other control point is the frozen partner policy. The two threads strictly alternate,
so PPO's own work never overlaps decoding, and the time the decoder spends waiting in the bridge is
subtracted from the cycle's measured time.

- depth env: one step = one draft-step decision (CONTINUE/STOP) after steps 1.. max_depth - 1, and
  (feature set paper_v2) the decision before step 1, where STOP is "no draft" (D = 0);
- size env: one step = one cycle's V (an index into the policy's size grid);
- an episode is one generation (one training prompt, greedy), as in the simulator.

Reward, per cycle (committing c tokens in t measured seconds), as in pretraining (`ltd_sim.envs`):
"time" (default) `c - rate * t`, an episode's return is `L - rate * T`: maximising it minimises the
generation's measured time, i.e. maximises its real throughput; "throughput" (the paper's) `c / t /
rate`. The reward kind is the one the policies were pretrained with (their spec.json). `rate` is
the starting policies' measured decode rate on the first training prompts (pretraining uses the best
static throughput on the training traces: a reference near what a good policy achieves; with a
fixed generation length any positive rate gives the same optimum).

`run_finetune` continues PPO from the pretrained policies: rounds of (depth phase, size phase), the
partner frozen in each, as pretraining's stage 2. After every phase both policies are validated by
real decoding of the held-out prompts (their decode rate, prefill excluded: `realrun.measure`, the
simulator's quantity and what the policies control); the best pair so far, the starting
pair included, is kept in `OUT/policies/`. Every PPO update leaves an atomic checkpoint
(`OUT/checkpoints/current/`) and `OUT/state.json`, so an interrupted run resumes after its last
update.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ltd_sim.io import write_json
from ltd_sim.envs import REWARDS
from ltd_sim.errors import LTDError
from ltd_sim.features import FeatureSpec, observe, pre_draft_tree
from ltd_sim.policy import (STOP, Policies, PolicyController, load_policies, sampling_mismatch, save_policies,
                             trained_sampling)
from ltd_sim.trace import Sampling, split_prompts
from realrun.decoder import DecodeConfig, generate
from realrun.measure import DECODE_RATE, measure, measure_many
from realrun.progress import progress_bar

KINDS = ("depth", "size")
RATE_PROMPTS = 2  # training prompts whose measured decode rate (starting policies) is the reward's rate
DEFAULT_STEPS = 256  # env steps when neither --steps nor --minutes is given


def pair_device(pair) -> dict:
    """The device the pair decodes on (hardware, threads, dtype, torch): what policies record."""
    from profiler.model import device_of, make_fingerprint

    param = next(pair.target.model.parameters())
    return device_of(make_fingerprint(param.device, param.dtype, "", ""))


# --------------------------------------------------------------------------------------------
# The real-decoder env
# --------------------------------------------------------------------------------------------

class _Abort(Exception):
    """Raised inside the decoder thread to end a generation the env no longer wants."""


class NoDecision(LTDError):
    """No training prompt asks the control point anything (e.g. the size policy, when the frozen depth
    policy never drafts: D = 0 everywhere leaves no V to choose)."""


class _Bridge:
    """The control point under training: asks the env (and so PPO) for every decision."""

    def __init__(self, env: "RealDecoderEnv"):
        self.env = env

    def should_draft(self, context_len: int, ngram=None) -> bool:
        if not self.env.spec.asks_before_draft:  # a paper_v1 policy always drafts
            return True
        return self.env._ask(pre_draft_tree(ngram), context_len) != STOP

    def should_continue(self, tree, context_len: int) -> bool:
        return self.env._ask(tree, context_len) != STOP

    def choose_size(self, tree, context_len: int) -> int:
        return int(self.env.spec.size_grid[self.env._ask(tree, context_len)])


class RealDecoderEnv(gym.Env):
    """PPO's view of the real decoder at one control point ("depth" or "size"); see the module doc.

    `prompts` are token-id sequences (one episode each, in a seeded random order); `partner` is the
    frozen controller of the other control point; `cfg` the decoding settings (greedy, or sampling at
    its temperature and top-p: each episode then samples with its own seed, drawn from `seed`).
    Every step's info holds the observed position: {"context_len", "depth"}."""

    metadata = {"render_modes": []}

    def __init__(self, kind: str, pair, prompts, partner, spec: FeatureSpec, cfg: DecodeConfig,
                 reward: str = "time", rate: float = 1.0, seed: int | None = None):
        if kind not in KINDS:
            raise LTDError(f"unknown env kind {kind!r}; choose one of {', '.join(KINDS)}")
        if reward not in REWARDS:
            raise LTDError(f"unknown reward {reward!r}; choose one of {', '.join(REWARDS)}")
        if pair.drafter is None:
            raise LTDError("the real-decoder env needs a draft model (--draft)")
        if kind == "depth" and cfg.max_depth < 2:
            raise LTDError("the depth policy has no decision to learn at max depth 1")
        if not prompts or not rate > 0:
            raise LTDError("the real-decoder env needs prompts and a positive reference rate")
        self.kind, self.pair, self.prompts, self.spec = kind, pair, list(prompts), spec
        self.cfg = cfg
        self.reward_kind, self.rate = reward, float(rate)
        bridge = _Bridge(self)
        self.depth_ctrl, self.size_ctrl = (bridge, partner) if kind == "depth" else (partner, bridge)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(spec.dim,), dtype=np.float32)
        self.action_space = spaces.Discrete(2 if kind == "depth" else len(spec.size_grid))
        self.render_mode = None
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []
        self._actions: queue.Queue = queue.Queue()
        self._events: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._last = np.zeros(spec.dim, np.float32)
        self._reward = self._wait = 0.0
        self._tokens = 0  # tokens of the current generation (the prefill's first included)
        self.cycles: list[tuple] = []  # (context_len, depth, size, accepted, committed, seconds, reward)
        self.episodes: list[dict] = []  # finished generations: {"tokens", "seconds"}

    # --- decoder thread ---------------------------------------------------------------------
    def _ask(self, tree, context_len: int) -> int:
        obs = observe(tree, context_len, self.spec)
        t0 = time.perf_counter()
        self._events.put(("obs", obs, {"context_len": int(context_len), "depth": int(tree.depth)}))
        action = self._actions.get()
        self._wait += time.perf_counter() - t0
        if action is None:
            raise _Abort
        return int(action)

    def _on_cycle(self, tree, record) -> None:
        c = max(min(record.accepted + 1, self.cfg.max_new_tokens - self._tokens), 0)
        self._tokens += c
        t = max(record.total_s - self._wait, 1e-9)  # the decoder's own time, not PPO's
        self._wait = 0.0
        r = c - self.rate * t if self.reward_kind == "time" else c / t / self.rate
        self._reward += r
        self.cycles.append((record.context_len, record.depth, record.size, record.accepted, c, t, r))

    def _run(self, prompt, cfg: DecodeConfig) -> None:
        try:
            generate(self.pair.target.model, prompt, self.pair.drafter, cfg, self.depth_ctrl,
                     self.size_ctrl, eos_ids=self.pair.eos_ids, context_limit=self.pair.context_limit,
                     on_cycle=self._on_cycle)
            self._events.put(("done", None, {}))
        except _Abort:
            pass
        except BaseException as exc:  # noqa: BLE001 (handed to the env's thread, re-raised there)
            self._events.put(("error", exc, {}))

    # --- env thread -------------------------------------------------------------------------
    def _next_event(self):
        kind, payload, info = self._events.get()
        if kind == "error":
            self._thread = None
            raise payload
        return kind, payload, info

    def _stop_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._actions.put(None)
            self._thread.join()
        self._thread = None
        self._actions, self._events = queue.Queue(), queue.Queue()

    def _start(self) -> None:
        if not self._order:
            self._order = list(self._rng.permutation(len(self.prompts)))
        prompt = self.prompts[self._order.pop()]
        self._reward = self._wait = 0.0
        self._tokens = 1
        self._ep_start = len(self.cycles)
        cfg = self.cfg
        if cfg.temperature > 0:  # a fresh continuation per episode, reproducible from the env's seed
            cfg = replace(cfg, seed=int(self._rng.integers(2**62)))
        self._thread = threading.Thread(target=self._run, args=(prompt, cfg), daemon=True, name="ltd-decoder")
        self._thread.start()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng, self._order = np.random.default_rng(seed), []
        self._stop_thread()
        for _ in range(len(self.prompts) + 1):
            self._start()
            kind, obs, info = self._next_event()
            if kind == "obs":
                self._reward = 0.0  # cycles before the first decision belong to no action
                self._last = obs
                return obs, info
            self._thread = None  # a generation without one decision: take the next prompt
        raise NoDecision("no training prompt gives the policy a decision (generations too short, or the "
                         "frozen depth policy never drafts?)")

    def step(self, action):
        if self._thread is None:
            raise LTDError("step() before reset()")
        self._actions.put(int(action))
        kind, obs, info = self._next_event()
        reward, self._reward = self._reward, 0.0
        if kind == "obs":
            self._last = obs
            return obs, float(reward), False, False, info
        self._thread.join()
        self._thread = None
        cyc = self.cycles[self._ep_start:]
        self.episodes.append({"tokens": int(sum(c[4] for c in cyc)), "seconds": float(sum(c[5] for c in cyc))})
        return self._last, float(reward), True, False, {}

    def close(self) -> None:
        self._stop_thread()


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------

@dataclass
class FinetuneConfig:
    """Every hyperparameter of fine-tuning (the budget is given to `run_finetune`)."""

    rounds: int = 1  # (depth phase, size phase) rounds
    n_steps: int = 64  # env steps per PPO update (one env: the real decoder)
    batch_size: int = 32
    n_epochs: int = 4
    learning_rate: float = 1e-4  # below pretraining's: a fine-tune
    max_new_tokens: int = 64  # per training / validation generation
    reward: str | None = None  # None: the policies' pretraining reward (spec.json)
    seed: int = 0
    temperature: float = 0.0  # the decoder samples at (temperature, top_p); 0: greedy
    top_p: float = 1.0

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p)

    def phases(self) -> list[tuple[str, str]]:
        return [(f"round{r}_{k}", k) for r in range(1, self.rounds + 1) for k in KINDS]

    def to_json(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.rounds < 1:
            raise LTDError(f"--rounds must be at least 1, got {self.rounds}")
        if self.n_steps < 2 or not 2 <= self.batch_size <= self.n_steps:
            raise LTDError(f"need n_steps >= 2 and 2 <= batch_size <= n_steps (got {self.n_steps}, "
                           f"{self.batch_size})")
        if self.max_new_tokens < 2:
            raise LTDError(f"--max-new-tokens must be at least 2, got {self.max_new_tokens}")
        if self.reward is not None and self.reward not in REWARDS:
            raise LTDError(f"unknown reward {self.reward!r}; choose one of {', '.join(REWARDS)}")
        self.sampling  # checks --temperature and --top-p


def _load_ppo(path: Path, env, cfg: FinetuneConfig, tb: Path):
    from stable_baselines3 import PPO

    try:
        return PPO.load(path, env=env, device="cpu", n_steps=cfg.n_steps, batch_size=cfg.batch_size,
                        n_epochs=cfg.n_epochs, learning_rate=cfg.learning_rate, tensorboard_log=str(tb), verbose=0)
    except Exception as exc:  # noqa: BLE001 (SB3 raises many kinds on a bad zip)
        raise LTDError(f"cannot load the policy {path}: {exc}") from None


def check_options(policy_dir, out_dir, steps: int | None, minutes: float | None, cfg: FinetuneConfig,
                  has_draft: bool, resume: bool = True) -> tuple[int | None, float | None]:
    """Every fine-tuning option checked, before any model loads. Returns the budget (steps, minutes):
    `DEFAULT_STEPS` steps when neither is given."""
    cfg.validate()
    if steps is not None and minutes is not None:
        raise LTDError("give one budget: --steps N or --minutes M")
    if steps is None and minutes is None:
        steps = DEFAULT_STEPS
    if steps is not None and steps < 1:
        raise LTDError(f"--steps must be at least 1, got {steps}")
    if minutes is not None and not minutes > 0:
        raise LTDError(f"--minutes must be positive, got {minutes}")
    if not has_draft:
        raise LTDError("fine-tuning needs a draft model: --draft DIR (or --draft default)")
    load_policies(policy_dir)  # a bad policy folder fails here
    if (Path(out_dir) / "state.json").is_file() and not resume:
        raise LTDError(f"{out_dir} already holds a fine-tuning run; resume it (--resume) or use another --out")
    return steps, minutes


def run_finetune(pair, policy_dir, out_dir, prompts, steps: int | None = None, minutes: float | None = None,
                 val_prompts=None, cfg: FinetuneConfig | None = None, resume: bool = True,
                 progress: bool = True, log=print, on_update=None) -> dict:
    """Fine-tune the policies in `policy_dir` on the real decoder `pair` (a `realrun.loading.ModelPair`
    or anything with .target.model, .drafter, .eos_ids, .context_limit), for `steps` env steps or
    about `minutes` minutes (training and validation together; neither: `DEFAULT_STEPS` steps).

    `prompts`: token-id sequences; without `val_prompts` they are split by `split_prompts`. Writes
    OUT/policies (the best validated pair), OUT/checkpoints/current, OUT/state.json, OUT/tb.
    `resume=False` refuses a folder that already holds a run. `on_update(state)` is called after every
    PPO update (its checkpoint written). Returns the summary dict (also in state.json)."""
    import torch
    from tqdm import tqdm

    cfg = cfg or FinetuneConfig()
    steps, minutes = check_options(policy_dir, out_dir, steps, minutes, cfg, pair.drafter is not None, resume)
    start_policies = load_policies(policy_dir)
    spec = start_policies.spec
    reward = cfg.reward or start_policies.info.get("reward", "time")
    train, val = split_prompts(list(prompts)) if val_prompts is None else (list(prompts), list(val_prompts))
    if not train or not val:
        raise LTDError("fine-tuning needs training and validation prompts")
    dcfg = DecodeConfig(max_new_tokens=cfg.max_new_tokens, top_k=spec.top_k, max_depth=spec.max_depth,
                        temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    dcfg.validate(True)
    note = sampling_mismatch(start_policies.info, cfg.temperature, cfg.top_p)
    if note:
        log(note)

    out = Path(out_dir)
    state_path, ckpt, tb = out / "state.json", out / "checkpoints" / "current", out / "tb"
    settings = {"config": cfg.to_json(), "policy_dir": str(Path(policy_dir).resolve()), "reward": reward,
                "train_prompts": len(train), "val_prompts": len(val)}
    state = None
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except ValueError as exc:
            raise LTDError(f"corrupted fine-tuning state {state_path}: {exc}") from None
        if state.get("settings") != settings:
            raise LTDError(f"{out} holds a fine-tuning run with other settings; use another --out or remove it")
    resumed = state is not None
    phases = cfg.phases()
    budget = {"steps": steps} if steps is not None else {"minutes": minutes}
    per_phase = None if steps is None else math.ceil(steps / len(phases) / cfg.n_steps) * cfg.n_steps
    trained = list(dict.fromkeys(trained_sampling(start_policies.info) + (cfg.sampling,)))
    base_info = {**start_policies.extras(), "device": pair_device(pair),  # fine-tuned here: made for this device
                 "sampling": [x.to_json() for x in trained]}  # and at this sampling setting too

    def save(path: Path, models: dict, extra: dict) -> None:
        save_policies(path, models["depth"], models["size"], spec, {**base_info, **extra})

    t_run = time.perf_counter()
    if state is None:
        log(f"finetune: {len(train)} train / {len(val)} val prompts, reward {reward!r}; "
            f"validating the starting policies...")
        start_ctrl = PolicyController(start_policies)
        start = measure(pair, val, start_ctrl, start_ctrl, dcfg)
        rate = measure(pair, train[:RATE_PROMPTS], start_ctrl, start_ctrl, dcfg, warmup=False).decode_tokens_per_s
        state = {"settings": settings, "phase": 0, "phase_steps": 0, "steps": 0, "seconds": 0.0,
                 "rate": rate, "rate_kind": DECODE_RATE, "start": start.to_json(), "history": [],
                 "best": {"phase": "start", f"val_{DECODE_RATE}": start.decode_tokens_per_s, "steps": 0}}
        depth_m, size_m = start_policies.depth_model, start_policies.size_model
        save(out / "policies", {"depth": depth_m, "size": size_m},
             {"finetune": {"phase": "start", f"real_val_{DECODE_RATE}": start.decode_tokens_per_s}})
        save(ckpt, {"depth": depth_m, "size": size_m}, {"finetune": {"phase": "start"}})
        state["seconds"] = time.perf_counter() - t_run
        write_json(state_path, state)
        log(f"  start          val {start.decode_tokens_per_s:.2f} tok/s decode rate (tau {start.tau:.2f}); "
            f"reward rate {rate:.2f} tok/s (training prompts, decode rate)")
    state["budget"] = budget
    if state["rate"] <= 0:
        raise LTDError("the starting policies committed no tokens on the validation prompts")
    seconds_before = state["seconds"]
    t_run = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t_run

    prev_threads = torch.get_num_threads()
    envs: dict[str, RealDecoderEnv] = {}
    models: dict = {}
    for kind in KINDS:  # current weights (the start, or the last checkpoint on resume)
        frozen = PolicyController(ckpt)
        envs[kind] = RealDecoderEnv(kind, pair, train, frozen, spec, dcfg, reward, state["rate"], cfg.seed)
        models[kind] = _load_ppo(ckpt / f"{kind}.zip", envs[kind], cfg, tb)
    torch.set_num_threads(prev_threads)  # SB3's load may change it; the decoder wants its threads

    total = steps if steps is not None else minutes * 60.0
    bar = progress_bar(round(total), "finetune", "step" if steps is not None else "s", progress,
                       initial=round(min(state["steps"] if steps is not None else elapsed(), total)))
    try:
        while state["phase"] < len(phases):
            i = state["phase"]
            name, kind = phases[i]
            frozen = PolicyController(Policies(models["depth"], models["size"], spec))
            env = RealDecoderEnv(kind, pair, train, frozen, spec, dcfg, reward, state["rate"], cfg.seed + 1 + i)
            model = models[kind]
            model.set_env(env)
            end_s = (i + 1) * total / len(phases) if steps is None else None
            while True:
                if steps is not None and state["phase_steps"] >= per_phase:
                    break
                if steps is None and state["phase_steps"] > 0 and elapsed() >= end_s:
                    break
                try:
                    model.learn(total_timesteps=cfg.n_steps, reset_num_timesteps=False, tb_log_name=f"ft_{kind}")
                except NoDecision as exc:  # nothing to learn in this phase: go on to the next one
                    with tqdm.external_write_mode(file=sys.stderr):
                        log(f"  {name:14s} skipped: {exc}")
                    break
                state["steps"] += cfg.n_steps
                state["phase_steps"] += cfg.n_steps
                state["seconds"] = elapsed()
                save(ckpt, models, {"finetune": {"phase": name, "steps": state["steps"]}})
                write_json(state_path, state)
                bar.n = round(min(state["steps"] if steps is not None else state["seconds"], total))
                eps = env.episodes[-3:]
                if eps:
                    bar.set_postfix(phase=name, train_tok_s=f"{sum(e['tokens'] for e in eps) / sum(e['seconds'] for e in eps):.1f}")
                bar.refresh()
                if on_update is not None:
                    on_update(state)
            env.close()
            cand = PolicyController(Policies(models["depth"], models["size"], spec))
            best = PolicyController(out / "policies")
            res, inc = measure_many(pair, val, [(cand, cand), (best, best)], dcfg)
            record = {"phase": name, "steps": state["steps"], f"val_{DECODE_RATE}": res.decode_tokens_per_s,
                      "val_tau": res.tau, f"best_in_same_pass_{DECODE_RATE}": inc.decode_tokens_per_s,
                      "seconds": elapsed()}
            state["history"].append(record)
            if res.decode_tokens_per_s > inc.decode_tokens_per_s:  # paired: beat the best so far in the same pass
                state["best"] = record
                save(out / "policies", models, {"finetune": {"phase": name, "steps": state["steps"],
                                                             f"real_val_{DECODE_RATE}": res.decode_tokens_per_s,
                                                             f"start_val_{DECODE_RATE}": state["start"][DECODE_RATE]}})
            state["phase"] += 1
            state["phase_steps"] = 0
            state["seconds"] = elapsed()
            write_json(state_path, state)
            with tqdm.external_write_mode(file=sys.stderr):
                log(f"  {name:14s} val {res.decode_tokens_per_s:.2f} tok/s decode rate (tau {res.tau:.2f}) vs best "
                    f"so far {inc.decode_tokens_per_s:.2f} in the same pass; best: {state['best']['phase']}")
    finally:
        bar.close()
        for e in envs.values():
            e.close()
    start_rate, best_rate = state["start"][DECODE_RATE], state["best"][f"val_{DECODE_RATE}"]
    summary = {"policies": str(out / "policies"), "best_phase": state["best"]["phase"], "rate": DECODE_RATE,
               f"start_val_{DECODE_RATE}": start_rate, f"best_val_{DECODE_RATE}": best_rate,
               "gain": best_rate / start_rate,
               "steps": state["steps"], "seconds": state["seconds"], "history": state["history"],
               "resumed": resumed, "reward": reward}
    state["summary"] = summary
    write_json(state_path, state)
    log(f"finetune: best {summary['best_phase']} {best_rate:.2f} tok/s decode rate "
        f"({summary['gain']:.3f}x the start) -> {summary['policies']}")
    return summary


__all__ = ["DEFAULT_STEPS", "FinetuneConfig", "RealDecoderEnv", "check_options", "run_finetune"]
