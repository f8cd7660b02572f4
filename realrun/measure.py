"""The one measurement harness of the real decoder: fine-tuning's validation, tune's confirmation and the
bench all time generations here, so that their figures mean the same thing.

Two throughput figures exist and are never mixed (DESIGN.md, "Devices and rates"):

- the *decode rate*, `decode_tokens_per_s`: tokens committed after the prefill / seconds after the
  prefill. It is the simulator's quantity (cycles only) and what the policies control, so fine-tuning
  and tune select on it;
- the *end-to-end rate*, `end_to_end_tokens_per_s`: all new tokens / wall-clock seconds of the whole
  generation, prefill included. It is what a user waits for, the Spec-Bench protocol's figure and the
  only one transformers' assisted generation can give, so the bench's headline speedups use it
  (docs/bench.md, "Which rate").

Every report and JSON names which rate it shows, with the keys and labels below.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from ltd_sim.control import DepthController, SizeController, TimedControl
from ltd_sim.errors import LTDError
from profiler.timing import Timer
from realrun.decoder import CycleRecord, DecodeConfig, generate
from realrun.sampling import stream_seed

DECODE_RATE = "decode_tokens_per_s"
END_TO_END_RATE = "end_to_end_tokens_per_s"
RATE_LABELS = {DECODE_RATE: "decode rate (prefill excluded)",
               END_TO_END_RATE: "end-to-end rate (prefill included)"}
WARMUP_TOKENS = 4  # a warm-up generation only has to touch every kernel once

ControllerPair = tuple[DepthController, SizeController]


def encode_prompts(pair, prompts: list[dict], chat: bool = True) -> list[list[int]]:
    """Token ids of prompt records ({"text", ...}, `realrun.prompts.read_prompts`) for the target of `pair`."""
    from realrun.models import encode_prompt

    return [encode_prompt(pair.target.tokenizer, p["text"], chat=chat) for p in prompts]


def _rate(tokens: int, seconds: float | None) -> float | None:
    """tokens / seconds; None when the seconds were not measured, 0 when none passed."""
    if seconds is None:
        return None
    return tokens / seconds if seconds > 0 else 0.0


@dataclass
class Run:
    """One timed generation.

    `decode_s` is None where the method has no prefill boundary to read (transformers' `generate`)."""

    tokens: list[int]  # the new tokens; the first one comes from the prefill
    wall_s: float  # the whole generation, prefill included
    decode_s: float | None = None  # after the prefill
    policy_s: float = 0.0  # inside the depth/size controller calls
    policy_calls: int = 0
    cycles: list[CycleRecord] | None = None  # decoder methods only
    forwards: int = 0  # target forward calls (hf-assisted, for its tau)

    @property
    def decode_tokens(self) -> int:
        """Tokens committed after the prefill (the prefill picks the first)."""
        return max(len(self.tokens) - 1, 0)

    @property
    def end_to_end_tokens_per_s(self) -> float:
        return _rate(len(self.tokens), self.wall_s)

    @property
    def decode_tokens_per_s(self) -> float | None:
        return _rate(self.decode_tokens, self.decode_s)


@dataclass
class Measurement:
    """Runs summed: both rates as ratios of totals (total tokens / total seconds), tau and policy cost."""

    runs: int = 0
    new_tokens: int = 0
    decode_tokens: int = 0
    cycles: int = 0
    wall_s: float = 0.0
    decode_s: float | None = 0.0  # None once a run without a prefill boundary is added
    policy_s: float = 0.0
    policy_calls: int = 0
    forwards: int = 0

    @classmethod
    def of(cls, runs: list[Run]) -> "Measurement":
        total = cls()
        for run in runs:
            total.add(run)
        return total

    def add(self, run: Run) -> None:
        self.runs += 1
        self.new_tokens += len(run.tokens)
        self.decode_tokens += run.decode_tokens
        self.cycles += len(run.cycles or [])
        self.wall_s += run.wall_s
        self.decode_s = None if self.decode_s is None or run.decode_s is None else self.decode_s + run.decode_s
        self.policy_s += run.policy_s
        self.policy_calls += run.policy_calls
        self.forwards += run.forwards

    @property
    def end_to_end_tokens_per_s(self) -> float:
        return _rate(self.new_tokens, self.wall_s)

    @property
    def decode_tokens_per_s(self) -> float | None:
        return _rate(self.decode_tokens, self.decode_s)

    @property
    def tau(self) -> float | None:
        """Tokens committed per target forward: per cycle (bonus included), else per counted forward."""
        if self.cycles:
            return self.decode_tokens / self.cycles
        return self.new_tokens / self.forwards if self.forwards else None

    @property
    def policy_fraction(self) -> float:
        """Seconds inside the controllers over the whole generations' seconds."""
        return self.policy_s / self.wall_s if self.wall_s > 0 else 0.0

    def rate(self, name: str) -> float | None:
        """The rate called `name` (`DECODE_RATE` or `END_TO_END_RATE`)."""
        if name not in RATE_LABELS:
            raise LTDError(f"unknown rate {name!r}; choose one of {', '.join(RATE_LABELS)}")
        return getattr(self, name)

    def to_json(self) -> dict:
        return {**asdict(self), DECODE_RATE: self.decode_tokens_per_s, END_TO_END_RATE: self.end_to_end_tokens_per_s,
                "tau": self.tau, "policy_fraction": self.policy_fraction}


class DecoderMethod:
    """Our decoder with a drafter (or none) and a fresh pair of depth/size controllers per generation."""

    def __init__(self, name: str, pair, drafter, cfg: DecodeConfig, make_ctrl: Callable[[], ControllerPair],
                 settings: dict | None = None):
        self.name, self.pair, self.drafter, self.cfg = name, pair, drafter, cfg
        self.make_ctrl, self.settings = make_ctrl, settings or {}

    def __call__(self, prompt_ids: list[int], seed: int | None = None, max_new_tokens: int | None = None) -> Run:
        """One generation; `seed` seeds its sampling at T > 0, `max_new_tokens` overrides the config's."""
        ctrl = TimedControl(*self.make_ctrl())
        cfg = self.cfg
        if seed is not None or max_new_tokens is not None:
            cfg = replace(cfg, seed=cfg.seed if seed is None else seed,
                          max_new_tokens=max_new_tokens or cfg.max_new_tokens)
        res = generate(self.pair.target.model, prompt_ids, self.drafter, cfg, ctrl, ctrl,
                       eos_ids=self.pair.eos_ids, context_limit=self.pair.context_limit)
        # the decoder's own clock (device-synced) splits the prefill from the cycles
        return Run(res.token_ids, res.wall_s, res.decode_s, ctrl.seconds, ctrl.calls, res.cycles)


class HFAssistedMethod:
    """transformers' assisted generation with an `lm` draft and a constant draft length (greedy, or
    sampling at (temperature, top_p) when `temperature` > 0), or, with `draft` None, its prompt lookup
    decoding (`prompt_lookup_num_tokens` = `num_tokens`: n-gram candidates from the prompt and output).

    Only the end-to-end rate exists here: `generate` gives no prefill boundary to read."""

    def __init__(self, pair, draft: torch.nn.Module | None, num_tokens: int, max_new_tokens: int,
                 settings: dict | None = None, temperature: float = 0.0, top_p: float = 1.0):
        self.pair, self.max_new, self.draft = pair, max_new_tokens, draft
        self.temperature, self.top_p = temperature, top_p
        if draft is None:
            self.candidates = {"prompt_lookup_num_tokens": num_tokens}
        else:
            gc = copy.deepcopy(draft.generation_config)
            gc.num_assistant_tokens = num_tokens
            gc.num_assistant_tokens_schedule = "constant"
            gc.assistant_confidence_threshold = 0.0
            draft.generation_config = gc
            self.candidates = {"assistant_model": draft}
        self.settings = settings or {}
        self.clock = Timer(pair.target.device)
        self.forwards = 0

    def _count(self, module, args) -> None:
        self.forwards += 1

    @torch.no_grad()
    def __call__(self, prompt_ids: list[int], seed: int | None = None, max_new_tokens: int | None = None) -> Run:
        model = self.pair.target.model
        ids = torch.tensor([prompt_ids], device=self.pair.target.device)
        eos = sorted(self.pair.eos_ids)
        pad = model.generation_config.pad_token_id
        sample = self.temperature > 0
        kwargs = dict(do_sample=sample, max_new_tokens=max_new_tokens or self.max_new,
                      attention_mask=torch.ones_like(ids), **self.candidates, eos_token_id=eos or None,
                      pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
                      temperature=self.temperature if sample else None, top_p=self.top_p if sample else None,
                      top_k=None)
        if sample and seed is not None:
            torch.manual_seed(seed)  # transformers samples from torch's global generator
        self.forwards = 0
        hook = model.register_forward_pre_hook(self._count)  # target forwards, for tau
        try:
            start = self.clock.now()
            out = model.generate(ids, **kwargs)
            wall_s = self.clock.now() - start
        finally:
            hook.remove()
        return Run(out[0, ids.shape[1]:].tolist(), wall_s, forwards=self.forwards)


def measure_many(pair, prompts: list[list[int]], methods: list[ControllerPair], cfg: DecodeConfig,
                 warmup: bool = True, drafted: list[bool] | None = None) -> list[Measurement]:
    """Several (depth controller, size controller) methods on the drafter of `pair`, interleaved prompt by
    prompt with the order rotating, so that a change of machine load hits all of them alike.
    `drafted[i]` False runs method i without the drafter (a setting that never drafts is plain
    decoding: no hidden states kept for a catch-up that never comes).

    Returns one `Measurement` per method: both rates, tau and the controllers' share of the time."""
    if not prompts:
        raise LTDError("no prompts to measure on")
    drafters = [pair.drafter if d else None for d in (drafted or [True] * len(methods))]
    decoders = [DecoderMethod(f"m{i}", pair, drafters[i], cfg, lambda m=m: m) for i, m in enumerate(methods)]
    if warmup:  # first-call costs (allocations, kernels) belong to no method
        short = DecodeConfig(**{**asdict(cfg), "max_new_tokens": WARMUP_TOKENS})
        for m, drafter in zip(methods, drafters):
            DecoderMethod("warmup", pair, drafter, short, lambda m=m: m)(prompts[0])
    totals = [Measurement() for _ in methods]
    for j, ids in enumerate(prompts):
        # T > 0: every method samples prompt j with one seed (common random numbers: less noise between them)
        seed = None if cfg.temperature == 0 else stream_seed(cfg.seed or 0, j)
        for k in range(len(methods)):
            i = (k + j) % len(methods)
            totals[i].add(decoders[i](ids, seed=seed))
    return totals


def measure(pair, prompts: list[list[int]], depth_ctrl: DepthController, size_ctrl: SizeController,
            cfg: DecodeConfig, warmup: bool = True) -> Measurement:
    """One pair of controllers on every prompt; see `measure_many`."""
    return measure_many(pair, prompts, [(depth_ctrl, size_ctrl)], cfg, warmup)[0]
