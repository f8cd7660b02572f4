"""`ltd models`: where the default models are (preparing the target on first use)."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    m = sub.add_parser("models", help="report (and prepare) the default models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from realrun.models import cache_dir, default_draft_dir, prepare_default_target

    target = prepare_default_target()
    draft = default_draft_dir()
    has_draft = (draft / "config.json").is_file()
    info = {"target": str(target), "draft": str(draft) if has_draft else None,
            "draft_kind": "eagle3" if has_draft else None, "cache_dir": str(cache_dir())}
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:11s} {v}")
    return 0
