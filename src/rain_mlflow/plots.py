"""Figures logged with a run: learning curves and confusion matrices.

Built with matplotlib's object API (`matplotlib.figure.Figure`), never through `pyplot`: no backend is selected or
switched (a notebook that calls the trainer keeps its own), no window opens, and a figure is freed like any object
once it is saved. MLflow renders a bare `Figure` with the Agg canvas when it saves the PNG.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def learning_curves(history: dict[int, dict[str, float]], best_epoch: int, title: str) -> Figure:
    """Loss, accuracy and F1 per epoch for train / validation / test, with the best epoch marked."""
    epochs = sorted(history)
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("loss", ("train_loss", "val_loss", "test_loss")),
              ("accuracy", ("val_accuracy", "test_accuracy")),
              ("F1 (rain)", ("val_f1", "test_f1")))
    for ax, (label, keys) in zip(axes, panels):
        for key in keys:
            ax.plot(epochs, [history[e].get(key, float("nan")) for e in epochs], marker="o", ms=3,
                    label=key.split("_")[0])
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def confusion_figure(matrices: dict[str, list[list[int]]], title: str) -> Figure:
    """One heat map per split: rows = true class, columns = predicted class, counts and row shares."""
    fig = Figure(figsize=(4.6 * len(matrices), 4.2), layout="constrained")
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    names = ["no rain", "rain"]
    for ax, (split, cm) in zip(axes, matrices.items()):
        ax.imshow(cm, cmap="Blues")
        for i in range(2):
            row = max(sum(cm[i]), 1)
            for j in range(2):
                ax.text(j, i, f"{cm[i][j]}\n{cm[i][j] / row:.0%}", ha="center", va="center",
                        color="white" if cm[i][j] / row > 0.5 else "black")
        ax.set_xticks([0, 1], names)
        ax.set_yticks([0, 1], names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(split)
    fig.suptitle(title)
    return fig


def close(fig: Figure) -> None:
    """Release the figure's drawing state now (it is not registered with pyplot, so nothing else holds it)."""
    fig.clear()
