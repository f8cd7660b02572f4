"""A simpy serving simulation: when should speculation shrink as load grows?

Requests arrive as a Poisson process; each replays one recorded generation (a trace sequence) from
its first position. The accelerator is one shared simpy resource running continuous batching: each
batched cycle takes every active request (up to `max_batch`), drafts each one's tree to the depth its
controller picks, and verifies all of them in one batched target forward. Each request's (D, V)
comes from its schedule (a static setting or the LTD policies' decision tables), acceptance from the
trace, exactly as in `ltd_sim.sim`.

Batched time: drafting runs batched too (the deepest request's draft steps). Verification is one
batched target forward: priced by the cost model's `batch_forward(batch, tokens)` when it has one
(`has_batch_forward`; the profiler's fitted model does, from its batch sweep), with every request's
root + V tokens padded to the longest; otherwise as one forward over all requests' verified tokens,
`verify(sum(V + 1) - 1, mean context)`, an approximation that keeps a CPU's step curve. Reports
goodput (tokens/s over the run) and request latency percentiles per load level.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import simpy

from ltd_sim.io import write_bytes
from ltd_sim.sim import SimTables


@dataclass
class Schedule:
    """A request's controller: depth per position [P] and size index per position and depth [P, D]."""

    name: str
    depth_at: np.ndarray
    size_at: np.ndarray

    @classmethod
    def static(cls, t: SimTables, depth: int, size: int, name: str | None = None) -> "Schedule":
        P, D = t.num_positions, t.max_depth
        return cls(name or f"static({depth},{size})", np.full(P, depth), np.full((P, D), t.grid.index(size)))

    def choose(self, t: SimTables, p: int) -> tuple[int, int]:
        """(depth, size index); depth 0: no draft (the root alone is verified)."""
        d = int(min(max(self.depth_at[p], 0), t.dmax[p]))
        return d, int(self.size_at[p, max(d, 1) - 1])


def batched_verify(cost, sizes: list[int], context_len: int) -> float:
    """Seconds for one target forward verifying every request's root + V tree tokens (`sizes`).

    A cost model with a batch cost (`has_batch_forward` true, `batch_forward(batch, tokens)`: the
    profiler's fitted model, measured at one context length) prices `len(sizes)` sequences padded to
    the longest verify set, as a batched forward runs them. Otherwise the batch is priced as one
    sequence of all the verified tokens at `context_len`."""
    if getattr(cost, "has_batch_forward", False):
        return cost.batch_forward(len(sizes), max(sizes) + 1)
    return cost.verify(sum(v + 1 for v in sizes) - 1, context_len)


def batch_time(cost, t: SimTables, picks: list[tuple[int, int, int]]) -> float:
    """Seconds for one batched cycle; picks = [(position, depth, size index)]."""
    depths = [d for _, d, _ in picks]
    sizes = [int(t.vsize[p, d - 1, g]) if d >= 1 else 0 for p, d, g in picks]
    ctx = int(np.mean([int(t.context[p]) for p, _, _ in picks]))
    draft = sum(cost.draft_step(s, t.top_k, ctx) for s in range(1, max(depths) + 1))  # none if no one drafts
    verify = batched_verify(cost, sizes, ctx)
    overhead = sum(cost.overhead(d, v, t.top_k) for d, v in zip(depths, sizes))
    return draft + verify + overhead


def serve(t: SimTables, cost, schedule: Schedule, rate: float, n_requests: int = 64, max_batch: int = 16,
          seed: int = 0) -> dict:
    """Simulate `n_requests` arrivals at `rate` requests/s; returns goodput and latency percentiles."""
    rng = np.random.default_rng(seed)
    env = simpy.Environment()
    accelerator = simpy.Resource(env, capacity=1)
    waiting: list[dict] = []
    arrived = env.event()
    done: list[dict] = []
    tokens = [0]

    def arrivals():
        nonlocal arrived
        for _ in range(n_requests):
            yield env.timeout(rng.exponential(1.0 / rate))
            s = int(rng.integers(t.num_sequences))
            waiting.append({"pos": int(t.seq_start[s]), "end": int(t.seq_end[s]), "arrival": env.now})
            if not arrived.triggered:
                arrived.succeed()

    def accelerator_loop():
        nonlocal arrived
        while len(done) < n_requests:
            if not waiting:
                arrived = env.event()
                yield arrived
                continue
            batch = waiting[:max_batch]
            picks = [(r["pos"], *schedule.choose(t, r["pos"])) for r in batch]
            with accelerator.request() as req:
                yield req
                yield env.timeout(batch_time(cost, t, picks))
            for r, (p, d, g) in zip(batch, picks):
                c = min((int(t.acc[p, d - 1, g]) if d >= 1 else 0) + 1, r["end"] - p)
                r["pos"] += c
                tokens[0] += c
                if r["pos"] >= r["end"]:
                    r["latency"] = env.now - r["arrival"]
                    done.append(r)
                    waiting.remove(r)
            # the rest of the queue rotates to the front next cycle (fair continuous batching)
            for r in batch:
                if r in waiting:
                    waiting.remove(r)
                    waiting.append(r)

    env.process(arrivals())
    env.process(accelerator_loop())
    env.run()
    lat = np.array([r["latency"] for r in done])
    return {"schedule": schedule.name, "rate": rate, "goodput_tokens_per_s": tokens[0] / env.now,
            "latency_p50": float(np.percentile(lat, 50)), "latency_p90": float(np.percentile(lat, 90)),
            "latency_p99": float(np.percentile(lat, 99)), "requests": n_requests}


def sweep(t: SimTables, cost, schedules: list[Schedule], rates, **kw) -> list[dict]:
    return [serve(t, cost, s, r, **kw) for s in schedules for r in rates]


def plot(rows: list[dict], path) -> None:
    """Goodput and p90 latency against the arrival rate, one line per schedule, as a PNG at `path`."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global backend switch

    fig = Figure(figsize=(10, 4))
    a, b = fig.subplots(1, 2)
    for name in dict.fromkeys(r["schedule"] for r in rows):
        rs = [r for r in rows if r["schedule"] == name]
        a.plot([r["rate"] for r in rs], [r["goodput_tokens_per_s"] for r in rs], marker="o", label=name)
        b.plot([r["rate"] for r in rs], [r["latency_p90"] for r in rs], marker="o", label=name)
    a.set(xlabel="arrival rate (requests/s)", ylabel="goodput (tokens/s)", title="goodput")
    b.set(xlabel="arrival rate (requests/s)", ylabel="p90 latency (s)", title="latency", yscale="log")
    a.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes(path, buf.getvalue())
