"""Benchmark: `compare` at 1,000 runs. Bulk history reads (ours) vs one `get_metric_history` per run per metric.

    /work/venv/bin/python bench/bench_compare.py                      # sqlite, 1,000 runs x 30 epochs
    /work/venv/bin/python bench/bench_compare.py --server             # also over HTTP (a local `mlflow server`)
    /work/venv/bin/python bench/bench_compare.py --runs 200 --epochs 100 --store /tmp/b

The store (sqlite file under --store) is built once and reused when it already holds the experiment: training runs
with every per-epoch contract metric (VRAM included), the summary metrics and the params, one log_batch per run.
Both paths find the runs with the same `search_runs` and diagnose with the same rules; the script checks that they
reach the same diagnosis for every run, so only the way histories are read differs.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from rain_mlflow import compare
from rain_mlflow.diagnostics import RunHistory, Thresholds, diagnosis_tag

PER_EPOCH = ("train_loss", "val_loss", "test_loss", "val_accuracy", "test_accuracy", "val_f1", "test_f1",
             "val_precision", "val_recall", "test_precision", "test_recall", "val_mcc", "test_mcc",
             "val_pred_rain_fraction", "lr", "epoch_time_s", "samples_per_s", "vram_peak_gb", "vram_reserved_gb")


def synthetic_run(rng: random.Random, epochs: int, t0_ms: int) -> tuple[list[Metric], list[Param]]:
    """A plausible run: accuracy climbs with noise. VRAM and val/test gaps are drawn wide on purpose, so that
    most runs carry a flag and every rule path (and the evidence text) is exercised at scale."""
    acc, loss = rng.uniform(0.66, 0.74), rng.uniform(0.036, 0.042)
    gap, budget = rng.uniform(-0.03, 0.07), rng.choice((5.0, 7.0))
    vram, epoch_s = budget * rng.uniform(0.6, 1.3), rng.uniform(300, 4000)
    metrics: list[Metric] = []
    best = (float("inf"), 0)  # (lowest val_loss, its epoch)
    for epoch in range(1, epochs + 1):
        acc = min(0.9, max(0.5, acc + rng.gauss(0.003, 0.012)))
        loss = max(0.02, loss + rng.gauss(-0.0003, 0.0008))
        best = min(best, (loss, epoch))
        ts = t0_ms + int(epoch * epoch_s * 1000)
        values = {"train_loss": loss * 1.1, "val_loss": loss, "test_loss": loss * 1.05, "val_accuracy": acc,
                  "test_accuracy": acc - gap, "val_f1": acc + 0.08, "test_f1": acc + 0.06, "val_precision": acc,
                  "val_recall": 0.9, "test_precision": acc - 0.01, "test_recall": 0.88, "val_mcc": acc - 0.4,
                  "test_mcc": acc - 0.42, "val_pred_rain_fraction": rng.uniform(0.6, 0.8), "lr": 5e-5,
                  "epoch_time_s": epoch_s, "samples_per_s": 40.0, "vram_peak_gb": vram, "vram_reserved_gb": vram + 1}
        metrics += [Metric(key, float(values[key]), ts, epoch) for key in PER_EPOCH]
    end_ms = t0_ms + int((epochs + 1) * epoch_s * 1000)
    summary = {"best_epoch": best[1], "best_val_loss": best[0], "best_val_accuracy": acc, "best_val_f1": acc + 0.08,
               "val_always_rain_f1": 0.84, "test_always_rain_f1": 0.78, "val_majority_accuracy": 0.72,
               "test_majority_accuracy": 0.64}
    metrics += [Metric(key, float(value), end_ms, 0) for key, value in summary.items()]
    params = {"vram_budget_gb": budget, "windows_val": 6025, "train_epochs": epochs, "seq_len": 1440,
              "batch_size": 16, "learning_rate": 5e-5, "e_layers": 8, "d_model": 1024}
    return metrics, [Param(k, str(v)) for k, v in params.items()]


def build_store(client: MlflowClient, name: str, runs: int, epochs: int) -> str:
    """The experiment's id; creates and fills it unless it already holds `runs` training runs."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        found = len(client.search_runs([experiment.experiment_id], compare.TRAIN_FILTER, max_results=runs + 1))
        if found == runs:
            print(f"reusing {name}: {runs} runs x {epochs} epochs", flush=True)
            return experiment.experiment_id
        raise SystemExit(f"{name} holds {found} runs, expected {runs}; remove the store or pick another --store")
    experiment_id = client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
    rng = random.Random(2021)
    start = time.perf_counter()
    t0_ms = int(time.time() * 1000) - 40 * 24 * 3_600_000
    for i in range(runs):
        run = client.create_run(experiment_id, run_name=f"bench-{i:04d}",
                                tags={"rain.step": "train", "preset": rng.choice(("small", "transfer"))})
        metrics, params = synthetic_run(rng, epochs, t0_ms)
        for j in range(0, len(metrics), 900):  # MLflow takes at most 1,000 entities per log_batch
            client.log_batch(run.info.run_id, metrics=metrics[j:j + 900], params=params if j == 0 else [])
        client.set_terminated(run.info.run_id, "FINISHED")
        if (i + 1) % 25 == 0 or i + 1 == runs:
            rate = (i + 1) / (time.perf_counter() - start)
            print(f"\rlogging runs: {i + 1}/{runs} ({rate:.1f} runs/s)", end="", flush=True)
    print(f"\nlogged {runs} runs x {epochs} epochs x {len(PER_EPOCH)} metrics in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    return experiment_id


def bulk(client: MlflowClient, experiment_id: str, now_ms: int) -> dict[str, str]:
    """Ours: `load_histories` (search_runs + bulk history reads) + `diagnose_runs`."""
    histories = compare.load_histories(client, experiment_ids=[experiment_id])
    return {r.history.run_id: diagnosis_tag(r.findings)
            for r in compare.diagnose_runs(histories, Thresholds(), now_ms)}


def naive(client: MlflowClient, experiment_id: str, now_ms: int) -> dict[str, str]:
    """The usual loop: the same search_runs, then one get_metric_history per run per needed metric."""
    runs = compare._training_runs(client, [experiment_id])
    histories = []
    for run in runs:
        metrics = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key) if m.step >= 1}
                   for key in compare.HISTORY_METRICS}
        histories.append(RunHistory(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.params),
                                    dict(run.data.tags), {k: v for k, v in metrics.items() if v}))
    return {r.history.run_id: diagnosis_tag(r.findings)
            for r in compare.diagnose_runs(histories, Thresholds(), now_ms)}


