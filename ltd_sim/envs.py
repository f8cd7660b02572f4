"""Gymnasium environments over recorded traces: the depth env and the size env (DESIGN.md).

- Depth env (`ltd/Depth-v0`): one step = one draft step. Action 0 = CONTINUE, 1 = STOP; at
  max_depth (or the recorded tree's depth) the cycle stops whatever the action. With a feature set
  that asks before drafting ("paper_v2"), each cycle starts with a decision at depth 0 on the
  pre-draft observation: STOP there is the "no draft" action (D = 0, a plain decoding step). At a stop the frozen
  size policy (a table of its choices per position and depth) picks V, the cycle is scored, and the
  episode moves on to the next uncommitted position.
- Size env (`ltd/Size-v0`): one step = one cycle's choice of V (an index into SIZE_GRID), after the
  frozen depth policy (a table of its depth per position, or a uniformly random depth) drafted.

An episode is a whole generation (one recorded sequence, chosen at random at reset), so context
length moves as it would in the decoder. Observations are the one feature function's, precomputed
per (position, depth) in `SimTables`; a step is a few array lookups, O(1).

Rewards (per cycle, at the step that ends it; `c` tokens committed in `t` seconds):
- "time" (default): c - rate * t, `rate` a reference throughput (tokens/s). An episode's return is
  then L - rate * T for a generation of fixed length L, so maximising it minimises the generation's
  time T, i.e. maximises its throughput, exactly (with gamma = 1).
- "throughput": the paper's reward, the cycle's own tokens/s (divided by `rate` for scale). Summed
  over an episode it favours many short cycles, which is why it is not the default here.

`SimVecEnv` runs n copies in lockstep as a stable-baselines3 VecEnv (numpy over all copies), which
is what PPO trains on; the single `DepthEnv`/`SizeEnv` are the registered gymnasium envs.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv

from ltd_sim.errors import LTDError
from ltd_sim.sim import SimTables, cycle_outcome

CONTINUE, STOP = 0, 1
REWARDS = ("time", "throughput")


class _Core:
    """The state of n env copies; subclasses define what one step decides."""

    kind = ""

    def __init__(self, tables: SimTables, n: int, reward: str = "time", rate: float | None = None,
                 seed: int | None = None):
        if reward not in REWARDS:
            raise LTDError(f"unknown reward {reward!r}; choose one of {', '.join(REWARDS)}")
        self.t = tables
        self.n = n
        self.reward_kind = reward
        self.rate = float(rate or tables.ar_rate())
        self.rng = np.random.default_rng(seed)
        self.seq = np.zeros(n, np.int64)
        self.pos = np.zeros(n, np.int64)
        self.depth = np.ones(n, np.int64)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(tables.spec.dim,), dtype=np.float32)

    def seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)

    def _start(self, ids: np.ndarray) -> None:
        self.seq[ids] = self.rng.integers(0, self.t.num_sequences, size=len(ids))
        self.pos[ids] = self.t.seq_start[self.seq[ids]]

    def obs(self, ids=slice(None)) -> np.ndarray:
        p, d = self.pos[ids], self.depth[ids]
        out = self.t.feats[p, np.maximum(d, 1) - 1]
        if self.t.feats0 is not None and (d == 0).any():  # before drafting: the pre-draft observation
            out = np.where((d == 0)[:, None], self.t.feats0[p], out)
        return out

    def _commit(self, ids: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score the cycle of copies `ids` at their depth with size index g; advance; (reward, done)."""
        t, p, d = self.t, self.pos[ids], self.depth[ids]
        end = t.seq_end[self.seq[ids]]
        a, dt = cycle_outcome(t, p, d, np.asarray(g, np.int64))
        c = np.minimum(a + 1, end - p)
        if self.reward_kind == "time":
            r = c - self.rate * dt
        else:
            r = c / dt / self.rate
        self.pos[ids] = p + c
        return r.astype(np.float32), self.pos[ids] >= end


class DepthCore(_Core):
    kind = "depth"

    def __init__(self, tables: SimTables, size_at: np.ndarray, n: int = 1, **kw):
        super().__init__(tables, n, **kw)
        self.size_at = np.broadcast_to(np.asarray(size_at, np.int64), tables.dmax.shape + (tables.max_depth,))
        self.action_space = spaces.Discrete(2)
        # depth 0 = before the first draft step, where STOP means "no draft" (feature set paper_v2)
        self.first = 0 if tables.spec.asks_before_draft and tables.feats0 is not None else 1

    def reset(self, ids) -> None:
        self._start(ids)
        self.depth[ids] = self.first

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reward = np.zeros(self.n, np.float32)
        done = np.zeros(self.n, bool)
        stop = (np.asarray(actions) == STOP) | (self.depth >= self.t.dmax[self.pos])
        ids = np.flatnonzero(stop)
        if len(ids):
            g = self.size_at[self.pos[ids], np.maximum(self.depth[ids], 1) - 1]
            reward[ids], done[ids] = self._commit(ids, g)
            self.depth[ids] = self.first
        self.depth[~stop] += 1
        return reward, done


