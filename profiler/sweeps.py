"""Sweeps over the decoder's phases. `realrun` hands in a `PhaseProbes` object built from its own
phase functions; this module only decides what to measure and collects the measurements.

Measured components (keys of `SweepResult.components`):
  draft_step    by step index, top-k and context length  (one draft_tree call yields every step)
  verify        by V (tree tokens besides the root) and context length
  overhead      by depth, V and top-k: tree selection, acceptance, KV compaction, drafter bookkeeping
  policy        one forward of a small MLP policy net (2 x 64, as stable-baselines3 builds by default)
  batch_forward target forward by batch size x tokens per sequence (for the serving simulation)
  ngram         by context length and depth: the n-gram lookup (a suffix that really matches earlier
                text) and its merges into a draft tree of the sweep's shape, one per draft step,
                cumulative up to each depth; host work, timed on the CPU clock
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import torch

from ltd_sim import defaults
from profiler.timing import Measurement, Probe, Timer, repeat_interleaved, summarize, time_callable


class PhaseProbes(Protocol):
    """What `realrun` provides: probes over the real decoder's phase functions."""

    max_context: int  # the longest context the target holds
    has_drafter: bool

    def prepare(self, context_len: int) -> None:
        """Untimed: make a target KV cache (and drafter state) holding `context_len` tokens."""

    def draft(self, top_k: int, depth: int) -> Probe:
        """One draft_tree call of `depth` steps; the probe returns one duration per step."""

    def verify(self, size: int) -> Probe:
        """One verify_tree forward over root + `size` tree tokens at the prepared context."""

    def overhead(self, depth: int, size: int, top_k: int) -> Probe:
        """The per-cycle work outside drafting and the verify forward."""

    def batch_forward(self, batch: int, tokens: int, context_len: int) -> Probe:
        """One target forward of `batch` sequences x `tokens` new tokens over `context_len` cached."""

    def ngram(self, context_len: int, depth: int) -> Probe:
        """One cycle's n-gram phase: propose branches of up to `depth` tokens after a `context_len`-token
        context whose suffix occurred earlier and merge them into a head tree of the sweep's shape as
        the decoder does; the probe returns the cumulative time after each of the `depth` draft steps.
        Called after `prepare`; needs no KV cache of that length."""


@dataclass
class SweepSpec:
    """What one profile measures: the grid of every component, and how often each point is timed."""

    name: str
    context_lens: tuple[int, ...]  # draft and verify are measured at each
    top_ks: tuple[int, ...]
    max_depth: int  # draft steps of each draft_tree call (one duration per step)
    sizes: tuple[int, ...]  # V values of the verify sweep
    overhead_depths: tuple[int, ...]
    overhead_sizes: tuple[int, ...]
    overhead_context: int
    batch_sizes: tuple[int, ...]
    batch_tokens: tuple[int, ...]  # new tokens per sequence of a batched forward
    batch_context: int
    warmup: int  # untimed runs per point
    repeats: int  # timed runs per point
    policy_obs_dim: int = 16
    # the n-gram phase is measured at context_lens plus these (it needs no KV cache, so longer contexts
    # cost nothing to prepare), with more repeats: it takes tens of microseconds, so the noise is relative
    ngram_contexts: tuple[int, ...] = ()
    ngram_repeats: int = 20

    def ngram_context_lens(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.context_lens) | set(self.ngram_contexts)))

    @classmethod
    def preset(cls, name: str) -> "SweepSpec":
        """`tiny` (seconds, for the tests' tiny models), `quick` or `full`."""
        grid = tuple(defaults.SIZE_GRID)
        vmax = max(grid)
        if name == "tiny":
            return cls(name="tiny", context_lens=(16, 64), top_ks=(2, 4), max_depth=3, sizes=(0, 1, 2, 4, 6, 8),
                       overhead_depths=(1, 3), overhead_sizes=(0, 4), overhead_context=32,
                       batch_sizes=(1, 2), batch_tokens=(1, 4), batch_context=16, warmup=1, repeats=3,
                       ngram_contexts=(128, 256), ngram_repeats=10)
        if name == "quick":
            return cls(name="quick", context_lens=(64, 512, 1024), top_ks=(4, defaults.TOP_K),
                       max_depth=defaults.MAX_DEPTH, sizes=tuple(sorted(set(grid) | {5, 10, 20, 40})),
                       overhead_depths=(1, defaults.MAX_DEPTH), overhead_sizes=(0, vmax), overhead_context=256,
                       batch_sizes=(1, 4, 16), batch_tokens=(1, 4, 16), batch_context=128, warmup=1, repeats=4,
                       ngram_contexts=(256, 2048, 4096), ngram_repeats=30)
        if name == "full":
            return cls(name="full", context_lens=(64, 128, 256, 512, 1024, 2048), top_ks=(2, 4, 8, defaults.TOP_K, 16),
                       max_depth=defaults.MAX_DEPTH, sizes=tuple(range(0, vmax + 1)),
                       overhead_depths=(1, 4, defaults.MAX_DEPTH), overhead_sizes=(0, 8, 32, vmax),
                       overhead_context=512, batch_sizes=(1, 2, 4, 8, 16), batch_tokens=(1, 2, 4, 8, 16, 32),
                       batch_context=256, warmup=2, repeats=7, ngram_contexts=(4096,), ngram_repeats=50)
        raise ValueError(f"unknown sweep preset {name!r} (tiny, quick, full)")

    def capped(self, max_context: int) -> "SweepSpec":
        """Drop context lengths the model cannot hold (room is left for the tree)."""
        room = max_context - max(self.sizes) - self.max_depth - 2
        ctx = tuple(c for c in self.context_lens if c <= room) or (max(8, room),)
        return replace(self, context_lens=ctx, overhead_context=min(self.overhead_context, ctx[-1]),
                       batch_context=min(self.batch_context, ctx[-1]),
                       ngram_contexts=tuple(c for c in self.ngram_contexts if c <= room))

    def count(self, has_drafter: bool) -> int:
        """Probe calls of a sweep (warm-ups included), for the progress bar."""
        n = len(self.context_lens) * len(self.sizes) + len(self.batch_sizes) * len(self.batch_tokens)
        if has_drafter:
            n += len(self.context_lens) * len(self.top_ks)  # one point per draft_tree call
            n += len(self.overhead_depths) * len(self.overhead_sizes) * len(self.top_ks)
        ngram = len(self.ngram_context_lens()) * (self.warmup + self.ngram_repeats)
        return n * (self.warmup + self.repeats) + ngram + 1