def breakdown(client: MlflowClient, experiment_id: str, now_ms: int) -> str:
    """One more bulk pass, split into its three stages."""
    start = time.perf_counter()
    runs = compare._training_runs(client, [experiment_id])
    searched = time.perf_counter()
    points = compare._fetch_histories(client, runs, compare.HISTORY_METRICS)
    fetched = time.perf_counter()
    compare.diagnose_runs([compare._to_history(run, points.get(run.info.run_id, {})) for run in runs],
                          Thresholds(), now_ms)
    done = time.perf_counter()
    batches = -(-len(runs) // compare.BULK_RUNS)
    return (f"search_runs {searched - start:.2f} s, histories {fetched - searched:.2f} s "
            f"({batches} batches of <= {compare.BULK_RUNS} runs), build + diagnose {done - fetched:.2f} s")


def timed(label: str, fn: Callable[[], dict[str, str]], repeat: int) -> tuple[float, dict[str, str]]:
    times, result = [], {}
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"  {label:<46} {best:8.2f} s" + (f"  (best of {repeat}: {', '.join(f'{t:.2f}' for t in times)})"
                                            if repeat > 1 else ""), flush=True)
    return best, result


def measure(uri: str, experiment_id: str, repeat: int, n_runs: int) -> tuple[float, float]:
    client = MlflowClient(uri)
    client.search_experiments(max_results=1)  # connect / open the database outside the timings
    now_ms = int(time.time() * 1000)
    calls = n_runs * len(compare.HISTORY_METRICS)
    bulk(client, experiment_id, now_ms)  # warm-up pass, untimed: caches and a freshly started server settle
    t_bulk, ours = timed("bulk: load_histories + diagnose", lambda: bulk(client, experiment_id, now_ms), repeat)
    print(f"    of which {breakdown(client, experiment_id, now_ms)}", flush=True)
    t_naive, theirs = timed(f"naive: {calls} get_metric_history + diagnose",
                            lambda: naive(client, experiment_id, now_ms), 1)
    if ours != theirs:
        differing = [run_id for run_id in ours if ours[run_id] != theirs.get(run_id)]
        raise SystemExit(f"bulk and naive disagree on {len(differing)} runs, e.g. {differing[:3]}")
    flagged = sum(tag != "ok" for tag in ours.values())
    print(f"  same diagnosis for all {len(ours)} runs ({flagged} flagged); naive / bulk = "
          f"{t_naive / t_bulk:.1f}x", flush=True)
    return t_bulk, t_naive


def start_server(db_uri: str, artifacts: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(artifacts.parent / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db_uri, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # No GenAI job runner (seven huey consumer processes competing for the CPUs): we time tracking calls.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise SystemExit(f"mlflow server did not start; see {artifacts.parent / 'server.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="training runs in the store (default 1000)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (default 30)")
    parser.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "rain_mlflow_bench_compare",
                        help="directory of the sqlite store, reused across invocations")
    parser.add_argument("--server", action="store_true", help="also measure through a local `mlflow server`")
    parser.add_argument("--repeat", type=int, default=3, help="timings of the bulk path; the best is kept")
    args = parser.parse_args()
    if args.runs < 1 or args.epochs < 1:
        parser.error(f"--runs and --epochs must be >= 1; got {args.runs} and {args.epochs}")

    args.store.mkdir(parents=True, exist_ok=True)
    db_uri = f"sqlite:///{args.store.resolve()}/mlflow.db"
    mlflow.set_tracking_uri(db_uri)
    name = f"bench-compare-{args.runs}x{args.epochs}"
    experiment_id = build_store(MlflowClient(db_uri), name, args.runs, args.epochs)
    print(f"mlflow {mlflow.__version__}, {os.cpu_count()} CPUs, {args.runs} runs x {args.epochs} epochs, "
          f"{len(compare.HISTORY_METRICS)} history metrics read per run", flush=True)

    print(f"sqlite ({db_uri}):", flush=True)
    results = {"sqlite": measure(db_uri, experiment_id, args.repeat, args.runs)}
    if args.server:
        process, url = start_server(db_uri, args.store / "artifacts")
        try:
            print(f"http ({url}, mlflow server --workers 1 on the same sqlite file):", flush=True)
            results["http"] = measure(url, experiment_id, args.repeat, args.runs)
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # the server's own process group, started above
            process.wait(timeout=30)

    print("\n| store | bulk (ours) | naive | naive / bulk |\n|---|---:|---:|---:|")
    for store, (t_bulk, t_naive) in results.items():
        print(f"| {store} | {t_bulk:.2f} s | {t_naive:.2f} s | {t_naive / t_bulk:.1f}x |")
    print(f"(bulk: best of {args.repeat} passes; naive: one pass)")


if __name__ == "__main__":
    main()
