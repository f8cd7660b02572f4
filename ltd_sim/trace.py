"""Draft-tree traces: the compact, versioned on-disk record the simulator replays (DESIGN.md).

One file per generated sequence (`seq_NNNNN.npz`, or `seq_NNNNN_sJJ.npz` for the J-th sampled
continuation of prompt NNNNN; compressed): at every position p of the target's output, the full
`max_depth` draft tree below root output[p], its node arrays concatenated over positions
(`offsets[p]:offsets[p+1]` are position p's nodes, node 0 the root, parents local to the tree), the
target's output itself (whose tokens after p are position p's continuation), and the context length
(tokens in the target's KV cache) at every position. The output is the target's greedy output, or at
T > 0 a continuation the target sampled: the header records the sampling settings (`Sampling`) and
the seed, and the simulation is exact in both cases (docs/sampling.md). Writes are atomic; a damaged
or foreign file raises `LTDError` with one clear line.

Version 2 adds the n-gram branches of decoders with an n-gram source (`--ngram`, `--draft-kind
ngram`; docs/ngram.md): per node, its sources, the head's score and the n-gram log share (so a trace
can be re-scored under another calibration); per position, the match length, the number of earlier
occurrences and the best first-token n-gram score (the signals a policy observes). The header's
`draft_sources` says which sources drafted ("head", "ngram" or "head+ngram"). Version 1 files (no
n-gram arrays) still load.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ltd_sim.io import write_bytes, write_json
from ltd_sim.errors import LTDError
from ltd_sim.tree import DraftTree, NgramSignals, SourcedTree

TRACE_FORMAT = "ltd-trace"
TRACE_VERSION = 2
READS_VERSIONS = (1, 2)  # version 1: no n-gram arrays
MANIFEST = "manifest.json"
_ARRAYS = ("tokens", "parents", "scores", "steps", "offsets", "output", "context_lens")
_NGRAM_ARRAYS = ("sources", "head_scores", "ngram_share", "ngram_match", "ngram_count", "ngram_best")
HEAD, NGRAM, HYBRID = "head", "ngram", "head+ngram"  # a trace's draft sources
_NAME = re.compile(r"seq_(\d{5,})(?:_s(\d{2,}))?\.npz")


@dataclass(frozen=True)
class Sampling:
    """The target's sampling law a trace's output was drawn from: T = 0 is greedy decoding."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise LTDError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LTDError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.temperature == 0:  # greedy: top-p changes nothing, so one greedy setting compares equal
            object.__setattr__(self, "top_p", 1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def label(self) -> str:
        if self.greedy:
            return "greedy (T = 0)"
        return f"T = {self.temperature:g}" + (f", top-p {self.top_p:g}" if self.top_p < 1 else "")

    def to_json(self) -> dict:
        return {"temperature": float(self.temperature), "top_p": float(self.top_p)}

    @classmethod
    def from_json(cls, data: dict | None) -> "Sampling":
        """Settings from a header or spec; absent (files written before sampled traces) means greedy."""
        if not data:
            return cls()
        return cls(float(data.get("temperature", 0.0)), float(data.get("top_p", 1.0)))


@dataclass
class TraceSequence:
    """The recorded trees of one generation."""

    tokens: np.ndarray  # int32 [N]: every position's tree nodes, concatenated
    parents: np.ndarray  # int16/int32 [N]: parent index local to its tree (-1 for a root)
    scores: np.ndarray  # float32 [N]: cumulative draft log-probability (exact: ties decide V sets)
    steps: np.ndarray  # int8 [N]: node depth
    offsets: np.ndarray  # int64 [P + 1]
    output: np.ndarray  # int64 [L]: the target's (greedy or sampled) output; output[p] is position p's root
    context_lens: np.ndarray  # int64 [P]: target KV length when position p's cycle begins
    top_k: int
    max_depth: int
    meta: dict = field(default_factory=dict)
    sampling: Sampling = Sampling()  # the law `output` was drawn from (greedy by default)
    draft_sources: str = HEAD  # HEAD, NGRAM or HYBRID: which sources drafted the trees
    # n-gram arrays (None for HEAD traces): per node
    sources: np.ndarray | None = None  # uint8 [N]: SOURCE_HEAD / SOURCE_NGRAM bits
    head_scores: np.ndarray | None = None  # float32 [N]: the head's score (-inf: an n-gram node only)
    ngram_share: np.ndarray | None = None  # float32 [N]: log share of the n-gram occurrences through it
    # ... and per position
    ngram_match: np.ndarray | None = None  # int32 [P]: longest match length (0: none)
    ngram_count: np.ndarray | None = None  # int32 [P]: its earlier occurrences
    ngram_best: np.ndarray | None = None  # float32 [P]: best first-token n-gram score (-inf: no branch)

    @property
    def num_positions(self) -> int:
        return len(self.offsets) - 1

    @property
    def has_ngram(self) -> bool:
        return self.draft_sources != HEAD

    def signals(self, p: int) -> NgramSignals:
        """Position p's n-gram signals (what the decoder's policy saw before drafting)."""
        if not self.has_ngram:
            return NgramSignals()
        return NgramSignals(int(self.ngram_match[p]), int(self.ngram_count[p]), float(self.ngram_best[p]))

    def tree(self, p: int) -> DraftTree:
        """Position p's recorded tree: a `SourcedTree` when the trace has n-gram branches."""
        a, b = int(self.offsets[p]), int(self.offsets[p + 1])
        arrays = (self.tokens[a:b].astype(np.int64), self.parents[a:b].astype(np.int32), self.scores[a:b],
                  self.steps[a:b])
        if not self.has_ngram:
            return DraftTree(*arrays)
        return SourcedTree(*arrays, self.sources[a:b], self.head_scores[a:b], self.ngram_share[a:b],
                           self.signals(p))

    def continuation(self, p: int) -> np.ndarray:
        """The target's tokens below position p's root (continuation[d] at depth d + 1). At T > 0 they
        are the sampled ones: following the child that carries them is the decoder's rejection law."""
        return self.output[p + 1: p + 1 + self.max_depth].astype(np.int64)

    @classmethod
    def from_trees(cls, trees: list[DraftTree], output, context_lens, top_k: int, max_depth: int,
                   meta: dict | None = None, sampling: Sampling = Sampling(),
                   draft_sources: str = HEAD) -> "TraceSequence":
        """One sequence from its trees (`SourcedTree`s unless `draft_sources` is HEAD)."""
        sizes = [t.num_nodes for t in trees]
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)

        def cat(name: str, dt) -> np.ndarray:
            return np.concatenate([getattr(t, name) for t in trees]).astype(dt) if trees else np.zeros(0, dt)

        pdt = np.int16 if max(sizes, default=0) < 2**15 else np.int32
        ngram = {}
        if draft_sources != HEAD:
            if not all(isinstance(t, SourcedTree) for t in trees):
                raise ValueError("a trace with n-gram branches needs SourcedTree trees")
            ngram = {"sources": cat("sources", np.uint8), "head_scores": cat("head_scores", np.float32),
                     "ngram_share": cat("ngram_share", np.float32),
                     "ngram_match": np.array([t.ngram.match_len for t in trees], np.int32),
                     "ngram_count": np.array([t.ngram.matches for t in trees], np.int32),
                     "ngram_best": np.array([t.ngram.best_score for t in trees], np.float32)}
        return cls(cat("tokens", np.int32), cat("parents", pdt), cat("scores", np.float32),
                   cat("steps", np.int8), offsets, np.asarray(output, np.int64),
                   np.asarray(context_lens, np.int64), int(top_k), int(max_depth), dict(meta or {}), sampling,
                   draft_sources, **ngram)

    def validate(self, where: str = "trace") -> None:
        n, p = len(self.tokens), self.num_positions
        if not (len(self.parents) == len(self.scores) == len(self.steps) == n):
            raise LTDError(f"{where}: node arrays have different lengths")
        if p < 0 or self.offsets[0] != 0 or self.offsets[-1] != n or (np.diff(self.offsets) < 1).any():
            raise LTDError(f"{where}: bad node offsets")
        if len(self.context_lens) != p or len(self.output) != p + 1:
            raise LTDError(f"{where}: {p} positions but {len(self.output)} output tokens and "
                           f"{len(self.context_lens)} context lengths (expected {p + 1} and {p})")
        if n and (self.steps.max() > self.max_depth):
            raise LTDError(f"{where}: a node is deeper than max_depth {self.max_depth}")
        if self.draft_sources not in (HEAD, NGRAM, HYBRID):
            raise LTDError(f"{where}: unknown draft sources {self.draft_sources!r}")
        if self.has_ngram:
            arrays = [getattr(self, name) for name in _NGRAM_ARRAYS]
            if any(a is None for a in arrays) or any(len(a) != n for a in arrays[:3]) \
                    or any(len(a) != p for a in arrays[3:]):
                raise LTDError(f"{where}: n-gram arrays missing or of the wrong length")


