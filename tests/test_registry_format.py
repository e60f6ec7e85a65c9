"""The registered model loads without unpickling code, and `test` knows its training data by content, not path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from rain_mlflow.config import MODEL_NAME
from rain_mlflow.model.factory import rain_model_from_payload
from rain_mlflow.model import checkpoint
from tests.conftest import run_env

pytestmark = pytest.mark.e2e

EXPERIMENT = "format"


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, synthetic_csv):
    """One smoke run trained on `data/clean.csv` (a relative path), promoted to champion."""
    import os

    from rain_mlflow.cli import main

    tmp = tmp_path_factory.mktemp("format")
    (tmp / "data").mkdir()
    shutil.copy(synthetic_csv, tmp / "data" / "clean.csv")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old_uri, old_cwd = os.environ.get("MLFLOW_TRACKING_URI"), os.getcwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    os.chdir(tmp)
    try:
        for argv in (["train", "--preset", "smoke", "--data", "data/clean.csv", "--train-epochs", "2",
                      "--experiment", EXPERIMENT],
                     ["promote", "--experiment", EXPERIMENT, "--allow-flagged"]):
            with pytest.raises(SystemExit) as done:
                main(argv)
            assert done.value.code == 0, argv
        client = MlflowClient()
        (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                    "tags.`rain.step` = 'train'")
        yield uri, tmp, run
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


NO_PICKLE = """
import json, pickle, sys
import cloudpickle, numpy as np

def refuse(*args, **kwargs):
    raise AssertionError("unpickling attempted")

class Refused:  # torch.load subclasses pickle.Unpickler (with weights_only=False)
    __init__ = load = refuse

for module in (pickle, cloudpickle):
    module.load = module.loads = refuse
pickle.Unpickler = Refused

import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
x = np.load(sys.argv[2])
print(json.dumps(model.predict(x).tolist()))
"""


def test_the_registered_model_loads_and_predicts_with_unpickling_disabled(promoted, tmp_path):
    uri, tmp, run = promoted
    payload = checkpoint.load(MlflowClient().download_artifacts(run.info.run_id, "checkpoints/best.pt",
                                                                str(tmp_path)))
    reference, _ = rain_model_from_payload(payload)
    x = np.random.default_rng(0).normal(size=(5, reference.window, len(reference.features))).astype(np.float32)
    x = x * payload["scaler_scale"].numpy().astype(np.float32) + payload["scaler_mean"].numpy().astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**run_env(uri), "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    result = subprocess.run([sys.executable, "-c", NO_PICKLE, f"models:/{MODEL_NAME}@champion",
                             str(tmp_path / "x.npy")], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    expected = reference.rain_probability(torch.from_numpy(x)).numpy()
    assert served.shape == (5,) and ((served >= 0) & (served <= 1)).all()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_the_no_pickle_guard_does_stop_a_pickled_model(promoted, tmp_path):
    """Control: the same loader, given a model that IS a pickle (the former format), fails on the patch alone
    (MLflow's own MLFLOW_ALLOW_PICKLE_DESERIALIZATION guard is left at its default, allow)."""
    uri, _, _ = promoted
    with mlflow.start_run(experiment_id=MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id):
        info = mlflow.pytorch.log_model(torch.nn.Linear(3, 1), name="pickled", serialization_format="pickle",
                                        pip_requirements=["torch"])
    np.save(tmp_path / "x.npy", np.zeros((2, 3), dtype=np.float32))
    result = subprocess.run([sys.executable, "-c", NO_PICKLE, info.model_uri, str(tmp_path / "x.npy")],
                            env=run_env(uri), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "unpickling attempted" in result.stderr, result.stderr[-2000:]


def test_the_registered_model_documents_its_input_and_output(promoted):
    _, _, run = promoted
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}@champion")
    (inputs,) = info.signature.inputs.inputs
    (outputs,) = info.signature.outputs.inputs
    # the data columns (NaN where missing); the indicator variables are the model's business (n_vars counts them)
    window, columns = int(run.data.params["effective_seq_len"]), run.data.params["feature_columns"].split(",")
    assert int(run.data.params["n_vars"]) > len(columns)  # the record has gaps: --missing mask added indicators
    assert inputs.type == np.dtype("float32") and inputs.shape == (-1, window, len(columns))
    assert outputs.type == np.dtype("float32") and outputs.shape == (-1,)
    assert "python_function" in info.flavors and "pytorch" not in info.flavors
    assert "model_code_path" in info.flavors["python_function"]


def scored(cli, model_uri: str, data: str) -> tuple[str, int]:
    result = cli("test", "--model-uri", model_uri, "--data", data, "--experiment", EXPERIMENT)
    assert result.code == 0, result.err[-3000:]
    client = MlflowClient()
    latest = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                "tags.`rain.step` = 'test'", order_by=["attributes.start_time DESC"])[0]
    return latest.data.params["scope"], int(latest.data.metrics["n_windows"])


