"""N `rain-mlflow train` processes at once on one new sqlite store: do they all finish, how often does a write
wait for another process's lock, and how long does it take compared with one process alone.

    python bench/bench_sqlite_writers.py --processes 3 --epochs 2
    python bench/bench_sqlite_writers.py --processes 4 --epochs 3 --years 2

Each process trains the `smoke` preset on the same synthetic record (different seeds) into a fresh
`sqlite:///<tmp>/shared.db`; the script reports, per process, the exit code, the wall time and
`rain_mlflow.tracking.store.lock_waits` (writes that met "database is locked" and were retried), then checks that
every run is FINISHED with every per-epoch metric at every epoch. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

CHILD = """
import atexit, sys
import rain_mlflow.tracking.store as store
atexit.register(lambda: print(f"lock_waits={store.lock_waits}", file=sys.stderr))
from rain_mlflow.cli import main
main(sys.argv[1:])
"""


def launch(folder: Path, uri: str, csv: Path, seed: int, epochs: int) -> subprocess.Popen:
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen([sys.executable, "-c", CHILD, "train", "--preset", "smoke", "--data", str(csv),
                             "--train-epochs", str(epochs), "--seed", str(seed), "--experiment", "bench",
                             "--run-name", f"p{seed}"], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--years", type=float, default=2.0)
    args = parser.parse_args()

    from rain_mlflow.synth import SynthConfig, write_synthetic

    folder = Path(tempfile.mkdtemp(prefix="rain-bench-sqlite-"))
    csv = folder / "synthetic.csv"
    write_synthetic(str(csv), SynthConfig(years=args.years))
    for label, n in (("alone", 1), ("together", args.processes)):
        uri = f"sqlite:///{folder / label / 'shared.db'}"
        (folder / label).mkdir()
        started = time.perf_counter()
        processes = [launch(folder / label, uri, csv, seed, args.epochs) for seed in range(1, n + 1)]
        results = []
        for p in processes:
            _, err = p.communicate()
            waits = next((line.split("=")[1] for line in err.splitlines() if line.startswith("lock_waits=")), "?")
            results.append((p.returncode, time.perf_counter() - started, waits, "Traceback" in err))
        wall = time.perf_counter() - started
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
        complete = sum(
            r.info.status == "FINISHED" and all(
                [m.step for m in client.get_metric_history(r.info.run_id, key)] == list(range(1, args.epochs + 1))
                for key in ("train_loss", "val_loss", "val_f1", "test_accuracy", "lr"))
            for r in runs)
        print(f"{label:8} {n} process(es), {args.epochs} epochs: wall {wall:6.1f} s; runs complete {complete}/{n}")
        for i, (code, seconds, waits, traceback) in enumerate(results, 1):
            print(f"  process {i}: exit {code}, done after {seconds:6.1f} s, lock waits {waits}"
                  f"{', TRACEBACK' if traceback else ''}")


if __name__ == "__main__":
    main()