@dataclass
class SweepResult:
    spec: dict
    device: str
    components: dict[str, list[Measurement]] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return {"spec": self.spec, "device": self.device, "wall_s": self.wall_s,
                "components": {k: [m.to_json() for m in v] for k, v in self.components.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "SweepResult":
        comps = {k: [Measurement.from_json(m) for m in v] for k, v in d["components"].items()}
        return cls(d["spec"], d["device"], comps, d.get("wall_s", 0.0))

    def outliers(self) -> int:
        return sum(m.outliers for ms in self.components.values() for m in ms)


def policy_net(obs_dim: int, n_actions: int, hidden: int = 64) -> torch.nn.Module:
    """The shape of a stable-baselines3 MlpPolicy actor: 2 x 64 tanh layers, then the action logits."""
    return torch.nn.Sequential(torch.nn.Linear(obs_dim, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                               torch.nn.Linear(hidden, n_actions)).eval()


def time_policy(timer: Timer, obs_dim: int = 16, n_actions: int = len(defaults.SIZE_GRID),
                warmup: int = 20, repeats: int = 200) -> Measurement:
    """One policy decision on the CPU: observation to tensor, forward, argmax to a Python int."""
    net = policy_net(obs_dim, n_actions)
    obs = [0.1] * obs_dim

    @torch.no_grad()
    def decide():
        return int(net(torch.tensor(obs, dtype=torch.float32)[None]).argmax())

    return time_callable(decide, Timer("cpu"), warmup, repeats, {"obs_dim": obs_dim, "hidden": 64})


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="run")


def run_sweeps(probes: PhaseProbes, spec: SweepSpec, timer: Timer, progress: bool = True) -> SweepResult:
    """Measure every component of `spec` with `probes`; returns the raw measurements."""
    spec = spec.capped(probes.max_context)
    result = SweepResult(asdict(spec), str(timer.device))
    comps = result.components = {"draft_step": [], "verify": [], "overhead": [], "policy": [],
                                 "batch_forward": [], "ngram": []}
    t0 = time.perf_counter()
    bar = _progress(spec.count(probes.has_drafter), progress, f"profile ({spec.name})")
    def group(name, keys, probes, split_steps=False, clock=timer, repeats=spec.repeats, step_key="step"):
        reps = repeat_interleaved(probes, clock, spec.warmup, repeats, seed=len(comps[name]),
                                  on_call=bar.update)
        for key, rs in zip(keys, reps):
            if split_steps:  # one call: one value per step (draft: its duration; n-gram: cumulative)
                for s in range(1, len(rs[0]) + 1):
                    comps[name].append(summarize({**key, step_key: s}, [r[s - 1] for r in rs]))
            else:
                comps[name].append(summarize(key, [r[0] for r in rs]))

    try:
        for ctx in spec.context_lens:
            bar.set_postfix_str(f"prepare ctx={ctx}")
            probes.prepare(ctx)
            if probes.has_drafter:
                bar.set_postfix_str(f"draft ctx={ctx}")
                group("draft_step", [{"top_k": k, "context_len": ctx} for k in spec.top_ks],
                      [probes.draft(k, spec.max_depth) for k in spec.top_ks], split_steps=True)
            bar.set_postfix_str(f"verify ctx={ctx}")
            group("verify", [{"size": v, "context_len": ctx} for v in spec.sizes],
                  [probes.verify(v) for v in spec.sizes])
        if probes.has_drafter:
            ctx = spec.overhead_context
            bar.set_postfix_str(f"overhead ctx={ctx}")
            probes.prepare(ctx)
            combos = [(d, v, k) for k in spec.top_ks for d in spec.overhead_depths for v in spec.overhead_sizes]
            group("overhead", [{"depth": d, "size": v, "top_k": k, "context_len": ctx} for d, v, k in combos],
                  [probes.overhead(d, v, k) for d, v, k in combos])
        # the n-gram phase is Python and numpy on the host (between the drafter's last host copy and
        # the verify forward): the CPU clock times it on every device
        bar.set_postfix_str("n-gram")
        ngram_ctx = spec.ngram_context_lens()
        group("ngram", [{"context_len": c} for c in ngram_ctx], [probes.ngram(c, spec.max_depth) for c in ngram_ctx],
              split_steps=True, clock=Timer("cpu"), repeats=spec.ngram_repeats, step_key="depth")
        bar.set_postfix_str("policy")
        comps["policy"].append(time_policy(timer, spec.policy_obs_dim))
        bar.update()
        for b in spec.batch_sizes:
            bar.set_postfix_str(f"batch B={b}")
            group("batch_forward", [{"batch": b, "tokens": t, "context_len": spec.batch_context}
                                    for t in spec.batch_tokens],
                  [probes.batch_forward(b, t, spec.batch_context) for t in spec.batch_tokens])
    finally:
        bar.close()
    result.wall_s = time.perf_counter() - t0
    return result
