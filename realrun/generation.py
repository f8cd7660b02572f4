"""`ltd generate`'s core: text in, text out, through the decoder, with static settings or the LTD policies."""

from __future__ import annotations

from dataclasses import dataclass, field

from ltd_sim import defaults
from ltd_sim.errors import LTDError
from realrun.decoder import DecodeConfig, GenerationResult, generate
from realrun.drafters import NgramDrafter


@dataclass
class TextGeneration:
    """One generated text, the generation behind it, and what the policies cost (with --policy)."""

    text: str  # the new tokens, decoded without special tokens
    result: GenerationResult
    policy_s: float | None  # seconds spent in policy decisions; None when static settings decided
    policy_calls: int
    notes: list[str] = field(default_factory=list)  # said once to the user (e.g. policies made for another T)

    @property
    def policy_fraction(self) -> float:
        """The policies' share of the generation's wall time."""
        return (self.policy_s or 0.0) / self.result.wall_s if self.result.wall_s > 0 else 0.0

    def to_json(self) -> dict:
        payload = {"text": self.text, **self.result.to_json()}
        if self.policy_s is not None:
            payload.update(policy_s=self.policy_s, policy_calls=self.policy_calls,
                           policy_fraction=self.policy_fraction)
        return payload

    def summary_line(self) -> str:
        """One line for people: length, both rates, tau, cycles, stop reason (and policy cost)."""
        r = self.result
        extra = ""
        if self.policy_s is not None:
            extra = (f", policy {self.policy_s * 1e3:.1f} ms in {self.policy_calls} calls = "
                     f"{100 * self.policy_fraction:.2f}% of generation")
        return (f"[{len(r.token_ids)} tokens, decode rate {r.decode_tokens_per_s:.1f} tok/s (prefill excluded), "
                f"end-to-end {r.end_to_end_tokens_per_s:.1f} tok/s, tau {r.tau:.2f}, {len(r.cycles)} cycles, "
                f"stop: {r.stop_reason}{extra}]")


def read_prompt_file(path: str) -> str:
    """The whole file as one prompt; an unreadable file is a one-line LTDError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise LTDError(f"cannot read --prompt-file: {exc}") from exc


def generate_text(text: str, cfg: DecodeConfig, target: str | None = None, draft: str | None = None,
                  draft_kind: str | None = None, device: str | None = None, dtype: str | None = None,
                  size: int = defaults.STATIC_SIZE, policy_dir: str | None = None,
                  chat: bool = True, ngram=None) -> TextGeneration:
    """Check the options, load the pair, and generate from `text`: speculative with a draft model
    and/or n-gram branches (`ngram`, an `NgramConfig`; `draft_kind` "ngram" for n-grams alone), with
    static depth `cfg.max_depth` and V `size` or the LTD policies in `policy_dir`; else autoregressive."""
    from ltd_sim.control import StaticDepth, StaticSize
    from realrun.loading import NGRAM_KIND, load_pair, set_threads
    from realrun.models import encode_prompt

    # Every option is checked before the models load.
    if size < 0:
        raise LTDError(f"--size must be >= 0, got {size}")
    uses_ngram = ngram is not None or draft_kind == NGRAM_KIND
    cfg.validate(has_drafter=draft is not None or uses_ngram)
    if ngram is not None:
        ngram.validate()
    depth_ctrl, size_ctrl = StaticDepth(cfg.max_depth), StaticSize(size)
    policy = None
    if policy_dir:  # the saved LTD policies (ltd_sim.policy), observing through the one feature function
        from ltd_sim.features import check_ngram_match
        from ltd_sim.policy import PolicyController, calibration_mismatch, sampling_mismatch

        if draft is None and not uses_ngram:
            raise LTDError("--policy needs a drafter (--draft, --ngram or --draft-kind ngram)")
        policy = PolicyController(policy_dir)
        check_ngram_match(policy.spec, uses_ngram, f"the policies in {policy_dir}")
        policy.check_compatible(cfg.top_k, cfg.max_depth)
        depth_ctrl = size_ctrl = policy
    set_threads()
    pair = load_pair(target, draft, draft_kind, device, dtype, ngram=ngram)
    ids = encode_prompt(pair.target.tokenizer, text, chat=chat)
    drafter = pair.drafter
    if policy is not None and policy.never_drafts(pair.context_limit):
        drafter = None  # plain decoding: no hidden states kept for a catch-up that never comes (as the bench)
    result = generate(pair.target.model, ids, drafter, cfg, depth_ctrl, size_ctrl,
                      eos_ids=pair.eos_ids, context_limit=pair.context_limit)
    out_text = pair.target.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    notes = []
    if policy is not None and (note := sampling_mismatch(policy.info, cfg.temperature, cfg.top_p)):
        notes.append(note)
    if policy is not None and isinstance(drafter, NgramDrafter) and \
            (note := calibration_mismatch(policy.info, drafter.proposer.calibration.digest())):
        notes.append(note)
    return TextGeneration(out_text, result, policy.seconds if policy is not None else None,
                          policy.calls if policy is not None else 0, notes)
