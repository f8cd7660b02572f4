"""One-command check of the decoder on a GPU: exactness, an H200-class cost model, the cycle breakdown,
and what the simulator makes of it. Made to fit one short device session (8 minutes on CUDA) and to
run the same code paths on a CPU with `--small` (a few minutes; CI runs it).

    python benchmarks/gpu_check.py --out DIR [--device cuda|cpu] [--small] [--traces DIR] [--budget-s 450]

Parts (each has a time budget; a part that would overrun is skipped and says so; a failing part
records its error and the next one runs):
1. correctness with tiny random Llama models in fp32, bf16 and fp16: greedy output equal to
   transformers' greedy output over several (top-k, D, V), V = 0 included, with an `lm` drafter and an
   EAGLE-3 head (a differing token counts as a near-tie flip only where the target's top-two logits are
   within the dtype's tolerance); the KV cache after decoding equal to a fresh prefill; the T > 0
   exact-law test (`realrun.exact_law`, fp32).
2. `ltd profile` of random-init models of real shapes in bf16 (fp32 on CPU): a Llama-3.1-8B-shaped
   target with a matching EAGLE-3 head (32k draft vocabulary), and a Llama-3.2-1B-shaped one: each
   writes its cost-model JSON and profile PNG.
3. the decoder's cycle breakdown on the 8B shape at (D, V) = (8, 60) and (4, 16), contexts 256 and
   2,048: draft, verify, overhead (and its share of the cycle; goal under 5%) and, on CUDA, host
   synchronisations per cycle (torch's sync debug mode, in a second, untimed run).
4. `ltd sim eval` of carried traces (recorded with the default small pair) under the 8B cost model:
   best static, EAGLE-3's setting, the oracle and, when stable-baselines3 imports and time is left,
   LTD policies pretrained there. The acceptance is the small pair's, the costs the 8B shape's.

Random weights are right for timing and exactness (the cost of a forward does not depend on the
values); acceptance rates under random weights mean nothing, and part 4 takes them from traces.
Files written to DIR (at most 8): gpu_check.json, gpu_check.log, cost_model_8b.json, profile_8b.png,
cost_model_1b.json, profile_1b.png. The JSON schema is in docs/gpu.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project importable from the carried tree, no install step

from ltd_sim.errors import LTDError  # noqa: E402
from ltd_sim.io import write_bytes, write_json, write_text  # noqa: E402

SCHEMA_VERSION = 1

#: real shapes (Llama-3.1-8B and Llama-3.2-1B); `--small` uses the SMALL ones
SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True),
}
SMALL_SHAPES = {
    "8b": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
               num_key_value_heads=2, vocab_size=4096, rope_theta=500000.0, tie_word_embeddings=False),
    "1b": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=4096, rope_theta=500000.0, tie_word_embeddings=True),
}
HEAD_DRAFT_VOCAB = {"8b": 32000, "small": 1024}  # EAGLE-3's published 8B heads use a 32k draft vocabulary
#: (top-k, D, V) of the greedy exactness runs: a chain, trees, the EAGLE-3 default, V = 0
GREEDY_SETTINGS = [(1, 4, 4), (4, 5, 16), (10, 8, 60), (4, 4, 0)]
#: a differing greedy token is a legitimate flip only below this top-two logit gap
NEAR_TIE = {torch.float32: 1e-3, torch.bfloat16: 0.25, torch.float16: 0.05}
#: KV cache after decoding vs a fresh prefill: atol = rtol
KV_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
BREAKDOWN_SETTINGS = [(8, 60), (4, 16)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FILES = ("gpu_check.json", "gpu_check.log", "cost_model_8b.json", "profile_8b.png", "cost_model_1b.json",
         "profile_1b.png")


class Check:
    """The run's clock, log and JSON: every part writes its results as soon as it has them."""

    def __init__(self, out: Path, budget_s: float, device: torch.device, small: bool):
        self.out, self.budget_s, self.device, self.small = out, budget_s, device, small
        self.t0 = time.perf_counter()
        self.lines: list[str] = []
        self.report = {"schema_version": SCHEMA_VERSION, "device": device_info(device), "small": small,
                       "budget_s": budget_s, "parts": {}, "notes": [
                           "random-init weights: right for timing and exactness; acceptance under random "
                           "weights means nothing (part 4 takes acceptance from traces of the default pair)"]}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {msg}"
        print(line, flush=True)
        self.lines.append(line)

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 2)
        write_json(self.out / "gpu_check.json", self.report)
        write_text(self.out / "gpu_check.log", "\n".join(self.lines) + "\n")

    def part(self, name: str, need_s: float, fn) -> None:
        """Run one part if `need_s` seconds are left; record its result, or why it did not run."""
        if self.left() < need_s:
            self.report["parts"][name] = {"status": "skipped", "reason": f"{self.left():.0f} s left, needs ~{need_s:.0f} s"}
            self.log(f"{name}: skipped (time)")
        else:
            self.log(f"{name}: start")
            t = time.perf_counter()
            try:
                result = fn()
                self.report["parts"][name] = {"status": "ok", "seconds": round(time.perf_counter() - t, 2), **result}
            except Exception as exc:  # a failing part must not lose the others' results
                self.report["parts"][name] = {"status": "error", "seconds": round(time.perf_counter() - t, 2),
                                              "error": f"{type(exc).__name__}: {exc}",
                                              "traceback": traceback.format_exc()[-2000:]}
                self.log(f"{name}: ERROR {type(exc).__name__}: {exc}")
            self.log(f"{name}: {self.report['parts'][name]['status']}")
        self.save()


