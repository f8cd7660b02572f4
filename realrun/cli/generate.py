"""`ltd generate`: text from the target, speculative with --draft, else autoregressive."""

from __future__ import annotations

import json
import sys

from ltd_sim import defaults
from realrun.cli.options import add_decode_options, add_ngram_options, ngram_config


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate text (speculative with --draft, --ngram or --draft-kind ngram, "
                                        "else autoregressive)")
    add_decode_options(g)
    add_ngram_options(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--prompt-file")
    g.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    g.add_argument("--max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=defaults.TOP_K)
    g.add_argument("--depth", type=int, default=defaults.MAX_DEPTH)
    g.add_argument("--size", type=int, default=defaults.STATIC_SIZE, help="V: tree tokens verified (0 = root only)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--policy", default=None,
                   help="LTD policy folder (depth.zip, size.zip, spec.json): it picks depth and V per cycle "
                        "(instead of --depth/--size; --top-k and --depth must match its spec)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from realrun.decoder import DecodeConfig
    from realrun.generation import generate_text, read_prompt_file

    text = read_prompt_file(args.prompt_file) if args.prompt_file else args.prompt
    cfg = DecodeConfig(max_new_tokens=args.max_new_tokens, top_k=args.top_k, max_depth=args.depth,
                       temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    done = generate_text(text, cfg, args.target, args.draft, args.draft_kind, args.device, args.dtype,
                         size=args.size, policy_dir=args.policy, chat=not args.no_chat,
                         ngram=ngram_config(args))
    for note in done.notes:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(done.to_json()))
    else:
        print(done.text)
        print("\n" + done.summary_line(), file=sys.stderr)
    return 0
