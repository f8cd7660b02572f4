"""Options shared by the commands that load a target and a drafter."""

from __future__ import annotations

import argparse


def add_decode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="local Hugging Face model dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--draft", default=None, help="draft dir, or 'default' for the cached EAGLE-3 head")
    p.add_argument("--draft-kind", choices=["lm", "eagle3", "ngram"], default=None,
                   help="ngram: n-gram branches from the context alone, no draft model (docs/ngram.md)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 (default: fp32 on CPU, bf16 on CUDA)")


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """--threads N: run as an N-core device (CPU affinity and torch threads; part of the fingerprint)."""
    p.add_argument("--threads", type=int, default=None,
                   help="run on N cores with N torch threads: the device setting fingerprints record "
                        "(default: every core)")


def add_sampling_options(p: argparse.ArgumentParser, default_temperature: float | None = 0.0,
                         default_help: str = "0: greedy") -> None:
    """--temperature T --top-p P: decode by sampling at that setting (T = 0: greedy)."""
    p.add_argument("--temperature", type=float, default=default_temperature,
                   help=f"sample at this temperature (default {default_help}; policies trained at another say so)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature)")


def add_ngram_options(p: argparse.ArgumentParser) -> None:
    """--ngram and its settings: n-gram branches join the drafter's tree (docs/ngram.md)."""
    from realrun.ngram import NgramConfig

    d = NgramConfig()
    p.add_argument("--ngram", action="store_true",
                   help="add n-gram branches (earlier continuations of the context's suffix) to the draft tree")
    p.add_argument("--ngram-min", type=int, default=d.ngram_min, help="shortest suffix that counts as a match")
    p.add_argument("--ngram-max", type=int, default=d.ngram_max, help="longest suffix tried first")
    p.add_argument("--ngram-corpus", default=None,
                   help="ltd-ngram-corpus JSON of earlier outputs' token ids, searched like the context")
    p.add_argument("--ngram-calibration", default=None,
                   help="ltd-ngram-calibration JSON: n-gram node scores (default: a prior, docs/ngram.md)")


def ngram_config(args):
    """The NgramConfig the options ask for: with --ngram or --draft-kind ngram, else None."""
    from realrun.ngram import NgramConfig

    if not args.ngram and args.draft_kind != "ngram":
        return None
    return NgramConfig(ngram_min=args.ngram_min, ngram_max=args.ngram_max, corpus=args.ngram_corpus,
                       calibration=args.ngram_calibration)
