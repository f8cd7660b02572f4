"""Simulator core on synthetic traces (numpy-made trees): table arithmetic, envs, oracle, trace files."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from ltd_sim import envs  # noqa: F401  (registers the envs)
from ltd_sim.baselines import EAGLE3, evaluate, transformers_schedule
from ltd_sim.cost_model import AnalyticCostModel
from ltd_sim.errors import LTDError
from ltd_sim.sim import SimTables, oracle, simulate, simulate_tables, static_grid
from ltd_sim.trace import load_sequence, load_traces, save_sequence, sequence_path
from ltd_sim.synthetic import synthetic_sequence
from ltd_sim.tree import accepted_length_on_trace, accepted_length_table

@pytest.fixture(scope="module")
def traces():
    rng = np.random.default_rng(0)
    return [synthetic_sequence(rng, length=int(rng.integers(20, 50))) for _ in range(6)]


@pytest.fixture(scope="module")
def tables(traces):
    return SimTables.build(traces, AnalyticCostModel())


def test_table_matches_tree_arithmetic(traces):
    seq = traces[0]
    sizes = [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 60, 500]
    for p in range(seq.num_positions):
        tree, cont = seq.tree(p), seq.continuation(p)
        table = accepted_length_table(tree, cont, sizes)
        for d in range(1, tree.depth + 1):
            for j, v in enumerate(sizes):
                assert table[d - 1, j] == accepted_length_on_trace(tree, d, v, cont)


def test_env_checker(tables):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for env in (gym.make("ltd/Depth-v0", tables=tables, partner=4),
                    gym.make("ltd/Size-v0", tables=tables),
                    gym.make("ltd/Size-v0", tables=tables, partner=np.full(tables.num_positions, 3)),
                    gym.make("ltd/Depth-v0", tables=tables, partner=np.zeros((tables.num_positions, 6), int),
                             reward="throughput")):
            check_env(env.unwrapped, skip_render_check=True)


def test_vec_env_episode_is_a_generation(tables):
    """Random play in the vectorised depth env commits exactly each sequence's tokens, and the 'time'
    reward sums to L - rate * T: L the sequence's length, T the summed cost of the cycles it took."""
    size_index, rate = 5, 50.0
    env = envs.SimVecEnv("depth", tables, size_index, n=8, seed=1, rate=rate)
    env.reset()
    core = env.core
    rng = np.random.default_rng(0)
    returns, seconds, finished = np.zeros(8), np.zeros(8), 0
    for _ in range(3000):
        seq, pos, depth = core.seq.copy(), core.pos.copy(), core.depth.copy()
        actions = rng.integers(0, 2, size=8)
        cycle_ends = (actions == envs.STOP) | (depth >= tables.dmax[pos])
        p, d = pos[cycle_ends], depth[cycle_ends]  # depth 0: the "no draft" decision, a plain decoding step
        seconds[cycle_ends] += np.where(d >= 1, tables.cost[p, np.maximum(d, 1) - 1, size_index], tables.ar_cost[p])
        _, r, done, infos = env.step(actions)
        returns += r
        for i in np.flatnonzero(done):
            assert "terminal_observation" in infos[i]
            length = tables.seq_end[seq[i]] - tables.seq_start[seq[i]]
            assert returns[i] == pytest.approx(length - rate * seconds[i], rel=1e-4, abs=1e-3)
            returns[i] = seconds[i] = 0
            finished += 1
    assert finished > 20


def test_oracle_never_beaten(tables):
    orc, best_d, best_g = oracle(tables)
    rng = np.random.default_rng(0)
    rivals = list(static_grid(tables).values())
    rivals += [simulate_tables(tables, rng.integers(1, 7, tables.num_positions),
                               rng.integers(0, 13, (tables.num_positions, 6))) for _ in range(20)]
    rivals += [transformers_schedule(tables, g) for g in (0, 4, 12)]
    for r in rivals:
        assert np.all(r.time >= orc.time - 1e-12)
        assert r.tokens_per_s <= orc.tokens_per_s + 1e-9
    # the oracle's own schedule, replayed, reproduces its time
    replay = simulate(tables, lambda p, s: (best_d[p], best_g[p]))
    np.testing.assert_allclose(replay.time, orc.time)
    report = evaluate(tables)
    for name, row in report["methods"].items():
        assert row["oracle_ratio"] <= 1 + 1e-9, name
    eagle = report["methods"]["eagle3"]
    assert (eagle["depth"], eagle["size"]) == (min(EAGLE3[0], tables.max_depth), EAGLE3[1])


