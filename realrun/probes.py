"""The realrun side of `ltd profile`: probes over the decoder's own phase functions and cycle.

`profiler` never imports `realrun`; this module builds `DecoderProbes` (a `profiler.sweeps.PhaseProbes`)
from a loaded target and drafter, and hands it to `profiler.profile_device`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ltd_sim import defaults
from ltd_sim.control import StaticDepth, StaticSize
from ltd_sim.tree import DraftTree, TreeBuilder, local_parents, select_verify_set, tree_positions
from profiler.timing import Timer
from realrun import models
from realrun import decoder  # phases are looked up on the module: the probes time the decoder's own code
from realrun.kv_cache import PreallocatedCache, cache_kwargs, round_up

if TYPE_CHECKING:  # fitting loads scikit-learn; building probes does not need it
    from profiler.model import FittedCostModel


def matching_context(rng: np.random.Generator, vocab: int, length: int, span: int, occurrences: int,
                     gap: int) -> list[int]:
    """`length` random tokens whose last `span` tokens also occur up to `occurrences` times earlier,
    each followed by at least `gap` other random tokens: the n-gram lookup then takes its matched path
    (the longest suffix it tries, several branches of full depth), not the cheaper no-match one."""
    ids = rng.integers(0, vocab, size=length)
    key = ids[length - span:].copy()
    stride = span + gap  # a copy and the tokens that follow it
    copies = min(occurrences, max(length - span, 0) // stride)
    # spread over the context; consecutive starts are at least `stride` apart
    for start in np.linspace(0, length - span - stride, copies).astype(int) if copies else ():
        ids[start:start + span] = key
    return ids.tolist()


def _crop_to(cache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class _MarkingDepth:
    """A static depth controller that also marks the time after every draft step."""

    def __init__(self, depth: int, timer: Timer, marks: list):
        self.depth, self.timer, self.marks = depth, timer, marks

    def should_continue(self, tree: DraftTree, context_len: int) -> bool:
        self.marks.append(self.timer.mark())
        return tree.depth < self.depth


class DecoderProbes:
    """Probes over the decoder's own code on real models: `prefill` (set-up), `draft_tree` (per
    step), `verify_tree`, and `run_cycle`, whose phase clock gives the per-cycle overhead."""

    def __init__(self, target: torch.nn.Module, drafter=None, context_limit: int | None = None, seed: int = 0,
                 ngram=None):
        """`ngram`: the `NgramConfig` whose n-gram phase is timed (default: the default settings)."""
        self.ngram_cfg = ngram
        self.target = target
        self.drafter = drafter
        self.has_drafter = drafter is not None
        self.layers = drafter.feature_layers if drafter is not None else None
        self.device = decoder.cache_device(target)
        self.vocab = int(target.config.vocab_size)
        self.max_context = int(context_limit or models.context_limit(target))
        self.rng = np.random.default_rng(seed)
        self.ctx = 0
        self.cache = None
        self._batch_caches: dict = {}

    # -- state ------------------------------------------------------------------------------
    def _ids(self, *shape) -> torch.Tensor:
        return torch.as_tensor(self.rng.integers(0, self.vocab, size=shape), dtype=torch.long, device=self.device)

    def prepare(self, context_len: int) -> None:
        self.ctx = int(context_len)
        # the decoder's own cache, with room for the verify sets the probes append (it grows if need be)
        self.cache = PreallocatedCache.for_model(self.target, round_up(self.ctx + 512))
        prompt = self._ids(self.ctx)
        logits, features = decoder.prefill(self.target, self.cache, prompt, self.layers)
        self.root = int(logits.argmax())
        self.feature_row = features[-1:] if features is not None else None
        if self.drafter is not None:
            self.drafter.begin(prompt, self.root, features)
            self._draft(defaults.TOP_K, 1)  # the drafter's own prefill, then steady state
            self._end_cycle([self.root])
        self.verify_source = self._verify_tree_source()

    def _draft(self, top_k: int, depth: int, ctrl=None) -> DraftTree:
        return decoder.draft_tree(self.drafter, self.root, top_k, depth, ctrl or StaticDepth(depth), self.ctx)

    def _end_cycle(self, new_tokens: list[int]) -> None:
        """Close a drafted-but-unverified cycle, committing with the prepared context's last features."""
        self.drafter.end_cycle()
        features = self.feature_row.expand(len(new_tokens), -1) if self.feature_row is not None else None
        self.drafter.commit(torch.as_tensor(new_tokens, device=self.device), features)

    def _verify_tree_source(self) -> DraftTree:
        """The tree verify probes select from: a real draft tree, or a random one without a drafter."""
        if self.drafter is not None:
            tree = self._draft(defaults.TOP_K, defaults.MAX_DEPTH)
            self._end_cycle([self.root])
            return tree
        builder = TreeBuilder(self.root, defaults.TOP_K, defaults.MAX_DEPTH)
        for _ in range(defaults.MAX_DEPTH):
            b = len(builder.beam)
            logp = np.log(self.rng.dirichlet(np.ones(defaults.TOP_K), size=b)).astype(np.float32)
            builder.add_step(np.sort(logp, axis=1)[:, ::-1].copy(), self.rng.integers(0, self.vocab, (b, defaults.TOP_K)))
        return builder.tree()

    def _verify_inputs(self, tree: DraftTree, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        selected = select_verify_set(tree.scores, StaticSize(size).choose_size(tree, self.ctx))
        parents = local_parents(tree.parents, selected)
        return tree.tokens[selected], parents, tree_positions(tree.steps, selected, self.ctx)

    # -- probes -----------------------------------------------------------------------------
    def draft(self, top_k: int, depth: int):
        def probe(timer: Timer) -> list[float]:
            marks = [timer.mark()]
            self._draft(top_k, depth, _MarkingDepth(depth, timer, marks))
            marks.append(timer.mark())  # the last step ends draft_tree (no controller call there)
            out = timer.durations(marks)
            self._end_cycle([self.root])
            return out
        return probe

    def verify(self, size: int):
        tokens, parents, positions = self._verify_inputs(self.verify_source, size)

        def probe(timer: Timer) -> list[float]:
            a = timer.mark()
            decoder.verify_tree(self.target, self.cache, tokens, parents, positions, self.layers)
            b = timer.mark()
            _crop_to(self.cache, self.ctx)
            return [timer.elapsed(a, b)]
        return probe

    def overhead(self, depth: int, size: int, top_k: int):
        """One greedy `decoder.run_cycle` at the prepared context; its overhead is the cycle's time
        outside drafting and the verify forward, as run_cycle's own phase clock splits it."""
        cfg = decoder.DecodeConfig(top_k=top_k, max_depth=depth)
        depth_ctrl, size_ctrl = StaticDepth(depth), StaticSize(size)

        def probe(timer: Timer) -> list[float]:
            cycle = decoder.run_cycle(self.target, self.cache, self.drafter, self.root, cfg, depth_ctrl,
                                      size_ctrl, depth, timer)
            _crop_to(self.cache, self.ctx)  # untimed: back to the prepared context
            return [cycle.record.overhead_s]
        return probe

    def ngram(self, context_len: int, depth: int):
        """The decoder's n-gram work in a cycle of `depth` draft steps (`run_cycle` and `_model_tree`
        with `--ngram`): one `propose`, then after each step d the proposal cut at d merged into the
        head tree of d steps (the verify probes' tree, at the default n-gram settings). The probe
        returns the cumulative time after each step: a cycle that stops at depth d pays entry d."""
        from realrun.ngram import NgramConfig, NgramProposer, merge_proposal

        cfg = self.ngram_cfg or NgramConfig()
        proposer = NgramProposer(cfg)
        proposer.begin(matching_context(self.rng, self.vocab, context_len, cfg.ngram_max, cfg.max_branches,
                                        depth))
        trees = [self.verify_source.truncated(d) for d in range(1, depth + 1)]  # the drafter's work, untimed

        def probe(timer: Timer) -> list[float]:
            marks = [timer.mark()]
            proposal = proposer.propose(depth)
            for d, tree in enumerate(trees, start=1):
                merge_proposal(tree, proposal.truncated(d))
                marks.append(timer.mark())
            return np.cumsum(timer.durations(marks)).tolist()
        return probe

    def batch_forward(self, batch: int, tokens: int, context_len: int):
        key = (batch, context_len)
        if key not in self._batch_caches:
            self._batch_caches = {}  # one at a time: batch caches are large
            cache = PreallocatedCache.for_model(self.target, round_up(context_len + tokens))
            with torch.no_grad():
                pos = torch.arange(context_len, device=self.device)[None].expand(batch, -1)
                self.target(input_ids=self._ids(batch, context_len), position_ids=pos,
                            **cache_kwargs(self.target, cache), use_cache=True, logits_to_keep=1)
            self._batch_caches[key] = cache
        cache = self._batch_caches[key]
        ids = self._ids(batch, tokens)
        pos = (context_len + torch.arange(tokens, device=self.device))[None].expand(batch, -1)

        @torch.no_grad()
        def probe(timer: Timer) -> list[float]:
            a = timer.mark()
            self.target(input_ids=ids, position_ids=pos, **cache_kwargs(self.target, cache), use_cache=True)
            b = timer.mark()
            _crop_to(cache, context_len)
            return [timer.elapsed(a, b)]
        return probe


#: the draft vocabulary of a random-init head: what `ltd draft build` trains (8k), since the head's
#: cost depends on its vocabulary size (lm_head rows), not on its weights
RANDOM_HEAD_DRAFT_VOCAB = 8192


def default_profile_drafter(target_loaded, draft_vocab: int = RANDOM_HEAD_DRAFT_VOCAB):
    """The default EAGLE-3 head if it is cached, else a random-init one (draft cost does not depend
    on trained weights). Returns (drafter, draft_id, weights description)."""
    from realrun.drafters import Eagle3Drafter
    from realrun.eagle3 import load_head, random_head
    from realrun.models import default_draft_dir

    path = default_draft_dir()
    model = target_loaded.model
    if (path / "config.json").is_file():
        param = next(model.parameters())
        head = load_head(path, model, device=param.device, dtype=param.dtype)
        weights = str(path)
    else:
        head = random_head(model, min(draft_vocab, target_loaded.vocab_size))
        weights = "random-init"
    draft_id = f"eagle3:{defaults.DEFAULT_DRAFT_NAME}:dv{head.cfg.draft_vocab_size}"
    return Eagle3Drafter(head, target_loaded.vocab_size), draft_id, weights


def model_id(path: Path | None) -> str:
    return Path(path).name if path is not None else ""


def profile_drafter(pair, draft_vocab: int = RANDOM_HEAD_DRAFT_VOCAB):
    """(drafter, draft id, weights) for a loaded pair: its own drafter, else the default EAGLE-3 head."""
    if pair.drafter is not None:
        kind = pair.draft_kind
        vocab = getattr(getattr(pair.drafter, "head", None), "cfg", None)
        suffix = f":dv{vocab.draft_vocab_size}" if vocab is not None else ""
        return pair.drafter, f"{kind}:{model_id(pair.draft_path)}{suffix}", str(pair.draft_path)
    return default_profile_drafter(pair.target, draft_vocab)


def pair_fingerprint(pair, draft_id: str, weights: str = "", top_k: int = defaults.TOP_K) -> dict:
    from profiler import make_fingerprint

    param = next(pair.target.model.parameters())
    return make_fingerprint(param.device, param.dtype, model_id(pair.target.path), draft_id, weights, top_k)


#: warn when other processes take more than this share of the CPU as a profile starts
BUSY_WARNING = 0.25


@dataclass
class ProfileResult:
    """What `run_profile` produced: the cost model, how long it took, and whether it was reused."""

    model: FittedCostModel
    wall_s: float  # loading, sweeping and fitting (or loading the reused model)
    reused: bool  # an existing cost_model.json already profiled this device and these models


def run_profile(target: str | None = None, draft: str | None = None, draft_kind: str | None = None,
                device: str | None = None, dtype: str | None = None, preset: str = "quick",
                out: str | Path = "runs/default", force: bool = False, progress: bool = True,
                plots: bool = True, log=print, ngram=None) -> ProfileResult:
    """`ltd profile`: load the pair, sweep the decoder's phases, fit and write the cost model.
    `ngram` (`ltd profile --ngram ...`): the n-gram settings whose lookup and merge are timed (the
    n-gram component is measured in every profile, at the default settings otherwise).

    An existing cost_model.json for the same fingerprint is reused unless `force`; one for other
    hardware or models is refused unless `force`."""
    import time

    from ltd_sim.errors import LTDError
    from profiler import SweepSpec, load_cost_model, profile_device
    from profiler.build import MODEL_FILE
    from profiler.timing import cpu_busy_fraction
    from realrun.loading import load_pair, set_threads

    try:
        spec = SweepSpec.preset(preset)
    except ValueError as exc:
        raise LTDError(str(exc)) from None
    t0 = time.perf_counter()
    set_threads()
    pair = load_pair(target, draft, draft_kind, device, dtype)
    drafter, draft_id, weights = profile_drafter(pair)
    fingerprint = pair_fingerprint(pair, draft_id, weights)
    out = Path(out)
    existing = out / MODEL_FILE
    if existing.exists() and not force:
        model = load_cost_model(existing, expect_fingerprint=fingerprint)
        log(f"{existing} already profiles this device and these models (use --force to re-profile)")
        if not model.has_ngram:
            log(f"note: {existing} has no n-gram term (profiled before it existed): simulated --ngram cycles "
                "get 0 s for the n-gram lookup; `ltd profile --force` measures it")
        return ProfileResult(model, time.perf_counter() - t0, reused=True)
    log(f"profiling {fingerprint['target']} + {draft_id} ({weights}) on {fingerprint['device']}, "
        f"{fingerprint['dtype']}, sweep '{preset}'")
    if pair.target.device.type == "cpu":
        busy = cpu_busy_fraction()
        if busy is not None and busy > BUSY_WARNING:
            log(f"warning: other processes are using {100 * busy:.0f}% of the CPU; this profile will measure "
                f"that contention (re-profile with the machine in the state it will decode in)")
    if ngram is not None:
        ngram.validate()
    probes = DecoderProbes(pair.target.model, drafter, pair.context_limit, ngram=ngram)
    model = profile_device(probes, spec, Timer(pair.target.device), fingerprint, out, progress, plots)
    return ProfileResult(model, time.perf_counter() - t0, reused=False)


def refit_profile(out: str | Path, plots: bool = True) -> FittedCostModel:
    """`ltd profile --refit`: refit (and re-plot) from `out`'s measurements.json, no timing."""
    from ltd_sim.errors import LTDError
    from profiler.build import MEASUREMENTS_FILE, refit

    if not (Path(out) / MEASUREMENTS_FILE).is_file():
        raise LTDError(f"no {MEASUREMENTS_FILE} in {out} to refit; run `ltd profile --out {out}`")
    return refit(out, plots=plots)


# --------------------------------------------------------------------------------------------
# Cycle breakdown: where a decoding cycle's time goes, at a given context (benchmarks, gpu_check)
# --------------------------------------------------------------------------------------------

@dataclass
class CycleBreakdown:
    """Medians over a generation's cycles at one (depth, V) and starting context."""

    depth: int
    size: int
    context: int  # prompt tokens (the context when the first cycle starts)
    cycles: int
    tau: float  # tokens committed per cycle
    draft_s: float
    verify_s: float
    overhead_s: float  # the cycle minus draft and verify: selection, acceptance, KV compaction, commit
    total_s: float
    overhead_mean_s: float  # mean overhead: the median hides a cost paid by a minority of cycles
    overhead_accepting_s: float | None  # median overhead of cycles that accepted draft tokens (these compact
    #                                     the KV cache when the path is not the tree's first nodes)
    host_syncs_per_cycle: float | None  # CUDA only: synchronising calls per cycle, the phase clock's excluded
    clock_syncs_per_cycle: float | None  # CUDA only: the phase clock's own device synchronisations

    @property
    def overhead_share(self) -> float:
        return self.overhead_s / self.total_s if self.total_s > 0 else 0.0

    def to_json(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "overhead_share": self.overhead_share}


class _SyncCounter:
    """Counts CUDA synchronising calls (torch's sync debug mode) at the end of every cycle.

    Warnings raised from torch/cuda/__init__.py are `torch.cuda.synchronize` (the decoder's phase
    clock); every other one is a host sync of the decoder itself (a device-to-host copy, .item())."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cuda"
        self.marks: list[tuple[int, int]] = []
        self._records: list = []

    def __enter__(self):
        if self.active:
            import warnings

            self._catch = warnings.catch_warnings(record=True)
            self._records = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.active:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(*exc)

    def mark(self) -> None:
        if self.active:
            syncs = [w for w in self._records if "synchroniz" in str(w.message)]
            clock = sum(1 for w in syncs if w.filename.replace("\\", "/").endswith("torch/cuda/__init__.py"))
            self.marks.append((len(syncs) - clock, clock))

    def per_cycle(self) -> tuple[float | None, float | None]:
        """(decoder syncs, clock syncs) per cycle, from the first cycle's end to the last's."""
        if not self.active or len(self.marks) < 2:
            return None, None
        n = len(self.marks) - 1
        return ((self.marks[-1][0] - self.marks[0][0]) / n, (self.marks[-1][1] - self.marks[0][1]) / n)


def cycle_breakdown(target, drafter, prompt_ids: torch.Tensor, depth: int, size: int, new_tokens: int,
                    top_k: int = defaults.TOP_K, cache=None, count_syncs: bool = False) -> CycleBreakdown:
    """Decode `new_tokens` greedily after `prompt_ids` at a static (depth, V) and split the cycles.

    `cache`: an empty KV cache for the target (default: the decoder's own). `count_syncs` (CUDA)
    counts the host synchronisations per cycle with torch's sync debug mode (which slows the run: its
    times are not the timed run's, so a caller runs the breakdown twice)."""
    cfg = decoder.DecodeConfig(max_new_tokens=new_tokens, top_k=top_k, max_depth=depth)
    counter = _SyncCounter(decoder.cache_device(target) if count_syncs else torch.device("cpu"))
    with counter:
        result = decoder.generate(target, prompt_ids, drafter, cfg, StaticDepth(depth), StaticSize(size),
                                  cache=cache, on_cycle=lambda tree, record: counter.mark())
    cycles = result.cycles[1:] or result.cycles  # the first cycle pays the drafter's prefill
    med = {name: float(np.median([getattr(c, name) for c in cycles]))
           for name in ("draft_s", "verify_s", "overhead_s", "total_s")}
    syncs, clock = counter.per_cycle()
    accepting = [c.overhead_s for c in cycles if c.accepted > 0]
    return CycleBreakdown(depth, size, int(prompt_ids.numel()), len(result.cycles), result.tau, med["draft_s"],
                          med["verify_s"], med["overhead_s"], med["total_s"],
                          float(np.mean([c.overhead_s for c in cycles])),
                          float(np.median(accepting)) if accepting else None, syncs, clock)