def test_the_training_file_spelled_differently_scores_only_its_test_split(promoted, cli, monkeypatch, tmp_path):
    uri, tmp, run = promoted
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    windows_test = int(run.data.params["windows_test"])
    champion = f"models:/{MODEL_NAME}@champion"
    assert scored(cli, champion, "./data/clean.csv") == ("test split", windows_test)
    shutil.copy(tmp / "data" / "clean.csv", tmp_path / "same_bytes_elsewhere.csv")
    assert scored(cli, run.info.run_id, str(tmp_path / "same_bytes_elsewhere.csv")) == ("test split", windows_test)

    changed = pd.read_csv(tmp / "data" / "clean.csv")
    changed.loc[len(changed) - 1, "temperature"] += 0.1      # one reading in the last row differs
    changed.to_csv(tmp_path / "other.csv", index=False)
    scope, n = scored(cli, champion, str(tmp_path / "other.csv"))
    assert scope == "all windows" and n > 3 * windows_test


FORMER_ENTRY_FILE = """from mlflow.models import set_model

from rain_mlflow.model.serving import RainPyfunc

set_model(RainPyfunc())
"""


def test_a_model_registered_with_the_former_module_path_still_loads(promoted, cli, monkeypatch, tmp_path):
    """Models logged before the pyfunc moved to `tracking/serving.py` name `rain_mlflow.model.serving` in their
    code file; `test` (a process that has imported this package already) still loads and scores them."""
    from rain_mlflow.registry.loading import FORMER_SERVING_MODULE
    from rain_mlflow.tracking import serving

    uri, tmp, run = promoted
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    best = MlflowClient().download_artifacts(run.info.run_id, "checkpoints/best.pt", str(tmp_path))
    entry = tmp_path / "served_model.py"
    entry.write_text(FORMER_ENTRY_FILE)
    window, n_columns = int(run.data.params["effective_seq_len"]), len(run.data.params["feature_columns"].split(","))
    monkeypatch.setitem(sys.modules, FORMER_SERVING_MODULE, serving)  # logging runs the file once, as back then
    with mlflow.start_run(experiment_id=run.info.experiment_id, run_name="former-layout"):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(entry), artifacts={"checkpoint": best},
                                       code_paths=[str(serving.ENTRY_FILE.parents[1])],
                                       signature=serving.signature(window, n_columns), pip_requirements=["torch"])
    mlflow.register_model(info.model_uri, "former-layout")
    stored = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "stored")))
    assert [p.read_text() for p in stored.glob("*.py")] == [FORMER_ENTRY_FILE]  # what a later load runs
    monkeypatch.delitem(sys.modules, FORMER_SERVING_MODULE)  # a fresh `test` process: only the package's modules
    assert scored(cli, "models:/former-layout/1", "./data/clean.csv") == ("test split",
                                                                         int(run.data.params["windows_test"]))