def device_info(device: torch.device) -> dict:
    import transformers

    info = {"device": str(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def tiny_llama(device, dtype, vocab: int = 256, layers: int = 4, hidden: int = 64, seed: int = 0, sharpen: float = 8.0):
    """A tiny random Llama, its output sharpened so that greedy choices are decisive."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4 if hidden >= 64 else 2, num_key_value_heads=2 if hidden >= 64 else 1,
                      max_position_embeddings=512, eos_token_id=None, bos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model.to(device=device, dtype=dtype)


def noisy_copy(model, noise: float, seed: int = 1):
    """A draft that agrees with `model` often but not always: its weights plus Gaussian noise."""
    import copy

    torch.manual_seed(seed)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * noise * p.float().std().clamp_min(1e-3).to(p.dtype))
    return draft.eval()


def random_model(shape: dict, device, dtype, max_positions: int = 8192):
    """A random-init Llama of a real shape, made directly on `device` (an 8B model in seconds on a GPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, max_position_embeddings=max_positions, rms_norm_eps=1e-5, eos_token_id=None,
                      bos_token_id=None, pad_token_id=None)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(before)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():  # explicit init: whatever transformers' lazy init does, no uninitialised memory
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.fill_(1.0)
    return model


def head_drafter(target, draft_vocab: int):
    from realrun.drafters import Eagle3Drafter
    from realrun.eagle3 import random_head

    vocab = target.config.vocab_size
    return Eagle3Drafter(random_head(target, min(draft_vocab, vocab)), vocab)


def free(*models) -> None:
    for m in models:
        del m
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Part 1: correctness
# --------------------------------------------------------------------------------------------

def hf_greedy(model, prompt: torch.Tensor, n: int) -> list[int]:
    out = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def compare_greedy(model, prompt, ours: list[int], ref: list[int], tie: float) -> dict:
    """Equal, or a flip at a measured near-tie of the target's top-two logits (then the texts differ)."""
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            ids = torch.cat((prompt, torch.tensor(ref[:i], dtype=torch.long, device=prompt.device)))
            top2 = model(ids[None]).logits[0, -1].float().topk(2).values
            gap = float(top2[0] - top2[1])
            return {"equal": False, "first_diff": i, "gap": gap, "ok": gap < tie}
    return {"equal": len(ours) == len(ref), "first_diff": None, "gap": None, "ok": len(ours) == len(ref)}


@torch.no_grad()
def kv_matches_prefill(model, cache, committed: torch.Tensor, tol: float) -> dict:
    from transformers import DynamicCache

    from realrun.kv_cache import cache_kwargs

    fresh = DynamicCache()
    model(committed[None], **cache_kwargs(model, fresh), use_cache=True)
    worst = 0.0
    n = committed.numel()  # a last cycle cut short by max_new_tokens leaves entries past the output
    ok = cache.get_seq_length() >= n
    for ours, ref in zip(cache.layers, fresh.layers):
        for a, b in ((ours.keys[..., :n, :], ref.keys), (ours.values[..., :n, :], ref.values)):
            ok = ok and a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=tol, rtol=tol)
            if a.shape == b.shape:
                worst = max(worst, float((a.float() - b.float()).abs().max()))
    return {"ok": bool(ok), "max_abs_diff": worst, "tolerance": tol}


def correctness(check: Check, new_tokens: int, law_samples: int) -> dict:
    from ltd_sim.control import StaticDepth, StaticSize
    from realrun.decoder import DecodeConfig, generate
    from realrun.drafters import LMDrafter
    from realrun.exact_law import sampling_law_check

    dev = check.device
    prompts = [torch.tensor([5, 99, 17, 200, 3, 64, 128, 77, 31, 250, 9, 180], device=dev),
               torch.arange(40, 52, device=dev)]
    out: dict = {"greedy": [], "kv_equals_prefill": {}}
    for name, dtype in DTYPES.items():
        target = tiny_llama(dev, dtype)
        draft = noisy_copy(target, 0.15)
        for prompt in prompts:
            ref = hf_greedy(target, prompt, new_tokens)
            runs = [("lm", s) for s in GREEDY_SETTINGS] + [("eagle3", GREEDY_SETTINGS[1])]
            for kind, (k, d, v) in runs:
                drafter = LMDrafter(draft, 256) if kind == "lm" else head_drafter(target, 128)
                r = generate(target, prompt, drafter, DecodeConfig(max_new_tokens=new_tokens, top_k=k, max_depth=d),
                             StaticDepth(d), StaticSize(v))
                row = {"dtype": name, "drafter": kind, "top_k": k, "depth": d, "size": v, "tau": round(r.tau, 3),
                       **compare_greedy(target, prompt, r.token_ids, ref, NEAR_TIE[dtype])}
                out["greedy"].append(row)
            ar = generate(target, prompt, None, DecodeConfig(max_new_tokens=new_tokens))
            out["greedy"].append({"dtype": name, "drafter": "none", "top_k": 0, "depth": 0, "size": 0, "tau": 1.0,
                                  **compare_greedy(target, prompt, ar.token_ids, ref, NEAR_TIE[dtype])})
        from realrun.kv_cache import PreallocatedCache

        cache = PreallocatedCache.for_model(target, capacity=16, step=16)  # grows during the run
        r = generate(target, prompts[0], LMDrafter(draft, 256), DecodeConfig(max_new_tokens=new_tokens, top_k=4, max_depth=5),
                     StaticDepth(5), StaticSize(16), cache=cache)
        committed = torch.cat((prompts[0], torch.tensor(r.token_ids[:-1], device=dev)))
        out["kv_equals_prefill"][name] = {**kv_matches_prefill(target, cache, committed, KV_TOLERANCE[dtype]),
                                          "tau": round(r.tau, 3), "capacity": cache.capacity}
        check.log(f"  {name}: greedy {sum(g['ok'] for g in out['greedy'] if g['dtype'] == name)}/"
                  f"{sum(1 for g in out['greedy'] if g['dtype'] == name)} ok, "
                  f"kv {'ok' if out['kv_equals_prefill'][name]['ok'] else 'MISMATCH'}")
        free(target, draft)
    # the exact-law test: a 6-token vocabulary, enumerable
    law_target = tiny_llama(dev, torch.float32, vocab=6, layers=2, hidden=32, sharpen=3.0)
    law = sampling_law_check(law_target, noisy_copy(law_target, 0.3), torch.tensor([1, 2, 3, 4], device=dev),
                             n=law_samples)
    out["sampling_law"] = {"passed": law.passed, "tv_speculative": law.tv_speculative, "tv_plain": law.tv_plain,
                           "bound": law.bound, "outcomes": law.outcomes, "samples": law.samples,
                           "accepted_draft_tokens": law.accepted_draft_tokens}
    check.log(f"  sampling law: TV spec {law.tv_speculative:.4f}, plain {law.tv_plain:.4f} < {law.bound:.4f}: "
              f"{'pass' if law.passed else 'FAIL'}")
    out["passed"] = (all(g["ok"] for g in out["greedy"]) and all(v["ok"] for v in out["kv_equals_prefill"].values())
                     and law.passed)
    return out


# --------------------------------------------------------------------------------------------
# Part 2: profiles of real shapes; part 3: the cycle breakdown
# --------------------------------------------------------------------------------------------

def profile(check: Check, tag: str, target, drafter, draft_id: str, preset: str) -> dict:
    from profiler import SweepSpec, make_fingerprint, profile_device
    from profiler.timing import Timer
    from realrun.probes import DecoderProbes

    spec = SweepSpec.preset(preset)
    if check.small:  # the traces' top-k (10) and depth (8) must be inside the sweep, even when small
        spec = replace(spec, top_ks=(4, 10), max_depth=8, context_lens=(64, 256), overhead_context=64)
    param = next(target.parameters())
    fingerprint = make_fingerprint(param.device, param.dtype, f"random-init llama {tag} shape", draft_id,
                                   "random-init", 10)
    with tempfile.TemporaryDirectory() as tmp:
        probes = DecoderProbes(target, drafter, target.config.max_position_embeddings)
        model = profile_device(probes, spec, Timer(check.device), fingerprint, tmp, progress=False, plots=True)
        write_bytes(check.out / f"cost_model_{tag}.json", (Path(tmp) / "cost_model.json").read_bytes())
        png = Path(tmp) / "plots" / "profile.png"
        if png.is_file():
            write_bytes(check.out / f"profile_{tag}.png", png.read_bytes())
    cv = {name: c.get("mape") for name, c in model.cv_errors().items()}
    example = {f"{d},{v}": {str(c): model.predict_cycle(d, v, c, 10) for c in (256, 2048)}
               for d, v in BREAKDOWN_SETTINGS}
    check.log(f"  {tag}: cost model written; predicted cycle (8,60) at 2048: {1e3 * example['8,60']['2048']:.1f} ms")
    return {"cost_model": f"cost_model_{tag}.json", "plot": f"profile_{tag}.png", "preset": spec.name,
            "fingerprint": model.fingerprint, "cv_mape": cv, "predicted_cycle_s": example}


def breakdown(check: Check, target, drafter, contexts: list[int], new_tokens: int) -> dict:
    from realrun.probes import cycle_breakdown

    rows = []
    vocab = target.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    for c in contexts:
        prompt = torch.randint(0, vocab, (c,), generator=gen).to(check.device)
        for d, v in BREAKDOWN_SETTINGS:
            cycle_breakdown(target, drafter, prompt[:64], d, v, 4)  # warm-up at this setting
            timed = cycle_breakdown(target, drafter, prompt, d, v, new_tokens)
            row = timed.to_json()
            if check.device.type == "cuda":  # sync counting slows the run: a second, untimed run
                counted = cycle_breakdown(target, drafter, prompt, d, v, max(4, new_tokens // 4), count_syncs=True)
                row["host_syncs_per_cycle"] = counted.host_syncs_per_cycle
                row["clock_syncs_per_cycle"] = counted.clock_syncs_per_cycle
            rows.append(row)
            check.log(f"  ({d},{v}) ctx {c}: draft {1e3 * timed.draft_s:.2f} ms, verify {1e3 * timed.verify_s:.2f} ms, "
                      f"overhead {1e3 * timed.overhead_s:.2f} ms ({100 * timed.overhead_share:.1f}%), "
                      f"host syncs/cycle {row['host_syncs_per_cycle']}")
    return {"rows": rows, "max_overhead_share": max(r["overhead_share"] for r in rows),
            "goal_overhead_share": 0.05}


def real_shapes(check: Check, shapes: dict, dtype, preset: str, contexts: list[int], new_tokens: int) -> None:
    """Parts 2 and 3 on the 8B shape (one model load), then part 2 on the 1B shape."""
    draft_vocab = HEAD_DRAFT_VOCAB["small" if check.small else "8b"]
    state: dict = {}

    def load_8b() -> dict:
        target = random_model(shapes["8b"], check.device, dtype)
        drafter = head_drafter(target, draft_vocab)
        sync(check.device)
        state.update(target=target, drafter=drafter)
        params = sum(p.numel() for p in target.parameters())
        return {"parameters": params, "head_parameters": sum(p.numel() for p in drafter.head.parameters())}

    check.part("load_8b", 30 if not check.small else 5, load_8b)
    if "target" in state:
        check.part("profile_8b", 90 if not check.small else 20,
                   lambda: profile(check, "8b", state["target"], state["drafter"], f"eagle3:random:dv{draft_vocab}", preset))
        check.part("cycle_breakdown_8b", 60 if not check.small else 10,
                   lambda: breakdown(check, state["target"], state["drafter"], contexts, new_tokens))
        free(state.pop("target"), state.pop("drafter"))

    def profile_1b() -> dict:
        target = random_model(shapes["1b"], check.device, dtype)
        drafter = head_drafter(target, draft_vocab)
        try:
            return profile(check, "1b", target, drafter, f"eagle3:random:dv{draft_vocab}", preset)
        finally:
            free(target, drafter)

    check.part("profile_1b", 60 if not check.small else 15, profile_1b)


# --------------------------------------------------------------------------------------------
# Part 4: the simulator under the measured cost model
# --------------------------------------------------------------------------------------------

def sim_eval(check: Check, traces: Path, pretrain_s: float) -> dict:
    from realrun.simulate import run_sim_eval

    cost = check.out / "cost_model_8b.json"
    if not cost.is_file():
        raise LTDError("no cost_model_8b.json: the 8B profile did not run")
    if not traces.is_dir():
        raise LTDError(f"no traces at {traces} (run benchmarks/device_wheels.sh, or pass --traces)")
    out: dict = {"traces": str(traces), "note": "acceptance from the default small pair's traces, costs from "
                 "the 8B-shaped random-init profile of this device"}
    report = run_sim_eval(str(traces), str(cost), "all")
    out["methods"] = {k: summarize(v) for k, v in report["methods"].items()}
    out["positions"] = report["positions"]
    check.log("  " + ", ".join(f"{k} {v['tokens_per_s']:.1f} tok/s" for k, v in out["methods"].items()
                               if k in ("autoregressive", "best_static", "eagle3", "oracle")))
    out["ltd"] = pretrain_and_eval(check, traces, cost, pretrain_s)
    return out


def summarize(row: dict) -> dict:
    return {k: v for k, v in row.items() if isinstance(v, (int, float, str)) or v is None}


def pretrain_and_eval(check: Check, traces: Path, cost: Path, pretrain_s: float) -> dict:
    """LTD policies pretrained under this cost model, if stable-baselines3 imports and time is left."""
    try:
        import gymnasium  # noqa: F401
        import stable_baselines3  # noqa: F401
    except ImportError as exc:
        return {"status": "skipped", "reason": f"{exc} (carry the wheels: benchmarks/device_wheels.sh)"}
    if check.left() < pretrain_s + 15:
        return {"status": "skipped", "reason": f"{check.left():.0f} s left"}
    from ltd_sim.train import PretrainConfig, pretrain
    from realrun.simulate import load_tables, run_sim_eval

    steps = 20_000 if not check.small else 2_048
    cfg = PretrainConfig(stage1_steps=steps, stage2_steps=steps, rounds=1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        result = pretrain(load_tables(str(traces), str(cost), "train"), load_tables(str(traces), str(cost), "val"),
                          tmp, cfg, log=check.log)
        report = run_sim_eval(str(traces), str(cost), "all", policy=str(Path(tmp) / "policies"))
    ltd = summarize(report["methods"]["ltd"])
    check.log(f"  ltd {ltd['tokens_per_s']:.1f} tok/s after {time.perf_counter() - t:.0f} s of pretraining")
    return {"status": "ok", "steps_per_phase": steps, "best_phase": result.best_phase, "seconds": result.seconds, **ltd}


# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the (at most 8) result files")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--small", action="store_true", help="small shapes and sweeps (a few minutes on a CPU)")
    ap.add_argument("--traces", default=str(ROOT / ".device" / "traces"), help="trace folder for part 4")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget (default: 450 on CUDA, 600 small)")
    ap.add_argument("--preset", default=None, help="profile sweep preset (default: quick; tiny with --small)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    args = ap.parse_args(argv)
    from realrun.loading import set_threads

    set_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LTDError("--device cuda: no CUDA device is visible")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p.name for p in out.iterdir() if p.name in FILES]
    if stale:
        print(f"note: replacing {', '.join(stale)} in {out}", file=sys.stderr)
    budget = args.budget_s or (450.0 if device.type == "cuda" and not args.small else 600.0)
    check = Check(out, budget, device, args.small)
    check.log(f"gpu_check on {check.report['device']['name']} ({device}), torch {torch.__version__}, budget {budget:.0f} s")
    small = args.small
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    check.part("correctness", 20, lambda: correctness(check, 16 if small else 40, 300 if small else 1500))
    real_shapes(check, SMALL_SHAPES if small else SHAPES, dtype, args.preset or ("tiny" if small else "quick"),
                [128, 512] if small else [256, 2048], 8 if small else 32)
    check.part("sim_eval", 5, lambda: sim_eval(check, Path(args.traces), 20 if small else 90))
    parts = check.report["parts"]
    check.report["ok"] = all(p["status"] == "ok" for p in parts.values()) and bool(
        parts.get("correctness", {}).get("passed"))
    check.log(f"done in {check.elapsed():.0f} s: " + ", ".join(f"{k} {v['status']}" for k, v in parts.items()))
    check.save()
    return 0 if check.report["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LTDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
