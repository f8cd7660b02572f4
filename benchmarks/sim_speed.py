"""Simulator speed: environment steps per second on one core, against `TARGET_STEPS_PER_S`.

    python benchmarks/sim_speed.py [--traces DIR --cost F] [--json]

Without --traces it times synthetic traces with the default tree shape (top-k 10, depth 8); the
speed of a step does not depend on the trees, since every step is a table lookup.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from ltd_sim import defaults  # noqa: E402
from ltd_sim.cost_model import AnalyticCostModel  # noqa: E402
from ltd_sim.envs import DepthEnv, SimVecEnv, SizeEnv  # noqa: E402
from ltd_sim.sim import SimTables  # noqa: E402

#: vectorised env steps per second PPO pretraining needs to finish within its budget
TARGET_STEPS_PER_S = 20_000


def tables_from(args) -> SimTables:
    if args.traces:
        from realrun.simulate import load_tables

        return load_tables(args.traces, args.cost)
    from ltd_sim.synthetic import synthetic_sequence

    rng = np.random.default_rng(0)
    seqs = [synthetic_sequence(rng, 64, defaults.TOP_K, defaults.MAX_DEPTH) for _ in range(8)]
    return SimTables.build(seqs, AnalyticCostModel())


def single(env, steps: int) -> float:
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, env.action_space.n, size=steps)
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, _, _ = env.step(a)
        if term:
            env.reset()
    return steps / (time.perf_counter() - t0)


def vectorised(env: SimVecEnv, calls: int, fast: bool) -> float:
    env.reset()
    rng = np.random.default_rng(0)
    actions = rng.integers(0, env.action_space.n, size=(calls, env.num_envs))
    t0 = time.perf_counter()
    for a in actions:
        env.step_fast(a) if fast else env.step(a)
    return calls * env.num_envs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces")
    ap.add_argument("--cost")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if bool(args.traces) != bool(args.cost):
        ap.error("--traces and --cost go together")
    t = tables_from(args)
    D = t.max_depth
    out = {"positions": t.num_positions,
           "depth_env_single": single(DepthEnv(t, 4), 20_000),
           "size_env_single": single(SizeEnv(t), 20_000)}
    for n in (64, 256):
        out[f"depth_vec{n}_sb3"] = vectorised(SimVecEnv("depth", t, np.zeros((t.num_positions, D), int) + 4, n), 300, False)
        out[f"size_vec{n}_sb3"] = vectorised(SimVecEnv("size", t, None, n), 300, False)
        out[f"depth_vec{n}_fast"] = vectorised(SimVecEnv("depth", t, 4, n), 300, True)
    out["min_vectorised_steps_per_s"] = min(v for k, v in out.items() if "_vec" in k)
    out["target_steps_per_s"] = TARGET_STEPS_PER_S
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:22s} {v:>14,.0f}")


if __name__ == "__main__":
    main()
