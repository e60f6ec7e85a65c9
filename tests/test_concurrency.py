"""Three `train` processes at once on one new sqlite store: all finish, each with every metric of every epoch.

Without the schema lock, processes that open a new sqlite file together race in MLflow's migrations ("duplicate
column name", "Online migration expected to match one row"); without the write retries, one of them can meet
"database is locked" mid-run. Both happened before (two of three runs died with a traceback).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_env
from tests.test_train import EPOCH_METRICS, histories, smoke_args

pytestmark = pytest.mark.e2e


def test_three_concurrent_smoke_trainings_on_one_sqlite_store(tmp_path, synthetic_csv):
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    one_year = tmp_path / "one_year.csv"
    one_year.write_text("\n".join(synthetic_csv.read_text().splitlines()[:8767]) + "\n")
    processes = [subprocess.Popen([sys.executable, "-m", "rain_mlflow",
                                   *smoke_args(one_year, "--train-epochs", "2", "--seed", str(seed),
                                               "--experiment", "together", "--run-name", f"r{seed}")],
                                  env=run_env(uri), cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for seed in (1, 2, 3)]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "Traceback" not in out
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["r1", "r2", "r3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key, points in histories(client, run.info.run_id, EPOCH_METRICS).items():
            assert [step for step, _ in points] == [1, 2], (run.info.run_name, key)
        assert "best_epoch" in run.data.metrics and run.data.tags["model_id"]
