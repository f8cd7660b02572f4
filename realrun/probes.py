"""The realrun side of `ltd profile`: probes over the decoder's own phase functions.

`profiler` never imports `realrun`; this module builds `DecoderProbes` (a `profiler.sweeps.PhaseProbes`)
from a loaded target and drafter, and hands it to `profiler.profile_device`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ltd_sim import defaults
from ltd_sim.control import StaticSize
from ltd_sim.tree import TreeBuilder, greedy_accept, local_parents, select_verify_set
from realrun.decoder import _features, cache_device, draft_tree, keep_cache_entries, prefill, verify_tree


def _crop_to(cache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class _MarkingDepth:
    """A static depth controller that also marks the time after every draft step."""

    def __init__(self, depth: int, timer, marks: list):
        self.depth, self.timer, self.marks = depth, timer, marks

    def should_continue(self, tree, context_len: int) -> bool:
        self.marks.append(self.timer.mark())
        return tree.depth < self.depth


class DecoderProbes:
    """Probes over prefill / draft_tree / verify_tree / keep_cache_entries on real models."""

    def __init__(self, target: torch.nn.Module, drafter=None, context_limit: int | None = None, seed: int = 0):
        self.target = target
        self.drafter = drafter
        self.has_drafter = drafter is not None
        self.layers = drafter.feature_layers if drafter is not None else None
        self.device = cache_device(target)
        self.vocab = int(target.config.vocab_size)
        self.max_context = int(context_limit or getattr(target.config, "max_position_embeddings", defaults.FALLBACK_CONTEXT))
        self.rng = np.random.default_rng(seed)
        self.ctx = 0
        self.cache = None
        self._batch_caches: dict = {}

    # -- state ------------------------------------------------------------------------------
    def _ids(self, *shape) -> torch.Tensor:
        return torch.as_tensor(self.rng.integers(0, self.vocab, size=shape), dtype=torch.long, device=self.device)

    def prepare(self, context_len: int) -> None:
        from transformers import DynamicCache

        self.ctx = int(context_len)
        self.cache = DynamicCache()
        prompt = self._ids(self.ctx)
        logits, features = prefill(self.target, self.cache, prompt, self.layers)
        self.root = int(logits.argmax())
        self.feature_row = features[-1:] if features is not None else None
        if self.drafter is not None:
            self.drafter.begin(prompt, self.root, features)
            self._draft(defaults.TOP_K, 1)  # the drafter's own prefill, then steady state
            self._end_cycle([self.root])
        self.verify_tree_ = self._verify_tree_source()

    def _draft(self, top_k: int, depth: int, ctrl=None):
        from ltd_sim.control import StaticDepth

        return draft_tree(self.drafter, self.root, top_k, depth, ctrl or StaticDepth(depth), self.ctx)

    def _end_cycle(self, new_tokens: list[int], features=None) -> None:
        self.drafter.end_cycle()
        if features is None and self.feature_row is not None:
            features = self.feature_row.expand(len(new_tokens), -1)
        self.drafter.commit(torch.as_tensor(new_tokens, device=self.device), features)

    def _verify_tree_source(self):
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

    def _verify_inputs(self, tree, size: int):
        selected = select_verify_set(tree.scores, StaticSize(size).choose_size(tree, self.ctx))
        parents = local_parents(tree.parents, selected)
        return tree.tokens[selected], parents, self.ctx + tree.steps[selected].astype(np.int64)

    # -- probes -----------------------------------------------------------------------------
    def draft(self, top_k: int, depth: int):
        def probe(timer):
            marks = [timer.mark()]
            self._draft(top_k, depth, _MarkingDepth(depth, timer, marks))
            marks.append(timer.mark())  # the last step ends draft_tree (no controller call there)
            out = timer.durations(marks)
            self._end_cycle([self.root])
            return out
        return probe

    def verify(self, size: int):
        tokens, parents, positions = self._verify_inputs(self.verify_tree_, size)

        def probe(timer):
            a = timer.mark()
            verify_tree(self.target, self.cache, tokens, parents, positions, self.layers)
            b = timer.mark()
            _crop_to(self.cache, self.ctx)
            return [timer.elapsed(a, b)]
        return probe

    def overhead(self, depth: int, size: int, top_k: int):
        """The decoder's per-cycle work between and after the phases (as in `generate`, greedy)."""
        size_ctrl = StaticSize(size)

        def probe(timer):
            tree = self._draft(top_k, depth)  # untimed
            a = timer.mark()
            selected = select_verify_set(tree.scores, size_ctrl.choose_size(tree, self.ctx))
            parents = local_parents(tree.parents, selected)
            tokens = tree.tokens[selected]
            positions = self.ctx + tree.steps[selected].astype(np.int64)
            b = timer.mark()
            logits, hidden = verify_tree(self.target, self.cache, tokens, parents, positions, self.layers)
            c = timer.mark()
            path, bonus = greedy_accept(parents, tokens, logits.argmax(-1).cpu().numpy())
            keep_cache_entries(self.cache, self.ctx, [0] + path)
            new_tokens = [int(t) for t in tokens[path]] + [bonus]
            self._end_cycle(new_tokens, _features(hidden, self.layers, [0] + path))
            d = timer.mark()
            _crop_to(self.cache, self.ctx)  # untimed: back to the prepared context
            return [timer.elapsed(a, b) + timer.elapsed(c, d)]
        return probe

    def batch_forward(self, batch: int, tokens: int, context_len: int):
        from transformers import DynamicCache

        key = (batch, context_len)
        if key not in self._batch_caches:
            self._batch_caches = {}  # one at a time: batch caches are large
            cache = DynamicCache()
            with torch.no_grad():
                pos = torch.arange(context_len, device=self.device)[None].expand(batch, -1)
                self.target(input_ids=self._ids(batch, context_len), position_ids=pos, cache=cache,
                            use_cache=True, logits_to_keep=1)
            self._batch_caches[key] = cache
        cache = self._batch_caches[key]
        ids = self._ids(batch, tokens)
        pos = (context_len + torch.arange(tokens, device=self.device))[None].expand(batch, -1)

        @torch.no_grad()
        def probe(timer):
            a = timer.mark()
            self.target(input_ids=ids, position_ids=pos, cache=cache, use_cache=True)
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


def run_profile(target=None, draft=None, draft_kind=None, device=None, dtype=None, preset: str = "quick",
                out: str | Path = "runs/default", force: bool = False, progress: bool = True,
                plots: bool = True, log=print):
    """`ltd profile`: load the pair, sweep the decoder's phases, fit and write the cost model.

    Returns (model, wall seconds, whether it was reused). An existing cost_model.json for the same
    fingerprint is reused unless `force`; one for other hardware or models is refused unless `force`."""
    import time

    from ltd_sim.errors import LTDError
    from profiler import SweepSpec, Timer, load_cost_model, profile_device
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
        return model, time.perf_counter() - t0, True
    log(f"profiling {fingerprint['target']} + {draft_id} ({weights}) on {fingerprint['device']}, "
        f"{fingerprint['dtype']}, sweep '{preset}'")
    if pair.target.device.type == "cpu":
        busy = cpu_busy_fraction()
        if busy is not None and busy > BUSY_WARNING:
            log(f"warning: other processes are using {100 * busy:.0f}% of the CPU; this profile will measure "
                f"that contention (re-profile with the machine in the state it will decode in)")
    probes = DecoderProbes(pair.target.model, drafter, pair.context_limit)
    model = profile_device(probes, spec, Timer(pair.target.device), fingerprint, out, progress, plots)
    return model, time.perf_counter() - t0, False
