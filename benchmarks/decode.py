"""Decoder speed against transformers, side by side in one run (ratios; this machine is noisy).

1. Our autoregressive path vs `model.generate` (greedy) on the same target: ours must not be slower.
2. Our chain decoding (top-k 1, depth n, V n) with an `lm` draft vs transformers assisted generation
   with the same draft and the same fixed number of draft tokens (constant schedule, no confidence
   threshold).

The `lm` drafts are the target's first layers (layer-skip drafts sharing its vocabulary), made on the
spot from the target's weights: a shallow one (cheap, rarely right) and the full stack (the target as
its own draft: every token accepted), so that both ends of the acceptance range are measured. Every
measurement is interleaved across methods and repeated; we report medians and ratios of the end-to-end
rate (prefill included: transformers' `generate` has no prefill boundary to read; `realrun.measure`),
and check that all outputs agree. Runs against the installed package (`pip install -e .`).

    python benchmarks/decode.py [--target PATH] [--tokens 64] [--repeats 3] [--draft-layers 8,30] [--n-draft 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ltd_sim.control import StaticDepth, StaticSize
from realrun.decoder import DecodeConfig, generate
from realrun.drafters import LMDrafter
from realrun.loading import set_threads
from realrun.measure import END_TO_END_RATE, RATE_LABELS
from realrun.models import (
    encode_prompt,
    layer_skip_draft,
    load_causal_lm,
    resolve_target,
)

PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain in three sentences why the sky is blue.",
    "List five tips for writing clear technical documentation.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]


def hf_generate(model, ids, n, assistant=None):
    attn = torch.ones_like(ids)
    kwargs = dict(do_sample=False, max_new_tokens=n, min_new_tokens=n, attention_mask=attn,
                  pad_token_id=model.generation_config.pad_token_id or 0)
    if assistant is not None:
        kwargs["assistant_model"] = assistant
    out = model.generate(ids, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--draft-layers", default="8,30", help="comma-separated layer counts of the lm drafts")
    ap.add_argument("--n-draft", type=int, default=4)
    args = ap.parse_args()
    set_threads()
    tgt = load_causal_lm(resolve_target(args.target))
    model, tok = tgt.model, tgt.tokenizer
    n, k = args.tokens, args.n_draft
    chain = DecodeConfig(max_new_tokens=n, top_k=1, max_depth=k)
    methods = {
        "hf_generate": lambda ids: hf_generate(model, ids, n),
        "ours_ar": lambda ids: generate(model, ids[0], None, DecodeConfig(max_new_tokens=n)).token_ids,
    }
    layer_counts = [int(x) for x in args.draft_layers.split(",")]
    for layers in layer_counts:
        draft = layer_skip_draft(model, layers)
        draft.generation_config.num_assistant_tokens = k
        draft.generation_config.num_assistant_tokens_schedule = "constant"
        draft.generation_config.assistant_confidence_threshold = 0.0
        methods[f"hf_assisted_L{layers}"] = lambda ids, d=draft: hf_generate(model, ids, n, assistant=d)
        methods[f"ours_chain_L{layers}"] = lambda ids, d=draft: generate(
            model, ids[0], LMDrafter(d, tgt.vocab_size), chain, StaticDepth(k), StaticSize(k)).token_ids
    times: dict[str, list[float]] = {m: [] for m in methods}
    outputs: dict[str, list[list[int]]] = {m: [] for m in methods}
    ids_list = [torch.tensor([encode_prompt(tok, p)]) for p in PROMPTS]
    for fn in methods.values():  # warm-up
        fn(ids_list[0])
    for rep in range(args.repeats):
        for ids in ids_list:
            for name, fn in methods.items():
                dt, out = timed(lambda: fn(ids))
                times[name].append(n / dt)
                if rep == 0:
                    outputs[name].append(out)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"target {tgt.path.name}, {n} new tokens, {len(PROMPTS)} prompts x {args.repeats} repeats, "
          f"{torch.get_num_threads()} threads; lm drafts = first {args.draft_layers} layers, {k} draft tokens; "
          f"tok/s = {RATE_LABELS[END_TO_END_RATE]}")
    for m in methods:
        print(f"  {m:12s} median {med[m]:7.2f} tok/s")
    print(f"ours_ar / hf_generate        = {med['ours_ar'] / med['hf_generate']:.3f}")
    for layers in layer_counts:
        ours, hf = med[f"ours_chain_L{layers}"], med[f"hf_assisted_L{layers}"]
        print(f"ours_chain_L{layers} / hf_assisted_L{layers} = {ours / hf:.3f}   (ours_chain / ours_ar = "
              f"{ours / med['ours_ar']:.3f})")
    same = [outputs["hf_generate"][i] == outputs[m][i] for m in methods for i in range(len(PROMPTS))]
    print(f"outputs identical to hf_generate: {sum(same)}/{len(same)}")


if __name__ == "__main__":
    main()
