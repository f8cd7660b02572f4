"""The training logs written beside a head: train_log.json (the points of `train_head`), train_log.csv
(one row per point and unrolled step) and training_curves.png."""

from __future__ import annotations

import csv
from pathlib import Path

from ltd_sim.io import write_json, write_with


def write_logs(log: list[dict], folder: Path) -> None:
    """train_log.json, train_log.csv (one row per point and unrolled step) and training_curves.png."""
    folder = Path(folder)
    write_json(folder / "train_log.json", log)
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

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()) if rows else ["step"])
            w.writeheader()
            w.writerows(rows)

    write_with(folder / "train_log.csv", write_csv)
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
    write_with(folder / "training_curves.png", lambda t: fig.savefig(t, dpi=110, format="png"))
    plt.close(fig)
