"""Options shared by the commands that load a target and a drafter."""

from __future__ import annotations

import argparse


def add_decode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="local Hugging Face model dir (default: SmolLM2-135M-Instruct)")
    p.add_argument("--draft", default=None, help="draft dir, or 'default' for the cached EAGLE-3 head")
    p.add_argument("--draft-kind", choices=["lm", "eagle3"], default=None)
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
