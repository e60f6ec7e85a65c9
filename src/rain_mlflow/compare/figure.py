"""`compare --report DIR`: `report.md` (scope, thresholds, the markdown table and evidence) and `curves.png`."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from rain_mlflow.compare.report import RunReport, render_markdown
from rain_mlflow.diagnostics.history import is_finite
from rain_mlflow.diagnostics.thresholds import Thresholds


def write_report(report_dir: Path, reports: Sequence[RunReport], scope: str, uri: str,
                 thresholds: Thresholds) -> None:
    """`report.md` and `curves.png` in `report_dir`, each written whole or not at all."""
    report_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(report_dir / "curves.png", curves_png(reports))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    changed = [f"{name}={value}" for name, value in thresholds.changed().items()]
    text = "\n".join([
        "# Training runs compared", "",
        f"{scope}, tracking URI `{uri}`, {len(reports)} runs; generated {stamp} by "
        f"`rain-mlflow compare`. Thresholds: {', '.join(changed) if changed else 'defaults'} "
        "(see docs/diagnostics.md).", "",
        render_markdown(reports),
        "![Validation and test accuracy per epoch](curves.png)", "",
    ])
    _atomic_write(report_dir / "report.md", text.encode("utf-8"))


def _atomic_write(path: Path, data: bytes) -> None:
    from rain_mlflow.data.io import atomic_path  # imported here: `rain_mlflow.data` brings pandas

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def curves_png(reports: Sequence[RunReport]) -> bytes:
    """One figure: val accuracy (left) and test accuracy (right) per epoch, one colour per run, shared y axis."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    legend = 0 < len(reports) <= 20  # beyond 20 runs a legend hides the curves
    fig = Figure(figsize=(12, 5 + (0.22 * math.ceil(len(reports) / 2) if legend else 0)), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot or a global backend switch
    axes = fig.subplots(1, 2, sharey=True)
    palette = matplotlib.colormaps["tab10" if len(reports) <= 10 else "tab20" if len(reports) <= 20 else "viridis"]
    for i, r in enumerate(reports):
        colour = palette(i % palette.N if palette.N < 256 else i / max(1, len(reports) - 1))
        label = r.history.run_name + (f" [{', '.join(r.flags)}]" if r.flags else "")
        for ax, metric in zip(axes, ("val_accuracy", "test_accuracy")):
            points = [(e, v) for e, v in r.history.series(metric) if is_finite(v)]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, color=colour, linestyle="--" if r.flags else "-",
                        label=label if metric == "val_accuracy" else None)
    for ax, title in zip(axes, ("validation accuracy", "test accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    if legend:
        fig.legend(loc="outside lower center", ncols=2, fontsize="small", title="run [flags] (dashed: flagged)")
    else:
        fig.suptitle(f"{len(reports)} runs (dashed: flagged; legend shown up to 20 runs)")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
