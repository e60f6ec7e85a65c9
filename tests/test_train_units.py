"""Small pieces of the trainer, tested alone: LR schedule, losses, precision choice, metrics, synth, presets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rain_mlflow.errors import ConfigError
from rain_mlflow.synth import synthetic_frame
from rain_mlflow.train import precision as precision_module
from rain_mlflow.train.losses import FocalLoss, balanced_class_weights, build_loss
from rain_mlflow.train.metrics import split_metrics
from rain_mlflow.train.precision import select_device, select_precision
from rain_mlflow.train.schedule import lr_at

pytestmark = pytest.mark.unit


def test_type1_decays_tenfold_per_epoch_as_the_official_code():
    assert [lr_at(1e-4, "type1", e, 10, 0, 100, 0) for e in range(3)] == pytest.approx([1e-4, 1e-5, 1e-6])


def test_cosine_anneals_once_per_epoch_to_the_floor():
    values = [lr_at(1e-3, "cosine", e, 4, 5, 100, 0) for e in range(4)]
    assert values[0] == pytest.approx(1e-3)
    assert values[2] == pytest.approx(1e-8 + (1e-3 - 1e-8) / 2)
    assert values == sorted(values, reverse=True)
    assert lr_at(1e-3, "cosine", 1, 4, 0, 100, 0) == lr_at(1e-3, "cosine", 1, 4, 99, 100, 0)


def test_warmup_is_linear_per_step_then_the_schedule():
    assert lr_at(1e-3, "none", 0, 10, 0, 100, 2) == pytest.approx(1e-3 / 200)
    assert lr_at(1e-3, "none", 1, 10, 99, 100, 2) == pytest.approx(1e-3)
    assert lr_at(1e-3, "none", 5, 10, 0, 100, 2) == pytest.approx(1e-3)


def test_focal_loss_with_gamma_0_is_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(64, 2), torch.randint(0, 2, (64,))
    weights = balanced_class_weights(10, 30)
    expected = torch.nn.functional.cross_entropy(logits, target, weight=weights)
    torch.testing.assert_close(FocalLoss(0.0, weights)(logits, target), expected)


def test_focal_loss_down_weights_easy_examples():
    easy, hard = torch.tensor([[4.0, -4.0]]), torch.tensor([[0.2, -0.2]])
    target = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy
    assert FocalLoss(2.0)(easy, target) / ce(easy, target) < FocalLoss(2.0)(hard, target) / ce(hard, target)


def test_balanced_weights_equalise_class_totals():
    w = balanced_class_weights(25, 75)
    assert float(w[0] * 25) == pytest.approx(float(w[1] * 75))
    assert isinstance(build_loss("ce", 2.0, 25, 75), torch.nn.CrossEntropyLoss)


def test_precision_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_module, "cpu_has_bf16_units", lambda: True)
    assert select_precision("auto", cpu).dtype == torch.bfloat16
    monkeypatch.setattr(precision_module, "cpu_has_bf16_units", lambda: False)
    assert select_precision("auto", cpu).dtype is None and select_precision("off", cpu).name == "fp32"
    assert not select_precision("auto", cpu).needs_scaler
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        select_precision("fp16", cpu)


@pytest.mark.parametrize("capability, auto, tf32", [((7, 0), "fp16", False), ((7, 5), "fp16", False),
                                                     ((8, 0), "bf16", True), ((9, 0), "bf16", True)])
def test_cuda_precision_follows_the_compute_capability(monkeypatch, capability, auto, tf32):
    # No such GPU here: the capability query is the one thing faked; everything after it is the real choice.
    monkeypatch.setattr(precision_module, "cuda_capability", lambda device: capability)
    cuda = torch.device("cuda")
    chosen = select_precision("auto", cuda)
    assert (chosen.name, chosen.needs_scaler, chosen.tf32) == (auto, auto == "fp16", tf32)
    assert select_precision("fp16", cuda).needs_scaler
    assert select_precision("off", cuda).name == "fp32" and not select_precision("off", cuda).tf32
    if auto == "bf16":
        assert select_precision("bf16", cuda).name == "bf16"
    else:  # a T4 or V100: bf16 only by emulation, refused with the reason
        with pytest.raises(ConfigError, match=rf"amp must be auto, fp16 or off on a GPU of compute capability "
                                               rf"{capability[0]}\.{capability[1]} .*; got 'bf16'"):
            select_precision("bf16", cuda)


CPUINFO = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {extra} xsave\nbugs\t\t: spectre_v1\n"


@pytest.mark.parametrize("extra, has_units", [("avx512f avx512bw avx512_vnni", False), ("avx512f avx512_bf16", True),
                                              ("amx_tile amx_bf16 amx_int8", True), ("", False)])
def test_bf16_units_are_read_from_the_cpu_flags(monkeypatch, tmp_path, extra, has_units):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    monkeypatch.setattr(precision_module, "Path", lambda _: cpuinfo)   # the file read, with these flags
    assert precision_module.cpu_has_bf16_units() is has_units


def test_bf16_units_are_absent_when_cpuinfo_cannot_be_read(monkeypatch, tmp_path):
    monkeypatch.setattr(precision_module, "Path", lambda _: tmp_path / "no-such-file")
    assert precision_module.cpu_has_bf16_units() is False


def test_this_processor_flags_decide_bf16_units():
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    flags = {word for line in cpuinfo if line.startswith("flags") for word in line.split()}
    assert precision_module.cpu_has_bf16_units() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a CPU-only machine gives")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        select_device("cuda")


def test_metrics_positive_class_is_rain_and_constant_predictor_has_mcc_0():
    labels = np.array([1, 1, 1, 0, 0, 1, 0, 1])
    always_rain = np.ones_like(labels)
    m = split_metrics("val", labels, always_rain, 0.5)
    assert m["val_recall"] == 1.0 and m["val_precision"] == pytest.approx(5 / 8) and m["val_mcc"] == 0.0
    assert m["val_windows"] == 8


def test_synthetic_record_is_deterministic_and_damaged():
    a, b, c = synthetic_frame(1.0, seed=3), synthetic_frame(1.0, seed=3), synthetic_frame(1.0, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    assert a["date"].duplicated().sum() == 2                                       # duplicated rows
    assert (a["date"].diff().dropna() > pd.Timedelta(hours=1)).sum() >= 2          # gaps in the timestamps
    assert a["precipitation"].isna().any() and a["relative_humidity"].isna().sum() >= 5 * 24
    assert 0.1 < (a["precipitation"] > 0).mean() < 0.5
    three_hourly = synthetic_frame(1.0, freq="3h")
    assert three_hourly["date"].diff().mode().iloc[0] == pd.Timedelta(hours=3)


def test_the_embedded_record_is_11_years_unless_the_tests_shorten_it(monkeypatch):
    from rain_mlflow.synth import EMBEDDED_YEARS_ENV, SynthConfig

    monkeypatch.delenv(EMBEDDED_YEARS_ENV, raising=False)
    assert SynthConfig().years == 11.0
    monkeypatch.setenv(EMBEDDED_YEARS_ENV, "4")
    assert SynthConfig().years == 4.0 and SynthConfig(years=2.0).years == 2.0   # only the default moves
    for bad in ("0", "-1", "nan", "four"):
        monkeypatch.setenv(EMBEDDED_YEARS_ENV, bad)
        with pytest.raises(ConfigError, match=f"RAIN_MLFLOW_SYNTH_YEARS must be a number of years > 0; got '{bad}'"):
            SynthConfig()


def test_synth_refuses_bad_settings():
    with pytest.raises(ConfigError, match="freq"):
        synthetic_frame(1.0, freq="fortnightly")
    with pytest.raises(ConfigError, match="years"):
        synthetic_frame(-1)
    with pytest.raises(ConfigError, match="gaps must be one of default, realistic; got 'some'"):
        synthetic_frame(1.0, gaps="some")


def test_realistic_gaps_reproduce_the_airport_record():
    from rain_mlflow.data.windows import rain_labels

    frame = synthetic_frame(1.0, seed=0, gaps="realistic")
    grid = frame.set_index("date").reindex(pd.date_range(frame["date"].iloc[0], frame["date"].iloc[-1], freq="h"))
    lost = frame["date"].diff().dropna() - pd.Timedelta(hours=1)
    lost = lost[lost > pd.Timedelta(0)]
    assert 12 <= len(lost) <= 16 and lost.max() <= pd.Timedelta(hours=5)            # ~14 gaps of 1-5 hours
    assert not frame["date"].duplicated().any()
    pressure = frame["pressure"].isna()
    assert 0.028 <= pressure.mean() <= 0.035                                          # 3 % of readings
    runs = pressure.ne(pressure.shift()).cumsum()[pressure].value_counts()
    assert runs.max() <= 9 and runs.min() >= 1 and (runs == 1).mean() > 0.5            # short, scattered
    assert 0.80 <= frame["wind_gust"].isna().mean() <= 0.86                          # 83 % empty
    for column in ("temperature", "relative_humidity", "wind_speed", "precipitation"):
        assert not frame[column].isna().any()                                        # only the lost hours
    labels = rain_labels(grid["precipitation"].to_numpy(dtype=float), 24, 0.1)
    assert 0.25 <= np.nanmean(labels) <= 0.35                                       # rain within 24 h: ~30 %


def test_presets_command_lists_every_preset(cli):
    from rain_mlflow.config import presets

    result = cli("presets")
    assert result.code == 0
    for name in presets.names():
        assert name in result.out
    assert math.isfinite(presets.build("transfer").train.vram_budget_gb)
