"""Per-cycle overhead against context: the pre-allocated KV caches vs the former DynamicCache path.

The overhead of a cycle is its time minus the draft and verify forwards (selection, acceptance, KV
compaction, the drafter's commit; `CycleRecord.overhead_s`). Before the pre-allocated caches, every
cycle that kept a non-prefix path concatenated the whole KV cache of every layer, so the overhead grew
with the context. This benchmark measures, in one run and interleaved, at two contexts (default 256
and 2,048 prompt tokens):

- the speculative path (the default pair: target + its EAGLE-3 head) at static (depth, V) settings,
  with the decoder's cache ("new") and with the former path ("old": a `DynamicCache` whose
  `keep_entries` concatenates, and an EAGLE-3 head cache that concatenates on every append);
- the autoregressive path (no drafter), new vs old: its decode rate must not drop.

The prompts are the project's own documentation (natural text, so that draft tokens are accepted and
non-prefix paths are kept), cut to the context length. Reports medians over repeats of per-cycle
medians, the ratio overhead(long)/overhead(short) for both paths (goal: <= 1.2 for the new one), and
writes a Markdown table (default docs/cycle_overhead.md).

    LTD_CACHE=/tmp/demo_cache3 python benchmarks/cycle_overhead.py [--contexts 256,2048] [--settings 8x60,4x16]
        [--tokens 32] [--repeats 3] [--threads 2] [--out docs/cycle_overhead.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from ltd_sim.io import write_text
from realrun.decoder import DecodeConfig, generate
from realrun.eagle3 import HeadCache
from realrun.loading import load_pair, set_threads
from realrun.probes import cycle_breakdown

ROOT = Path(__file__).resolve().parents[1]
OVERHEADS = {"overhead_s": "median", "overhead_mean_s": "mean", "overhead_accepting_s": "accepting cycles"}


class ConcatCache(DynamicCache):
    """The former target cache: transformers' DynamicCache (a concatenation per forward), and a
    concatenation of every layer's whole cache whenever a cycle kept a non-prefix path."""

    def keep_entries(self, start: int, keep_local: list[int]) -> None:
        total = self.get_seq_length()
        if keep_local == list(range(len(keep_local))):
            extra = total - start - len(keep_local)
            if extra > 0:
                self.crop(-extra)
            return
        index = torch.as_tensor([start + i for i in keep_local], device=self.layers[0].keys.device)
        for layer in self.layers:
            layer.keys = torch.cat((layer.keys[..., :start, :], layer.keys.index_select(-2, index)), dim=-2)
            layer.values = torch.cat((layer.values[..., :start, :], layer.values.index_select(-2, index)), dim=-2)


class ConcatHeadCache(HeadCache):
    """The former EAGLE-3 head cache: a concatenation of the whole cache on every append."""

    def __init__(self):
        self._keys = self._values = None

    def __len__(self) -> int:
        return 0 if self._keys is None else self._keys.shape[-2]

    def append(self, k, v):
        self._keys = k if self._keys is None else torch.cat((self._keys, k), dim=-2)
        self._values = v if self._values is None else torch.cat((self._values, v), dim=-2)
        return self._keys, self._values

    def crop(self, length: int) -> None:
        if self._keys is not None:
            self._keys, self._values = self._keys[..., :length, :], self._values[..., :length, :]


