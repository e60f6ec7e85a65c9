"""The benchmark harness (`python -m bench`, `rain-mlflow bench`): its arithmetic, its reference, its output.

Timings are never asserted (they live in bench/results.json); what is checked is that the harness measures what it
says: repetitions summarised correctly, nested tracking calls counted once, the fp32 reference computing the same
logits as the classifier, the FLOP count, the one-table / results.json contract and the error outside a checkout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, assert_user_error

sys.path.insert(0, str(REPO))
from bench.common import spread  # noqa: E402
from bench.gpu import train_flops_per_sample  # noqa: E402
from bench.reference_einsum import reference_classify  # noqa: E402
from bench.trainer import Stopwatch  # noqa: E402


@pytest.mark.unit
def test_spread_of_repetitions_by_hand():
    s = spread([4.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 4.0, 3)
    assert s["spread_pct"] == pytest.approx(100 * (4 - 1) / 2 / 2)


@pytest.mark.unit
def test_stopwatch_counts_a_nested_call_once():
    watch = Stopwatch()

    def inner() -> None:
        time.sleep(0.05)

    wrapped_inner = watch.wrap("mlflow", inner)

    def outer() -> None:
        time.sleep(0.05)
        wrapped_inner()

    wrapped_outer = watch.wrap("mlflow", outer)
    wrapped_outer()
    assert watch.calls == {"mlflow": 1}
    assert watch.seconds["mlflow"] >= 0.1
    assert list(watch.by_function) == [outer.__qualname__]
    wrapped_inner()  # on its own it counts
    assert watch.calls == {"mlflow": 2}
    assert watch.seconds["mlflow"] >= 0.15


@pytest.mark.unit
def test_reference_computes_the_classifier_logits():
    from rain_mlflow.model.classifier import RainClassifier

    torch.manual_seed(0)
    model = RainClassifier(input_token_len=8, d_model=16, n_heads=4, e_layers=2, d_ff=32, dropout=0.1,
                           activation="relu", use_norm=True, n_vars=3).eval()
    x = torch.randn(2, 32, 3)
    with torch.no_grad():
        ours, reference = model(x), reference_classify(model, x)
    assert ours.shape == reference.shape == (2, 2)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.unit
def test_training_flops_by_hand():
    # d 2, 1 layer, d_ff 4, 3 tokens of 5 steps: weights per layer 4*2*2 + 2*2*4 = 32, embedding 5*2 = 10;
    # forward 2*3*(32 + 10) = 252, attention 4*3*3*2 = 72; training = 3 x forward.
    assert train_flops_per_sample(d_model=2, e_layers=1, d_ff=4, n_tokens=3, token_len=5) == 3 * (252 + 72)


@pytest.mark.e2e
def test_quick_run_prints_one_table_and_writes_every_figure(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--sections", "data", "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["section", "figure"] and set(lines[1]) <= {"-", " "}
    assert len(lines) == 2 + 2  # the header, its rule, the two data figures: nothing else on stdout
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["command"] == f"python -m bench --quick --sections data --output {out}"
    assert result["machine"]["torch"] == torch.__version__ and result["machine"]["cores"] >= 1
    figures = result["figures"]
    assert [f["section"] for f in figures] == ["4 data preparation"] * 2
    for figure in figures:
        assert figure["command"] == result["command"] and figure["machine"]["cpu"]
        detail = figure["detail"]
        assert detail["n_vars"] == 6  # five features plus the missingness indicator
        assert detail["raw_float32_mib"] == pytest.approx(detail["steps"] * 6 * 4 / 2**20)
        assert figure["met"] is None  # --quick never judges a target
    assert figures[0]["value"] == pytest.approx(detail["prepare_above_before_mib"] / detail["raw_float32_mib"])


@pytest.mark.unit
def test_bench_command_names_the_missing_checkout(cli, tmp_path, monkeypatch):
    import rain_mlflow.cli_tools as cli_module

    # As installed from a wheel: the package lives in site-packages, and the working directory is no checkout.
    monkeypatch.setattr(cli_module, "__file__", str(tmp_path / "site-packages" / "rain_mlflow" / "cli_tools.py"))
    monkeypatch.chdir(tmp_path)
    result = cli("bench", "--quick")
    assert_user_error(result, "bench must run from a source checkout", str(tmp_path))
    assert result.out == ""


@pytest.mark.unit
def test_bench_command_finds_this_checkout(tmp_path, monkeypatch):
    from rain_mlflow.cli_tools import bench_checkout

    monkeypatch.chdir(tmp_path)
    assert Path(bench_checkout()) == REPO


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
@pytest.mark.parametrize("command", [["-m", "bench", "--gpu"], ["-m", "rain_mlflow", "bench", "--gpu"]])
def test_gpu_section_without_cuda_is_one_error_line(command, tmp_path):
    # `rain-mlflow bench` from outside the checkout finds it and runs `python -m bench` there.
    done = subprocess.run([sys.executable, *command], cwd=REPO if command[1] == "bench" else tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        line for line in done.stderr.splitlines() if line.strip()]
    assert "--gpu needs a CUDA device" in done.stderr and "Traceback" not in done.stderr