class SizeCore(_Core):
    kind = "size"

    def __init__(self, tables: SimTables, depth_at: np.ndarray | None = None, n: int = 1, **kw):
        super().__init__(tables, n, **kw)
        self.depth_at = None if depth_at is None else np.asarray(depth_at, np.int64)
        self.action_space = spaces.Discrete(len(tables.grid))

    def _draw(self, ids) -> None:
        p = self.pos[ids]
        if self.depth_at is None:  # stage 1: a uniformly random depth per cycle
            self.depth[ids] = (self.rng.random(len(p)) * self.t.dmax[p]).astype(np.int64) + 1
        else:
            self.depth[ids] = np.clip(self.depth_at[p], 1, self.t.dmax[p])

    def reset(self, ids) -> None:
        self._start(ids)
        self._draw(ids)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reward, done = self._commit(slice(None), np.asarray(actions, np.int64))
        self._draw(~done)  # finished copies are reset (and drawn) by the caller
        return reward, done


def make_core(kind: str, tables: SimTables, partner=None, n: int = 1, **kw) -> _Core:
    """kind "depth": partner = size index per (position, depth) [P, D] or one index for all;
    kind "size": partner = depth per position [P], or None for a random depth."""
    if kind == "depth":
        if partner is None:
            raise LTDError("the depth env needs the frozen size policy's choices (or one fixed V index)")
        return DepthCore(tables, partner, n, **kw)
    if kind == "size":
        return SizeCore(tables, partner, n, **kw)
    raise LTDError(f"unknown env kind {kind!r}")


class _SingleEnv(gym.Env):
    metadata = {"render_modes": []}
    kind = ""

    def __init__(self, tables: SimTables, partner=None, reward: str = "time", rate: float | None = None):
        self.core = make_core(self.kind, tables, partner, 1, reward=reward, rate=rate)
        self.observation_space = self.core.observation_space
        self.action_space = self.core.action_space
        self.render_mode = None
        self._last = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.core.seed(seed)
        self.core.reset(np.zeros(1, np.int64))
        self._last = self.core.obs()[0].copy()
        return self._last, {}

    def step(self, action):
        reward, done = self.core.step(np.asarray([int(action)]))
        if done[0]:  # the generation is complete; no further tree to observe
            return self._last, float(reward[0]), True, False, {}
        self._last = self.core.obs()[0].copy()
        return self._last, float(reward[0]), False, False, {}


class DepthEnv(_SingleEnv):
    """One draft step per env step: CONTINUE (0) or STOP (1); the frozen size policy picks V."""

    kind = "depth"


class SizeEnv(_SingleEnv):
    """One cycle per env step: V = SIZE_GRID[action], after the frozen (or random) depth policy."""

    kind = "size"


class SimVecEnv(VecEnv):
    """n env copies in lockstep, numpy-vectorised, as a stable-baselines3 VecEnv (auto-reset)."""

    def __init__(self, kind: str, tables: SimTables, partner=None, n: int = 64, reward: str = "time",
                 rate: float | None = None, seed: int | None = None):
        self.core = make_core(kind, tables, partner, n, reward=reward, rate=rate, seed=seed)
        self.render_mode = None
        super().__init__(n, self.core.observation_space, self.core.action_space)
        self._actions = None

    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self.core.seed(self._seeds[0])
        self._reset_seeds()
        self.core.reset(np.arange(self.num_envs))
        return self.core.obs().copy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self):
        before = self.core.obs()
        reward, done = self.core.step(self._actions)
        infos = [{} for _ in range(self.num_envs)]
        ids = np.flatnonzero(done)
        if len(ids):
            for i in ids:
                infos[i]["terminal_observation"] = before[i]
                infos[i]["TimeLimit.truncated"] = False
            self.core.reset(ids)
        return self.core.obs().copy(), reward, done, infos

    def step_fast(self, actions: np.ndarray):
        """step without the per-copy info dicts (benchmarks, rollouts that need no terminal obs)."""
        reward, done = self.core.step(actions)
        ids = np.flatnonzero(done)
        if len(ids):
            self.core.reset(ids)
        return self.core.obs(), reward, done

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name, None)] * len(self._get_indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        return [getattr(self, method_name)(*args, **kwargs)] * len(self._get_indices(indices))

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._get_indices(indices))


gym.register(id="ltd/Depth-v0", entry_point="ltd_sim.envs:DepthEnv")
gym.register(id="ltd/Size-v0", entry_point="ltd_sim.envs:SizeEnv")