def doc_prompt(tokenizer, context: int) -> torch.Tensor:
    """A chat prompt of about `context` tokens: the project's documentation, then a question."""
    text = "\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    ids = tokenizer(text)["input_ids"]
    if len(ids) < context:
        ids = (ids * (context // max(1, len(ids)) + 1))
    from realrun.models import encode_prompt

    question = "\n\nSummarise these notes in a few sentences."
    body = ids[: max(1, context - 40)]
    prompt = encode_prompt(tokenizer, tokenizer.decode(body) + question)
    return torch.tensor(prompt[-context:] if len(prompt) > context else prompt)


def set_old_path(drafter, old: bool) -> None:
    """Old: the drafter's head cache concatenates (its class is what `begin` instantiates)."""
    drafter._cache_cls = ConcatHeadCache if old else HeadCache


def ar_rate(target, prompt, tokens: int, old: bool) -> float:
    result = generate(target, prompt, None, DecodeConfig(max_new_tokens=tokens),
                      cache=ConcatCache() if old else None)
    return result.decode_tokens_per_s


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="256,2048")
    ap.add_argument("--settings", default="8x60,4x16", help="comma-separated DEPTHxV static settings")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "cycle_overhead.md"))
    args = ap.parse_args()
    threads = set_threads(args.threads)
    pair = load_pair(None, "default")
    target, drafter, tok = pair.target.model, pair.drafter, pair.target.tokenizer
    contexts = [int(c) for c in args.contexts.split(",")]
    settings = [tuple(int(x) for x in s.split("x")) for s in args.settings.split(",")]
    prompts = {c: doc_prompt(tok, c) for c in contexts}
    spec: dict = {}  # (setting, context, path) -> list of CycleBreakdown
    ar: dict = {}  # (context, path) -> decode rates
    t0 = time.perf_counter()
    for rep in range(args.repeats + 1):  # repeat 0 warms up and is dropped
        for c in contexts:
            for path in ("new", "old"):
                rate = ar_rate(target, prompts[c], args.tokens, path == "old")
                for d, v in settings:
                    set_old_path(drafter, path == "old")
                    b = cycle_breakdown(target, drafter, prompts[c], d, v, args.tokens,
                                        cache=ConcatCache() if path == "old" else None)
                    if rep:
                        spec.setdefault(((d, v), c, path), []).append(b)
                if rep:
                    ar.setdefault((c, path), []).append(rate)
        print(f"repeat {rep}/{args.repeats} done at {time.perf_counter() - t0:.0f} s", flush=True)
    set_old_path(drafter, False)

    def med(key, field):
        values = [getattr(b, field) for b in spec[key] if getattr(b, field) is not None]
        return statistics.median(values) if values else float("nan")

    short, long_ = contexts[0], contexts[-1]
    rows, ratios = [], {}
    for s in settings:
        for path in ("new", "old"):
            for c in contexts:
                k = (s, c, path)
                rows.append([f"({s[0]}, {s[1]})", path, str(prompts[c].numel()), f"{med(k, 'tau'):.2f}",
                             f"{1e3 * med(k, 'draft_s'):.1f}", f"{1e3 * med(k, 'verify_s'):.1f}",
                             f"{1e3 * med(k, 'overhead_s'):.2f}", f"{1e3 * med(k, 'overhead_mean_s'):.2f}",
                             f"{1e3 * med(k, 'overhead_accepting_s'):.2f}", f"{1e3 * med(k, 'total_s'):.1f}"])
            for field in OVERHEADS:
                ratios[(s, path, field)] = med((s, long_, path), field) / med((s, short, path), field)
    ar_rows = [[path, str(prompts[c].numel()), f"{statistics.median(ar[(c, path)]):.1f}"]
               for path in ("new", "old") for c in contexts]
    ratio_rows = [[f"({s[0]}, {s[1]})", OVERHEADS[f], f"{ratios[(s, 'new', f)]:.2f}", f"{ratios[(s, 'old', f)]:.2f}",
                   f"{med((s, long_, 'old'), f) / med((s, long_, 'new'), f):.1f}"]
                  for s in settings for f in OVERHEADS]
    ar_ratio = {c: statistics.median(ar[(c, "new")]) / statistics.median(ar[(c, "old")]) for c in contexts}
    report = "\n\n".join([
        "# Per-cycle overhead against context: pre-allocated KV caches vs the former path",
        f"Made by `benchmarks/cycle_overhead.py` ({pair.target.path.name} + {pair.draft_path.name}, "
        f"{pair.target.device}, {next(target.parameters()).dtype}, {threads} threads, {args.tokens} new tokens "
        f"per generation, medians of {args.repeats} repeats of per-cycle medians, first cycle excluded). "
        "\"old\" = transformers' DynamicCache with a whole-cache concatenation per kept non-prefix path and "
        "a concatenating EAGLE-3 head cache; \"new\" = `realrun.kv_cache` (in-place writes and compaction).",
        "## Speculative cycles (milliseconds per cycle)",
        table(rows, ["(D, V)", "path", "context", "tau", "draft", "verify", "overhead (median)", "overhead (mean)",
                     "overhead (accepting cycles)", "cycle"]),
        "The median cycle often accepts nothing (its KV step is a crop, free on both paths); the mean and "
        "the cycles that accepted draft tokens (which keep non-prefix paths: a compaction) show the "
        "compaction's cost.",
        f"## Overhead at context {long_} / overhead at {short} (goal: new <= 1.2)",
        table(ratio_rows, ["(D, V)", "overhead", "new", "old", f"old / new at {long_}"]),
        "## Autoregressive decode rate (tokens/s after the prefill)",
        table(ar_rows, ["path", "context", "tok/s"]),
        "new / old: " + ", ".join(f"{ar_ratio[c]:.3f} at context {prompts[c].numel()}" for c in contexts),
        "Reproduce: `LTD_CACHE=/tmp/demo_cache3 flock /tmp/ltd_heavy.lock .venv/bin/python "
        f"benchmarks/cycle_overhead.py --contexts {args.contexts} --settings {args.settings} "
        f"--tokens {args.tokens} --repeats {args.repeats} --threads {args.threads}`",
    ]) + "\n"
    write_text(args.out, report)
    print(report)


if __name__ == "__main__":
    main()
