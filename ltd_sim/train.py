"""Co-adaptive PPO pretraining of the depth and size policies in simulation (stable-baselines3).

Stage 1 trains the size policy with a uniformly random depth and the depth policy with one fixed V.
Stage 2 alternates for `rounds` rounds: train the depth policy against the frozen size policy, then
the size policy against the frozen depth policy. After every phase the pair is scored on the held-out
validation traces; the best pair so far is kept in `OUT/policies/`. Each phase leaves a checkpoint
and a line in `OUT/state.json`, so an interrupted run resumes after its last finished phase.
TensorBoard logs go to `OUT/tb/`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ltd_sim.io import write_json
from ltd_sim.errors import LTDError
from ltd_sim.policy import decision_tables, depth_table, save_policies, save_policy_zip, size_table
from ltd_sim.sim import SimTables, simulate_tables, static_grid


@dataclass
class PretrainConfig:
    """Every hyperparameter of pretraining, in one place."""

    n_envs: int = 32
    n_steps: int = 128  # rollout length per env copy
    batch_size: int = 512
    # n_epochs, learning_rate and ent_coef: gentler values froze the size policy on one V before it
    # learned to skip (V = 0) unsure cycles (measured in docs/simulator.md)
    n_epochs: int = 10
    learning_rate: float = 1e-3
    gamma_depth: float = 0.99  # a depth episode step is a draft step: the reward comes at STOP
    gamma_size: float = 0.0  # a size step is a whole cycle; with the "time" reward the choice is myopic
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.02
    net_arch: tuple = (64, 64)
    reward: str = "time"  # see ltd_sim.envs
    stage1_steps: int = 100_000  # env steps for each policy in stage 1
    rounds: int = 2  # stage 2 rounds (depth then size each)
    stage2_steps: int = 100_000  # env steps for each policy in each round
    stage1_size: int | None = None  # fixed V for the stage-1 depth policy (None: best static V > 0)
    seed: int = 0
    torch_threads: int = 1
    progress_bar: bool = False

    def phases(self) -> list[tuple[str, str, int]]:
        out = [("stage1_size", "size", self.stage1_steps), ("stage1_depth", "depth", self.stage1_steps)]
        for r in range(1, self.rounds + 1):
            out += [(f"round{r}_depth", "depth", self.stage2_steps), (f"round{r}_size", "size", self.stage2_steps)]
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d["net_arch"] = list(self.net_arch)
        return d


@dataclass
class PretrainResult:
    out_dir: Path
    best_phase: str
    val_tokens_per_s: float
    val_best_static: float
    seconds: float
    phases: list = field(default_factory=list)


def _ppo(kind: str, env, cfg: PretrainConfig, tb_dir: Path):
    from stable_baselines3 import PPO

    return PPO("MlpPolicy", env, learning_rate=cfg.learning_rate, n_steps=cfg.n_steps,
               batch_size=cfg.batch_size, n_epochs=cfg.n_epochs,
               gamma=cfg.gamma_depth if kind == "depth" else cfg.gamma_size, gae_lambda=cfg.gae_lambda,
               clip_range=cfg.clip_range, ent_coef=cfg.ent_coef, seed=cfg.seed, device="cpu", verbose=0,
               policy_kwargs={"net_arch": list(cfg.net_arch)}, tensorboard_log=str(tb_dir))


def pretrain(train: SimTables, val: SimTables, out_dir: str | Path, cfg: PretrainConfig | None = None,
             log=print, extra_spec: dict | None = None) -> PretrainResult:
    """Co-adaptive PPO pretraining (see `_pretrain`). PPO's small networks run on `cfg.torch_threads`;
    the caller's torch thread count is restored afterwards, so that a real decoder running later in
    the same process (the pipeline's fine-tune and bench) keeps every core."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _pretrain(train, val, out_dir, cfg, log, extra_spec)
    finally:
        torch.set_num_threads(threads)


def _pretrain(train: SimTables, val: SimTables, out_dir: str | Path, cfg: PretrainConfig | None = None,
             log=print, extra_spec: dict | None = None) -> PretrainResult:
    import torch
    from stable_baselines3 import PPO

    from ltd_sim.envs import SimVecEnv

    cfg = cfg or PretrainConfig()
    out = Path(out_dir)
    ckpt, tb = out / "checkpoints", out / "tb"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.torch_threads)
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state and state.get("config") != cfg.to_json():
        raise LTDError(f"{out} holds a pretraining run with other settings; use another --out or remove it")
    state.setdefault("config", cfg.to_json())
    state.setdefault("done", [])
    state.setdefault("best", None)
    state.setdefault("seconds", 0.0)

    grid = static_grid(train)
    best_static = max(grid, key=lambda k: grid[k].tokens_per_s)
    rate = grid[best_static].tokens_per_s  # reward reference: near what a good policy achieves
    fixed_v = cfg.stage1_size
    if fixed_v is None:
        sized = {k: r for k, r in grid.items() if k[1] > 0}
        fixed_v = max(sized, key=lambda k: sized[k].tokens_per_s)[1]
    fixed_g = train.grid.index(fixed_v) if fixed_v in train.grid else None
    if fixed_g is None:
        raise LTDError(f"stage-1 V = {fixed_v} is not in the size grid {train.grid}")
    val_grid = static_grid(val)
    val_static = max(r.tokens_per_s for r in val_grid.values())
    log(f"pretrain: {train.num_sequences} train / {val.num_sequences} val sequences, "
        f"{train.num_positions} train positions; best static on train {best_static} "
        f"({rate:.2f} tok/s); stage-1 depth policy with V = {fixed_v}")

    models: dict[str, object] = {}
    for kind in ("depth", "size"):  # resume: the latest checkpoint of each policy
        last = [p for p, k, _ in cfg.phases() if k == kind and p in state["done"]]
        if last:
            models[kind] = PPO.load(ckpt / f"{last[-1]}.zip", device="cpu")

    t_start = time.perf_counter()
    for i, (phase, kind, steps) in enumerate(cfg.phases()):
        if phase in state["done"]:
            continue
        t0 = time.perf_counter()
        if kind == "size":
            partner = depth_table(train, models["depth"]) if "depth" in models else None  # stage 1: random
        else:
            partner = size_table(train, models["size"]) if phase != "stage1_depth" else fixed_g
        env = SimVecEnv(kind, train, partner, n=cfg.n_envs, reward=cfg.reward, rate=rate, seed=cfg.seed + i)
        if kind in models:
            model = models[kind]
            model.set_env(env)
        else:
            model = _ppo(kind, env, cfg, tb)
        model.learn(total_timesteps=steps, tb_log_name=f"{kind}", reset_num_timesteps=False,
                    progress_bar=cfg.progress_bar)
        models[kind] = model
        save_policy_zip(model, ckpt / f"{phase}.zip")
        record = {"phase": phase, "steps": steps, "seconds": time.perf_counter() - t0}
        if "depth" in models and "size" in models:
            res = simulate_tables(val, *decision_tables(val, models["depth"], models["size"]))
            record["val_tokens_per_s"] = res.tokens_per_s
            record["val_tau"] = res.tau
            if state["best"] is None or res.tokens_per_s > state["best"]["val_tokens_per_s"]:
                state["best"] = record
                save_policies(out / "policies", models["depth"], models["size"], train.spec,
                              {"reward": cfg.reward, "phase": phase, "val_tokens_per_s": res.tokens_per_s,
                               "val_best_static_tokens_per_s": val_static, "config": cfg.to_json(),
                               "sampling": [x.to_json() for x in train.sampling], **(extra_spec or {})})
        state["done"].append(phase)
        state["seconds"] += record["seconds"]
        state.setdefault("phases", []).append(record)
        write_json(state_path, state)
        msg = f"  {phase:14s} {steps:>8d} steps {record['seconds']:6.1f}s"
        if "val_tokens_per_s" in record:
            msg += (f"  val {record['val_tokens_per_s']:.2f} tok/s (tau {record['val_tau']:.2f}, "
                    f"{record['val_tokens_per_s'] / val_static:.3f}x best static)")
        log(msg)
    if state["best"] is None:
        raise LTDError("pretraining finished no phase with both policies")
    log(f"pretrain: done in {time.perf_counter() - t_start:.1f}s; best {state['best']['phase']} "
        f"-> {out / 'policies'}")
    return PretrainResult(out, state["best"]["phase"], state["best"]["val_tokens_per_s"], val_static,
                          state["seconds"], state.get("phases", []))