def test_trace_roundtrip_and_corruption(traces, tmp_path):
    path = sequence_path(tmp_path, 0)
    save_sequence(path, traces[0])
    back = load_sequence(path)
    for name in ("tokens", "parents", "scores", "steps", "offsets", "output", "context_lens"):
        np.testing.assert_array_equal(getattr(back, name), getattr(traces[0], name))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(LTDError, match="corrupted trace file"):
        load_traces(tmp_path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(LTDError, match="corrupted trace file"):
        load_sequence(path)
    # a foreign version
    import io

    buf = io.BytesIO(raw)
    with np.load(buf) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(bytes(arrays.pop("header")).decode())
    header["version"] = 99
    out = io.BytesIO()
    np.savez(out, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    path.write_bytes(out.getvalue())
    with pytest.raises(LTDError, match="format version 99"):
        load_sequence(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LTDError, match="no trace files"):
        load_traces(tmp_path / "empty")


def test_sim_eval_cli(traces, tmp_path, capsys):
    from realrun.cli import main

    for i, seq in enumerate(traces):
        save_sequence(sequence_path(tmp_path / "tr", i), seq)
    (tmp_path / "cost.json").write_text(json.dumps(AnalyticCostModel().to_json()))
    assert main(["sim", "eval", "--cost", str(tmp_path / "cost.json"), "--traces", str(tmp_path / "tr"),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    methods = report["methods"]
    for name in ("oracle", "eagle3", "best_static", "confidence_stop", "confidence_skip", "entropy_stop",
                 "transformers_heuristic"):
        assert set(methods[name]) >= {"tokens_per_s", "tau", "oracle_ratio"}
        assert methods[name]["tokens_per_s"] <= methods["oracle"]["tokens_per_s"] * (1 + 1e-9)
    # skipping (V = 0) when unsure is a superset of never skipping (skip threshold 0)
    assert methods["confidence_skip"]["tokens_per_s"] >= methods["confidence_stop"]["tokens_per_s"] * (1 - 1e-9)
    assert "depth" in methods["best_static"] and "size" in methods["best_static"]
    assert methods["oracle"]["oracle_ratio"] == 1.0
    (tmp_path / "tr" / "seq_00002.npz").write_bytes(b"garbage")
    assert main(["sim", "eval", "--cost", str(tmp_path / "cost.json"), "--traces", str(tmp_path / "tr")]) == 2
    err = capsys.readouterr().err
    assert "corrupted trace file" in err and len(err.strip().splitlines()) == 1


def test_serving_simulation(tables, tmp_path):
    from ltd_sim.serving import Schedule, plot, sweep

    cost = AnalyticCostModel()
    schedules = [Schedule.static(tables, 1, 0), Schedule.static(tables, 6, 60)]
    rows = sweep(tables, cost, schedules, [1.0, 20.0], n_requests=12, max_batch=4)
    assert len(rows) == 4
    for r in rows:
        assert r["goodput_tokens_per_s"] > 0 and r["latency_p50"] <= r["latency_p90"] <= r["latency_p99"]
    by = {(r["schedule"], r["rate"]): r for r in rows}
    assert by[("static(1,0)", 20.0)]["latency_p90"] > by[("static(1,0)", 1.0)]["latency_p90"]  # load queues
    plot(rows, tmp_path / "serve.png")
    assert (tmp_path / "serve.png").read_bytes()[:4] == b"\x89PNG"


class _BatchPricedCost(AnalyticCostModel):
    """The analytic model plus a batch cost far from its single-sequence verify cost."""

    has_batch_forward = True

    def batch_forward(self, batch: int, tokens: int) -> float:
        return 1.0 + 0.01 * batch * tokens


def test_serving_prices_batched_verification_with_the_batch_cost(tables):
    """A cost model's `batch_forward` (the profiler's name for it) prices the batched verify forward:
    requests padded to the longest verify set. (The serving simulation once looked for another name,
    so the fitted batch cost was never used.)"""
    from ltd_sim.serving import Schedule, batch_time

    schedule = Schedule.static(tables, 3, 8)
    starts = [int(tables.seq_start[s]) for s in range(3)]
    picks = [(p, *schedule.choose(tables, p)) for p in starts]
    cost = _BatchPricedCost()
    sizes = [int(tables.vsize[p, d - 1, g]) for p, d, g in picks]
    ctx = int(np.mean([int(tables.context[p]) for p in starts]))
    draft = sum(cost.draft_step(s, tables.top_k, ctx) for s in range(1, max(d for _, d, _ in picks) + 1))
    overhead = sum(cost.overhead(d, v, tables.top_k) for (_, d, _), v in zip(picks, sizes))
    expected = draft + cost.batch_forward(len(picks), max(sizes) + 1) + overhead
    assert batch_time(cost, tables, picks) == pytest.approx(expected)
    assert batch_time(AnalyticCostModel(), tables, picks) < expected - 0.5  # without a batch cost: one long verify
