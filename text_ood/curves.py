"""Training curves of a ``train`` workdir: every stage's ID-validation perplexity per epoch (PNG).

The teacher, the from-scratch LM and the students share one epoch budget by default, so their
curves on one epoch axis show what distillation can reach (the student cannot be expected to go
below its teacher when it learns only from the teacher) and whether the budget was enough.
"""

from __future__ import annotations

import json
import os

CURVES_FILE = "val_perplexity.png"


def stage_histories(workdir: str) -> dict[str, list[dict]]:
    """``{stage: history}`` of every stage directory of ``workdir`` with a ``history.json``."""
    histories = {}
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name, "history.json")
        if os.path.isfile(path):
            with open(path) as f:
                histories[name] = json.load(f)
    return histories


def plot_validation_perplexity(workdir: str, title: str = "") -> str | None:
    """Writes ``WORKDIR/val_perplexity.png``; returns its path (None when no stage has run)."""
    histories = {k: v for k, v in stage_histories(workdir).items() if v}
    if not histories:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        perplexities = [h["val_perplexity"] for h in history]
        best = min(range(len(history)), key=lambda i: perplexities[i])
        line, = ax.plot(epochs, perplexities, marker="o",
                        label=f"{name} (best {perplexities[best]:.2f}, epoch {epochs[best]})")
        ax.plot([epochs[best]], [perplexities[best]], marker="*", markersize=14,
                color=line.get_color())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ID-validation perplexity (lower is better)")
    ax.set_title(title or f"{os.path.basename(os.path.abspath(workdir))}: validation perplexity per stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, CURVES_FILE)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
