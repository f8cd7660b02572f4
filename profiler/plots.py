"""Plots: measured medians (with their interquartile range) against the fitted curve, per component.

Figures are `matplotlib.figure.Figure` objects, not pyplot's: they need no GUI backend (so nothing
switches matplotlib's global backend) and are freed with their last reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ltd_sim.io import write_with
from profiler.model import FittedCostModel
from profiler.sweeps import SweepResult


def _errbar(ax, x, ms, color, label):
    med = np.array([m.median for m in ms]) * 1e3
    lo = med - np.array([m.p25 for m in ms]) * 1e3
    hi = np.array([m.p75 for m in ms]) * 1e3 - med
    ax.errorbar(x, med, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt="o", ms=3.5, color=color,
                capsize=2, label=label)
    out = [i for i, m in enumerate(ms) if m.outliers]
    if out:
        ax.scatter(np.asarray(x)[out], med[out], s=60, facecolors="none", edgecolors="red", lw=1)


def _verify(ax, model, result):
    ms = result.components["verify"]
    ctxs = sorted({m.key["context_len"] for m in ms})
    vmax = max(m.key["size"] for m in ms)
    grid = np.arange(0, vmax + 1)
    for i, c in enumerate(ctxs):
        color = colormaps["viridis"](i / max(len(ctxs) - 1, 1))
        pts = sorted((m for m in ms if m.key["context_len"] == c), key=lambda m: m.key["size"])
        _errbar(ax, [m.key["size"] for m in pts], pts, color, f"ctx {c}")
        ax.plot(grid, [1e3 * model.verify(v, c) for v in grid], "-", color=color, lw=1, drawstyle="default")
    ax.set(xlabel="V (tree tokens verified besides the root)", ylabel="ms", title="verify forward")
    ax.legend(fontsize=7)


def _draft(ax, model, result):
    ms = result.components["draft_step"]
    ctxs = sorted({m.key["context_len"] for m in ms})
    ks = sorted({m.key["top_k"] for m in ms})
    combos = [(k, c) for k in ks for c in (ctxs[0], ctxs[-1])]
    for i, (k, c) in enumerate(dict.fromkeys(combos)):
        color = colormaps["plasma"](i / max(len(combos) - 1, 1))
        pts = sorted((m for m in ms if m.key["top_k"] == k and m.key["context_len"] == c), key=lambda m: m.key["step"])
        steps = [m.key["step"] for m in pts]
        _errbar(ax, steps, pts, color, f"k={k} ctx {c}")
        ax.plot(steps, [1e3 * model.draft_step(s, k, c) for s in steps], "-", color=color, lw=1)
    ax.set(xlabel="draft step", ylabel="ms", title="draft step")
    ax.legend(fontsize=7)


def _overhead(ax, model, result):
    ms = result.components["overhead"]
    combos = sorted({(m.key["depth"], m.key["top_k"]) for m in ms})
    fixed = model.without_policy()
    for i, (d, k) in enumerate(combos):
        color = colormaps["tab10"](i % 10)
        pts = sorted((m for m in ms if m.key["depth"] == d and m.key["top_k"] == k), key=lambda m: m.key["size"])
        sizes = [m.key["size"] for m in pts]
        _errbar(ax, sizes, pts, color, f"D={d} k={k}")
        grid = np.arange(0, max(sizes) + 1)
        ax.plot(grid, [1e3 * fixed.overhead(d, v, k) for v in grid], "-", color=color, lw=1)
    ax.set(xlabel="V", ylabel="ms", title=f"per-cycle overhead (+ policy {model.policy_s * 1e6:.0f} us/decision)")
    ax.legend(fontsize=6, ncol=2)


def _batch(ax, model, result):
    ms = result.components["batch_forward"]
    bs = sorted({m.key["batch"] for m in ms})
    for i, b in enumerate(bs):
        color = colormaps["cividis"](i / max(len(bs) - 1, 1))
        pts = sorted((m for m in ms if m.key["batch"] == b), key=lambda m: m.key["tokens"])
        ts = [m.key["tokens"] for m in pts]
        _errbar(ax, ts, pts, color, f"batch {b}")
        ax.plot(ts, [1e3 * model.batch_forward(b, t) for t in ts], "-", color=color, lw=1)
    ax.set(xlabel="tokens per sequence", ylabel="ms", title="target forward (serving)", xscale="log", yscale="log")
    ax.legend(fontsize=7)


def _ngram(ax, model, result):
    ms = result.components["ngram"]
    depths = sorted({1, max(m.key["depth"] for m in ms)})
    for i, d in enumerate(depths):
        color = colormaps["tab10"](i)
        pts = sorted((m for m in ms if m.key["depth"] == d), key=lambda m: m.key["context_len"])
        ctx = [m.key["context_len"] for m in pts]
        _errbar(ax, ctx, pts, color, f"depth {d}")
        grid = np.linspace(0, max(ctx), 50)
        ax.plot(grid, [1e3 * model.ngram(c, d) for c in grid], "-", color=color, lw=1)
    ax.set(xlabel="context length", ylabel="ms", ylim=(0, None), title="n-gram lookup + merges (matching suffix)")
    ax.legend(fontsize=7)


PANELS = {"verify": _verify, "draft_step": _draft, "overhead": _overhead, "batch_forward": _batch,
          "ngram": _ngram}


def _save(fig: Figure, path: Path) -> Path:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


def plot_all(model: FittedCostModel, result: SweepResult, out_dir: str | Path) -> list[Path]:
    """One PNG per measured component, plus profile.png with every panel; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in PANELS if result.components.get(n)]
    paths = []
    for name in names:
        fig = Figure(figsize=(6, 4), tight_layout=True)
        ax = fig.subplots()
        PANELS[name](ax, model, result)
        paths.append(_save(fig, out / f"{name}.png"))
    cols = 2
    rows = (len(names) + 1) // cols
    fig = Figure(figsize=(12, 4.2 * rows), tight_layout=True)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        PANELS[name](ax, model, result)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{model.fingerprint.get('device', '')} | {model.fingerprint.get('target', '')}", fontsize=9)
    paths.insert(0, _save(fig, out / "profile.png"))
    return paths