def save_sequence(path: str | os.PathLike, seq: TraceSequence) -> None:
    """Write atomically: a temp file in the same folder, then a rename."""
    path = Path(path)
    seq.validate(str(path))
    header = {"format": TRACE_FORMAT, "version": TRACE_VERSION, "top_k": seq.top_k,
              "max_depth": seq.max_depth, "sampling": seq.sampling.to_json(), "draft_sources": seq.draft_sources,
              "meta": seq.meta}
    names = _ARRAYS + (_NGRAM_ARRAYS if seq.has_ngram else ())
    buf = io.BytesIO()
    np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                        **{name: getattr(seq, name) for name in names})
    write_bytes(path, buf.getvalue())


def load_sequence(path: str | os.PathLike) -> TraceSequence:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            arrays = {name: data[name] for name in _ARRAYS}
            sources = header.get("draft_sources", HEAD) if isinstance(header, dict) else HEAD
            if sources != HEAD:
                arrays.update({name: data[name] for name in _NGRAM_ARRAYS})
    except FileNotFoundError:
        raise LTDError(f"no trace file at {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise LTDError(f"corrupted trace file {path}: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from None
    if not isinstance(header, dict) or header.get("format") != TRACE_FORMAT:
        raise LTDError(f"{path} is not an LTD trace file")
    if header.get("version") not in READS_VERSIONS:
        raise LTDError(f"trace file {path} has format version {header.get('version')}; this toolkit reads "
                       f"versions {', '.join(map(str, READS_VERSIONS))} (re-record it with `ltd trace`)")
    try:
        sampling = Sampling.from_json(header.get("sampling"))
    except (LTDError, TypeError, ValueError, AttributeError):
        raise LTDError(f"trace file {path} has unreadable sampling settings: {header.get('sampling')!r}") from None
    seq = TraceSequence(**arrays, top_k=int(header["top_k"]), max_depth=int(header["max_depth"]),
                        meta=header.get("meta", {}), sampling=sampling, draft_sources=sources)
    seq.validate(str(path))
    return seq


def sequence_path(out_dir: str | os.PathLike, index: int, sample: int = 0) -> Path:
    """Prompt `index`'s file; its sampled continuations after the first get `_sJJ` (J = `sample`)."""
    return Path(out_dir) / (f"seq_{index:05d}.npz" if sample == 0 else f"seq_{index:05d}_s{sample:02d}.npz")


def prompt_index(path: str | os.PathLike) -> int:
    """The prompt a trace file belongs to (every sampled continuation of a prompt shares its split)."""
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        raise LTDError(f"{path} is not named like a trace file (seq_NNNNN.npz or seq_NNNNN_sJJ.npz)")
    return int(match.group(1))


def trace_files(trace_dir: str | os.PathLike) -> list[Path]:
    d = Path(trace_dir)
    if not d.is_dir():
        raise LTDError(f"no trace folder at {d}")
    files = sorted(d.glob("seq_*.npz"))
    if not files:
        raise LTDError(f"no trace files (seq_*.npz) in {d}; record some with `ltd trace`")
    return files


SPLITS = ("all", "train", "val", "test")


def split_of(index: int) -> str:
    """Deterministic split by sequence order: 3 of 5 train, 1 val (checkpoint choice), 1 test."""
    return {3: "val", 4: "test"}.get(index % 5, "train")


def split_prompts(prompts: list) -> tuple[list, list]:
    """(train, validation) prompts by the same rule as the traces (`split_of`: 3 of 5 train, 1 val, the
    test fifth left out for benchmarks); under 5 prompts, the last one validates."""
    if len(prompts) < 2:
        raise LTDError(f"fine-tuning needs at least 2 prompts (training and validation), got {len(prompts)}")
    if len(prompts) < 5:
        return list(prompts[:-1]), [prompts[-1]]
    train = [p for i, p in enumerate(prompts) if split_of(i) == "train"]
    val = [p for i, p in enumerate(prompts) if split_of(i) == "val"]
    return train, val


def load_traces(trace_dir: str | os.PathLike, split: str = "all",
                mix_sampling: bool = False) -> list[TraceSequence]:
    """Every sequence of a trace folder (or one split of it: by prompt, so that every sampled
    continuation of a prompt lands in the same split), checked to share top-k and max depth, and
    unless `mix_sampling`, one sampling setting (policies and grids are tuned for one regime)."""
    if split not in SPLITS:
        raise LTDError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    files = trace_files(trace_dir)
    seqs = [load_sequence(f) for f in files if split == "all" or split_of(prompt_index(f)) == split]
    if not seqs:
        raise LTDError(f"the {split!r} split of {trace_dir} is empty ({len(files)} sequences in all)")
    shapes = {(s.top_k, s.max_depth) for s in seqs}
    if len(shapes) > 1:
        raise LTDError(f"traces in {trace_dir} mix (top_k, max_depth) settings: {sorted(shapes)}")
    kinds = {s.draft_sources for s in seqs}
    if len(kinds) > 1:
        raise LTDError(f"traces in {trace_dir} mix draft sources ({', '.join(sorted(kinds))}); "
                       "record one kind per folder")
    settings = sampling_of(seqs)
    if len(settings) > 1 and not mix_sampling:
        raise LTDError(f"traces in {trace_dir} mix sampling settings ({'; '.join(s.label() for s in settings)}); "
                       "record one setting per folder, or pass --mix-sampling to use them together")
    return seqs


def sampling_of(seqs: list[TraceSequence]) -> list[Sampling]:
    """The distinct sampling settings of some sequences, greedy first."""
    return sorted({s.sampling for s in seqs}, key=lambda s: (s.temperature, s.top_p))


def require_sampling(found, asked: Sampling, where: str) -> None:
    """Refuse, in one line, to decode at `asked` what was simulated on traces recorded at `found`."""
    found = tuple(found)
    if asked not in found:
        raise LTDError(f"{where} was recorded at {'; '.join(s.label() for s in found)}, not at {asked.label()}: "
                       "record traces at that setting (ltd trace --temperature T --top-p P)")


def write_manifest(out_dir: str | os.PathLike, info: dict) -> None:
    write_json(Path(out_dir) / MANIFEST, {"format": TRACE_FORMAT, "version": TRACE_VERSION, **info})
