"""Section 5: the whole `rain-mlflow compare` process at 1,000 runs x 30 epochs, vs the naive public-API loop.

Reuses `bench_compare.py`: the same store (built once under $TMPDIR and reused, about 7 minutes the first time),
the same fresh-process timing, the same check that both paths print the same JSON. Repetitions of the fast path
and of the naive loop alternate. Through a local `mlflow server` only the fast path is timed in the full run (the
naive loop over HTTP takes several minutes at 1,000 runs; `bench/bench_compare.py --server` times it).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from bench import bench_compare
from bench.common import Figure, log, spread


def _fast(uri: str, name: str) -> tuple[float, str]:
    cli = [sys.executable, "-m", "rain_mlflow", "compare", "--experiment", name, "--format", "json"]
    wall, _, out = bench_compare.timed(cli, uri, 1)
    return wall, out


def _naive(uri: str, name: str) -> tuple[float, str]:
    wall, _, out = bench_compare.timed([sys.executable, "-c", bench_compare.PUBLIC, name], uri, 1)
    return wall, out


def _measure(uri: str, name: str, fast_reps: int, naive_reps: int) -> tuple[list[float], list[float]]:
    _fast(uri, name)  # brings the runs' tags up to date: the timed passes are the recurring case
    fast, naive, outputs = [], [], set()
    for rep in range(max(fast_reps, naive_reps)):
        if rep < fast_reps:
            wall, out = _fast(uri, name)
            fast.append(wall)
            outputs.add(out)
        if rep < naive_reps:
            wall, out = _naive(uri, name)
            naive.append(wall)
            outputs.add(out)
        log(f"compare: repetition {rep + 1}: fast {fast[-1]:.2f} s" + (f", naive {naive[-1]:.2f} s" if naive else ""))
    if len(outputs) != 1:
        raise RuntimeError("compare's fast path and the public API printed different JSON")
    return fast, naive


def run(quick: bool, with_server: bool, command: str, machine: dict) -> list[Figure]:
    runs, epochs = (30, 5) if quick else (1000, 30)
    store = Path(tempfile.gettempdir()) / "rain_mlflow_bench_compare"
    store.mkdir(parents=True, exist_ok=True)
    db_uri = f"sqlite:///{store.resolve()}/mlflow.db"
    name = f"bench-compare-{runs}x{epochs}"
    log(f"compare: store of {runs} runs x {epochs} epochs at {store} (built once, then reused)")
    bench_compare.build_store(db_uri, name, runs, epochs)
    stores = {"sqlite": (db_uri, 1)}  # (uri, naive repetitions): one naive process takes minutes at full size
    process = None
    figures = []
    try:
        if with_server:
            process, url = bench_compare.start_server(db_uri, store)
            stores["server"] = (url, 0)
        for label, (uri, naive_reps) in stores.items():
            log(f"compare on {label}")
            fast, naive = _measure(uri, name, 1 if quick else 3, naive_reps)
            f = spread(fast)
            detail = {"runs": runs, "epochs": epochs, "metrics_read": 8, "fast_s": f}
            if naive:
                n = spread(naive)
                detail.update(naive_s=n, naive_over_fast=n["median"] / f["median"])
            target = "<= 3 s" if label == "sqlite" else ""
            figures.append(Figure(
                section="5 compare", name=f"compare, whole process, {label}", value=f["median"], unit="s",
                target=target, met=(f["median"] <= 3) if label == "sqlite" and not quick else None, detail=detail,
                command=command, machine=machine))
            if naive:
                ratio = detail["naive_over_fast"]
                figures.append(Figure(
                    section="5 compare", name=f"naive public-API loop / compare, {label}", value=ratio, unit="x",
                    target=">= 10x", met=(ratio >= 10) if not quick else None, detail=detail, command=command,
                    machine=machine))
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGTERM)  # the server's own process group
            process.wait(timeout=30)
    return figures
