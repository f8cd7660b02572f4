"""`ltd draft build` end to end on a tiny chat target: every stage, the saved head, resume checks."""

from __future__ import annotations

import pytest

from ltd_sim.errors import LTDError
from realrun.draft_head.train import TrainConfig
from realrun.eagle3 import load_head


def test_build_end_to_end_on_user_prompts_alone_and_resume_checks_them(tiny_chat_target, tmp_path):
    """`ltd draft build --prompts F --only-prompts` on a tiny chat target: every stage runs in a bounded
    time on the user's prompts, the head loads, and a resume with other prompts is refused (its batches
    would no longer line up with the work folder's)."""
    import json

    from realrun.draft_head import BuildConfig, build, user_prompt_items
    from realrun.models import encode_prompt, load_causal_lm
    from realrun.prompts import read_prompts

    qfile = tmp_path / "mine.jsonl"
    qfile.write_text("".join(json.dumps({"question_id": i, "category": "coding" if i % 2 else "writing",
                                         "turns": [f"Question {i}: tell me about owls and {i} trees."]}) + "\n"
                             for i in range(12)))
    mine = user_prompt_items(read_prompts(qfile))
    assert [src for _, src in mine[:2]] == [1, 0]  # chat, code
    cfg = BuildConfig(minutes=0.5, draft_vocab=256, gen_batch=8, max_new_tokens=16, save_margin_s=5.0,
                      builtin_prompts=False, train=TrainConfig(ttt_steps=2))
    quiet = dict(progress=False, log=lambda msg: None)
    report = build(tiny_chat_target, tmp_path / "head", cfg, user_prompts=mine, **quiet)
    loaded = load_causal_lm(tiny_chat_target)
    gen = json.loads((tmp_path / ".build-head" / "generated.json").read_text())
    assert sorted(ids[:start] for ids, start, _ in gen["items"]) == sorted(
        encode_prompt(loaded.tokenizer, text) for text, _ in mine)
    assert report["by_source"]["tf_code"] == report["by_source"]["tf_chat"] == 0
    head = load_head(tmp_path / "head", loaded.model)
    assert head.cfg.draft_vocab_size == 256 and report["train_steps"] > 0
    for other in (dict(user_prompts=mine[:1]), dict(), dict(user_prompts=mine, cfg=BuildConfig(minutes=0.5))):
        kwargs = {"cfg": cfg, **other}
        with pytest.raises(LTDError, match="other prompts"):
            build(tiny_chat_target, tmp_path / "head", resume=True, **kwargs, **quiet)
