"""A build's resumable state: its wall-clock budget (`BuildClock`), what earlier runs in the work folder
did (`BuildState`, state.json) and the target's responses so far (`Generated`, generated.json)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ltd_sim.errors import LTDError
from ltd_sim.io import write_json

STATE_VERSION = 2  # of state.json; a work folder of another version is refused, not migrated


class BuildClock:
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


@dataclass
class BuildState:
    """What a resumed build needs to know of the earlier runs in its work folder (state.json)."""

    version: int = STATE_VERSION
    user_prompts: str = ""  # fingerprint of the user's prompts (`prompts_fingerprint`)
    spent_s: float = 0.0  # wall seconds of the build so far
    extend_origin_s: float = 0.0  # `BuildClock.origin_s`
    finished: bool = False
    gen_feat_items: int = 0  # generated sequences featurized
    tf_items: int = 0  # teacher-forced texts featurized
    data: dict = field(default_factory=dict)  # sequences, positions, by source, vocabulary coverage
    train_seconds_target: float = 0.0
    train_s_in_spent: float = 0.0  # training seconds that `spent_s` counts (those of a finished build)

    @classmethod
    def load(cls, work_dir: Path) -> BuildState | None:
        """The saved state; None for a folder without one. A state this version cannot read -> LTDError."""
        path = Path(work_dir) / "state.json"
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"version {raw.get('version')}")
            return cls(**raw)
        except (ValueError, TypeError, AttributeError) as exc:
            raise LTDError(f"{path} was written by another version of `ltd draft build` ({exc}); "
                           "build in a fresh work folder (drop --resume or pick another --work)") from None

    def save(self, work_dir: Path) -> None:
        write_json(Path(work_dir) / "state.json", asdict(self))


@dataclass
class Generated:
    """The target's responses so far (generated.json): items are [ids, prompt length, source]."""

    done: int = 0  # generation batches finished
    items: list = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def load(cls, path: Path) -> Generated:
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @property
    def new_tokens(self) -> int:
        return sum(len(ids) - start for ids, start, _ in self.items)
