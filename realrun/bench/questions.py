"""The bench's questions: read (a file or the built-in held-out set), filtered by category, tokenized."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ltd_sim.errors import LTDError


@dataclass
class Question:
    """One benchmark question: its id, category, prompt token ids and (when known) text."""

    qid: str
    category: str
    prompt_ids: list[int]
    text: str = ""


def read_questions(path: str | os.PathLike | None = None, categories: list[str] | None = None,
                   limit: int | None = None) -> list[dict]:
    """Prompt records {"id", "category", "text"} of `categories` (all by default), the first `limit` of each.

    From `path` (Spec-Bench jsonl, {"prompt"} jsonl or text lines: `realrun.prompts.read_prompts`), else
    the built-in held-out set (`realrun.prompts.default_bench_prompts`: HumanEval 80-163 and a chat set,
    never traced or trained on). Needs no model, so a bad option fails before any loads."""
    from realrun.prompts import default_bench_prompts, read_prompts

    if limit is not None and limit < 1:
        raise LTDError(f"--limit must be at least 1, got {limit}")
    records = read_prompts(path, option="--questions") if path is not None else default_bench_prompts()
    cats = list(categories) if categories else None
    if cats:
        known = {r["category"] for r in records}
        unknown = [c for c in cats if c not in known]
        if unknown:
            raise LTDError(f"unknown categories {unknown}; the questions have {sorted(known)}")
    counts: dict[str, int] = {}
    out = []
    for r in records:
        cat = r["category"]
        if (cats and cat not in cats) or (limit is not None and counts.get(cat, 0) >= limit):
            continue
        counts[cat] = counts.get(cat, 0) + 1
        out.append(r)
    return out


def encode_questions(records: list[dict], tokenizer) -> list[Question]:
    """`Question`s of prompt records, through the target's chat template."""
    from realrun.models import encode_prompt

    if records and tokenizer is None:
        raise LTDError("this target has no tokenizer; text questions need one (pass token ids to run_bench)")
    return [Question(r["id"], r["category"], encode_prompt(tokenizer, r["text"]), r["text"]) for r in records]


def as_questions(questions: list, tokenizer) -> list[Question]:
    """Questions for `run_bench`: `Question`s, token-id lists (category "default") or texts."""
    from realrun.models import encode_prompt

    out = []
    for i, q in enumerate(questions):
        if isinstance(q, Question):
            out.append(q)
        elif isinstance(q, str):
            if tokenizer is None:
                raise LTDError("this target has no tokenizer; pass token ids instead of text")
            out.append(Question(f"q{i}", "default", encode_prompt(tokenizer, q), q))
        else:
            ids = [int(t) for t in (q.tolist() if hasattr(q, "tolist") else q)]
            out.append(Question(f"q{i}", "default", ids))
    if not out:
        raise LTDError("no questions to benchmark")
    return out
