"""Saved LTD policies (stable-baselines3 zips + a JSON spec) and their use as controllers.

A policy folder holds `depth.zip` and `size.zip` (SB3 PPO models) and `spec.json`: the feature spec
(name, dimension, normalisation constants), the action spec (depth: CONTINUE/STOP; size: the V grid),
the trace settings (top-k, max depth) and training figures. `PolicyController` implements both
`DepthController` and `SizeController` from such a folder, observing through the one feature
function, so the real decoder runs exactly what the simulator trained.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltd_sim.errors import LTDError
from ltd_sim.features import FeatureSpec, observe, pre_draft_observation
from ltd_sim.io import read_dir, replace_dir, write_with
from ltd_sim.sim import SimTables, first_stop
from ltd_sim.trace import Sampling
from ltd_sim.tree import DraftTree, NgramSignals

POLICY_FORMAT = "ltd-policies"
POLICY_VERSION = 1
DEPTH_ACTIONS = ("CONTINUE", "STOP")
STOP = DEPTH_ACTIONS.index("STOP")


def predict(model, obs: np.ndarray) -> np.ndarray:
    """Deterministic actions for a batch of observations [n, F]."""
    actions, _ = model.predict(np.asarray(obs, np.float32), deterministic=True)
    return np.asarray(actions, np.int64).reshape(len(obs))


def depth_table(t: SimTables, depth_model, pre_draft: bool | None = None) -> np.ndarray:
    """The depth a depth policy stops at, per position [P] (the tree's depth at the latest; 0 where it
    does not draft). `pre_draft`: whether the policy decides before drafting (its feature set's
    `asks_before_draft`; default: the tables' spec)."""
    P, D, F = t.feats.shape
    stop = predict(depth_model, t.feats.reshape(P * D, F)).reshape(P, D) == STOP
    depth = first_stop(stop, t.dmax)
    if (t.spec.asks_before_draft if pre_draft is None else pre_draft) and t.feats0 is not None:
        depth = np.where(predict(depth_model, t.feats0) == STOP, 0, depth)
    return depth


def size_table(t: SimTables, size_model) -> np.ndarray:
    """The size index a size policy picks, per position and depth [P, D]."""
    P, D, F = t.feats.shape
    return predict(size_model, t.feats.reshape(P * D, F)).reshape(P, D)


def decision_tables(t: SimTables, depth_model, size_model, pre_draft: bool | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    return depth_table(t, depth_model, pre_draft), size_table(t, size_model)


def save_policy_zip(model, path: Path) -> None:
    """One stable-baselines3 model as a zip, written atomically (SB3 appends ".zip" to a path without one)."""
    write_with(path, lambda tmp: model.save(tmp))


def save_policies(out_dir: str | os.PathLike, depth_model, size_model, spec: FeatureSpec,
                  extra: dict | None = None) -> Path:
    """Write depth.zip, size.zip and spec.json into `out_dir` (a fresh folder swapped in atomically)."""
    out = Path(out_dir)
    with replace_dir(out) as tmp:
        depth_model.save(tmp / "depth.zip")
        size_model.save(tmp / "size.zip")
        info = {"format": POLICY_FORMAT, "version": POLICY_VERSION, "features": spec.to_json(),
                "depth_actions": list(DEPTH_ACTIONS), "size_grid": list(spec.size_grid),
                "top_k": spec.top_k, "max_depth": spec.max_depth, **(extra or {})}
        (tmp / "spec.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


SPEC_KEYS = ("format", "version", "features", "depth_actions", "size_grid", "top_k", "max_depth")


@dataclass
class Policies:
    """A depth and a size policy (stable-baselines3 models) and the feature spec they observe through."""

    depth_model: Any
    size_model: Any
    spec: FeatureSpec
    info: dict = field(default_factory=dict)  # spec.json as read: the spec, plus training figures, sources

    def extras(self) -> dict:
        """spec.json's own entries (training figures, sources), without what `save_policies` writes."""
        return {k: v for k, v in self.info.items() if k not in SPEC_KEYS}

    @property
    def sampling(self) -> tuple[Sampling, ...]:
        return trained_sampling(self.info)


def trained_sampling(info: dict) -> tuple[Sampling, ...]:
    """The sampling settings of the traces a policy spec was trained on (greedy when the spec predates
    sampled traces)."""
    return tuple(Sampling.from_json(x) for x in info.get("sampling") or [{}])


def sampling_mismatch(info: dict, temperature: float, top_p: float = 1.0) -> str | None:
    """One line when decoding at (temperature, top_p) matches no setting the policies were trained for."""
    here, trained = Sampling(temperature, top_p), trained_sampling(info)
    if here in trained:
        return None
    return (f"note: these policies were trained on traces at {'; '.join(s.label() for s in trained)}, "
            f"decoding runs at {here.label()} (trace and pretrain at this setting for policies tuned to it)")


def calibration_mismatch(info: dict, digest: str) -> str | None:
    """One line when the decoder scores n-gram branches with another calibration (digest) than the one
    the policies were trained with (their spec's "ngram" entry); None when they agree or it is unknown."""
    trained = (info.get("ngram") or {}).get("calibration")
    if trained is None or trained == digest:
        return None
    return (f"note: these policies were trained with the n-gram calibration {trained}, decoding scores n-gram "
            f"branches with {digest} (pass the same --ngram-calibration)")


def load_policies(policy_dir: str | os.PathLike) -> Policies:
    """The policies of a folder written by `save_policies`; a missing, corrupted or foreign one is a
    one-line LTDError."""
    from stable_baselines3 import PPO

    d = read_dir(policy_dir)
    spec_path = d / "spec.json"
    if not spec_path.is_file():
        raise LTDError(f"no policy at {d} (expected spec.json, depth.zip, size.zip)")
    try:
        info = json.loads(spec_path.read_text())
    except ValueError as exc:
        raise LTDError(f"corrupted policy spec {spec_path}: {exc}") from None
    if info.get("format") != POLICY_FORMAT or info.get("version") != POLICY_VERSION:
        raise LTDError(f"{spec_path} is not an LTD policy spec of version {POLICY_VERSION}")
    spec = FeatureSpec.from_json(info["features"])
    models = []
    for name in ("depth", "size"):
        try:
            models.append(PPO.load(d / f"{name}.zip", device="cpu"))
        except Exception as exc:  # noqa: BLE001 (SB3 raises many kinds on a bad zip)
            raise LTDError(f"cannot load the {name} policy {d / (name + '.zip')}: {exc}") from None
    for model, n_actions in zip(models, (2, len(spec.size_grid))):
        if model.observation_space.shape != (spec.dim,) or model.action_space.n != n_actions:
            raise LTDError(f"the policies in {d} do not match their spec (features {spec.dim}, "
                           f"{n_actions} actions)")
    return Policies(models[0], models[1], spec, info)


class NumpyActor:
    """The deterministic action of an SB3 MlpPolicy actor, in numpy (Linear + Tanh/ReLU layers, argmax).

    SB3's `predict` spends most of a millisecond per single observation on tensor conversion and
    checks; this forward takes microseconds, which is what keeps policy inference a negligible
    share of a decoding cycle. `NumpyActor.from_model` returns None for an architecture it does
    not know (callers then use SB3's `predict`)."""

    ACTIVATIONS = {"Tanh": np.tanh, "ReLU": lambda x: np.maximum(x, 0)}

    def __init__(self, layers: list, activations: list):
        self.layers, self.activations = layers, activations

    @classmethod
    def from_model(cls, model) -> "NumpyActor | None":
        import torch

        policy = model.policy
        if type(getattr(policy, "features_extractor", None)).__name__ != "FlattenExtractor":
            return None
        layers, acts = [], []
        for mod in list(policy.mlp_extractor.policy_net) + [policy.action_net]:
            if isinstance(mod, torch.nn.Linear):
                layers.append((mod.weight.detach().cpu().numpy().T.astype(np.float32).copy(),
                               mod.bias.detach().cpu().numpy().astype(np.float32).copy()))
                acts.append(None)
            elif type(mod).__name__ in cls.ACTIVATIONS and acts and acts[-1] is None:
                acts[-1] = cls.ACTIVATIONS[type(mod).__name__]
            else:
                return None
        return cls(layers, acts)

    def act(self, obs: np.ndarray) -> int:
        x = np.asarray(obs, np.float32).reshape(-1)
        for (w, b), f in zip(self.layers, self.activations):
            x = x @ w + b
            if f is not None:
                x = f(x)
        return int(np.argmax(x))


class PolicyController:
    """Depth and size control by saved LTD policies, for the real decoder (and anything else).

    `seconds` and `calls` add up the time spent in (and the number of) controller calls, features
    included: the policy inference cost that `ltd generate` and `ltd bench` report."""

    def __init__(self, policies: Policies | str | os.PathLike):
        """`policies`: loaded `Policies`, or a policy folder to load."""
        if not isinstance(policies, Policies):
            policies = load_policies(policies)
        self.depth_model, self.size_model = policies.depth_model, policies.size_model
        self.spec, self.info = policies.spec, policies.info
        self._depth_fast = NumpyActor.from_model(self.depth_model)
        self._size_fast = NumpyActor.from_model(self.size_model)
        self.seconds = 0.0
        self.calls = 0

    def check_compatible(self, top_k: int, max_depth: int) -> None:
        if (top_k, max_depth) != (self.spec.top_k, self.spec.max_depth):
            raise LTDError(f"the policies were trained for top-k {self.spec.top_k}, max depth "
                           f"{self.spec.max_depth}; this decoder uses {top_k}, {max_depth}")

    def _act(self, model, fast, tree: DraftTree, context_len: int) -> int:
        t0 = time.perf_counter()
        obs = observe(tree, context_len, self.spec)
        action = fast.act(obs) if fast is not None else int(predict(model, obs[None])[0])
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return action

    def should_draft(self, context_len: int, ngram: NgramSignals | None = None) -> bool:
        """Before step 1 (feature sets paper_v2, ngram_v1, the latter seeing the cycle's n-gram
        signals): STOP is "no draft" (D = 0). Policies of paper_v1 were never asked there, so they
        always draft."""
        if not self.spec.asks_before_draft:
            return True
        t0 = time.perf_counter()
        obs = pre_draft_observation(context_len, self.spec, ngram)
        fast = self._depth_fast
        action = fast.act(obs) if fast is not None else int(predict(self.depth_model, obs[None])[0])
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return action != STOP

    def never_drafts(self, max_context: int) -> bool:
        """Whether the depth policy says "no draft" at every context length up to `max_context`. The
        pre-draft decision sees the context length only, so this is exact: such policies decode as
        plain decoding, and a caller may drop the drafter (whose per-cycle bookkeeping, the target's
        hidden states for its catch-up, then buys nothing). Policies that see n-gram signals decide on
        the context's content too: never claimed."""
        if not self.spec.asks_before_draft or self.spec.uses_ngram:
            return False
        obs = np.stack([pre_draft_observation(c, self.spec) for c in range(max(int(max_context), 0) + 1)])
        return bool((predict(self.depth_model, obs) == STOP).all())

    def should_continue(self, tree: DraftTree, context_len: int) -> bool:
        return self._act(self.depth_model, self._depth_fast, tree, context_len) != STOP

    def choose_size(self, tree: DraftTree, context_len: int) -> int:
        return int(self.spec.size_grid[self._act(self.size_model, self._size_fast, tree, context_len)])
