"""`ltd generate`: text from the target, speculative with --draft, else autoregressive."""

from __future__ import annotations

import json
import sys

from ltd_sim import defaults
from ltd_sim.errors import LTDError
from realrun.cli.options import add_decode_options


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="generate text (speculative with --draft, else autoregressive)")
    add_decode_options(g)
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
    from ltd_sim.control import StaticDepth, StaticSize
    from realrun.decoder import DecodeConfig, generate
    from realrun.loading import load_pair, set_threads
    from realrun.models import encode_prompt

    if args.size < 0:
        raise LTDError(f"--size must be >= 0, got {args.size}")
    if args.prompt_file:
        try:
            text = open(args.prompt_file, encoding="utf-8").read()
        except OSError as exc:
            raise LTDError(f"cannot read --prompt-file: {exc}") from exc
    else:
        text = args.prompt
    cfg = DecodeConfig(max_new_tokens=args.max_new_tokens, top_k=args.top_k, max_depth=args.depth,
                       temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    cfg.validate(has_drafter=args.draft is not None)
    depth_ctrl, size_ctrl = StaticDepth(args.depth), StaticSize(args.size)
    policy = None
    if args.policy:  # the saved LTD policies (ltd_sim.policy), observing through the one feature function
        from ltd_sim.policy import PolicyController

        if args.draft is None:
            raise LTDError("--policy needs a draft model (--draft)")
        policy = PolicyController(args.policy)
        policy.check_compatible(args.top_k, args.depth)
        depth_ctrl = size_ctrl = policy
    set_threads()
    pair = load_pair(args.target, args.draft, args.draft_kind, args.device, args.dtype)
    ids = encode_prompt(pair.target.tokenizer, text, chat=not args.no_chat)
    result = generate(pair.target.model, ids, pair.drafter, cfg, depth_ctrl, size_ctrl,
                      eos_ids=pair.eos_ids, context_limit=pair.context_limit)
    out_text = pair.target.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    policy_s = policy.seconds if policy is not None else 0.0
    if args.json:
        payload = {"text": out_text, **result.to_json()}
        if policy is not None:
            payload.update(policy_s=policy_s, policy_calls=policy.calls,
                           policy_fraction=policy_s / result.wall_s if result.wall_s > 0 else 0.0)
        print(json.dumps(payload))
    else:
        print(out_text)
        extra = ""
        if policy is not None:
            extra = (f", policy {policy_s * 1e3:.1f} ms in {policy.calls} calls = "
                     f"{100 * policy_s / max(result.wall_s, 1e-12):.2f}% of generation")
        print(f"\n[{len(result.token_ids)} tokens, {result.tokens_per_s:.1f} tok/s, tau {result.tau:.2f}, "
              f"{len(result.cycles)} cycles, stop: {result.stop_reason}{extra}]", file=sys.stderr)
    return 0
