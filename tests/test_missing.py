"""Missing inputs: the causal fill against a naive loop, no look-ahead, mask vs exclude, and the served model
applying the same treatment to raw windows itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rain_mlflow.config import presets
from rain_mlflow.data.clean import clean
from rain_mlflow.data.dataset import prepare, resolve
from rain_mlflow.data.missing import SHARE_INDICATOR, carry_forward, default_max_fill
from rain_mlflow.errors import ConfigError
from rain_mlflow.model.factory import RainModel, build_classifier
from rain_mlflow.synth import synthetic_frame


def naive_carry_forward(x: np.ndarray, max_fill: int, carried: list[bool]) -> np.ndarray:
    out = x.copy()
    for c in range(x.shape[1]):
        last, age = None, 0
        for t in range(x.shape[0]):
            if not np.isnan(x[t, c]):
                last, age = x[t, c], 0
            else:
                age += 1
                if carried[c] and last is not None and age <= max_fill:
                    out[t, c] = last
    return out


def holey(rng: np.random.Generator, t: int = 300, c: int = 3) -> np.ndarray:
    x = rng.normal(size=(t, c))
    x[rng.random((t, c)) < 0.25] = np.nan
    for start in rng.integers(0, t - 12, 6):  # a few longer runs
        x[start:start + rng.integers(2, 12), rng.integers(0, c)] = np.nan
    return x


@pytest.mark.unit
@pytest.mark.parametrize("max_fill", [0, 1, 3, 6])
def test_carry_forward_equals_a_naive_loop_in_numpy_and_torch(max_fill):
    x = holey(np.random.default_rng(max_fill))
    carried = [True, False, True]
    expected = naive_carry_forward(x, max_fill, carried)
    np.testing.assert_array_equal(carry_forward(x, max_fill, carried), expected)
    batch = torch.from_numpy(np.stack([x, x[::-1].copy()]))
    got = carry_forward(batch, max_fill, carried).numpy()
    np.testing.assert_array_equal(got[0], expected)
    np.testing.assert_array_equal(got[1], naive_carry_forward(x[::-1].copy(), max_fill, carried))


@pytest.mark.unit
def test_carry_forward_never_looks_ahead():
    x = holey(np.random.default_rng(1))
    full = carry_forward(x, 4, [True] * 3)
    for t in range(0, len(x), 7):
        np.testing.assert_array_equal(carry_forward(x[: t + 1], 4, [True] * 3), full[: t + 1])


@pytest.mark.unit
def test_default_max_fill_is_six_hours_of_steps():
    assert default_max_fill(pd.Timedelta("1h")) == 6
    assert default_max_fill(pd.Timedelta("3h")) == 2
    assert default_max_fill(pd.Timedelta("30min")) == 12
    assert default_max_fill(pd.Timedelta("1D")) == 0


@pytest.fixture(scope="module")
def realistic():
    return synthetic_frame(years=1.0, seed=5, gaps="realistic")


def prepared(frame, **overrides):
    # one year of the dry realistic climate leaves the validation split (Aug-Oct) without rain: a degenerate
    # task, but the windows and inputs under test here do not depend on the labels' balance
    cfg = presets.build("smoke", {"allow_degenerate": "true", **{k: str(v) for k, v in overrides.items()}})
    cleaned = clean(frame, cfg.data, "synthetic")
    cfg = resolve(cfg, cleaned)
    return prepare(cleaned, cfg), cfg, cleaned


def perturbed_after(frame: pd.DataFrame, when: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Every reading after `when` changed: new values, new holes, old holes filled (dates untouched)."""
    rng = np.random.default_rng(seed)
    other = frame.copy()
    later = other["date"] > when
    for column in other.columns.drop("date"):
        values = other.loc[later, column].to_numpy(dtype=float)
        values = np.where(np.isnan(values), 1.0, values * rng.uniform(0.5, 1.5, len(values)) + 3.0)
        values[rng.random(len(values)) < (0.005 if column == "precipitation" else 0.2)] = np.nan
        other.loc[later, column] = values
    return other


@pytest.mark.unit
@pytest.mark.parametrize("missing", ["mask", "exclude"])
def test_no_value_after_t_changes_the_input_of_the_window_ending_at_t(realistic, missing):
    data, _, _ = prepared(realistic, missing=missing, max_fill=3)
    for split in ("val", "test"):
        ends = data.splits[split].ends
        for end in ends[[0, len(ends) // 2, -1]]:
            other, _, _ = prepared(perturbed_after(realistic, data.dates[end], seed=int(end)), missing=missing,
                                   max_fill=3)
            np.testing.assert_array_equal(other.gather(np.array([end])), data.gather(np.array([end])))
            assert other.features == data.features
            # which windows are usable changes only through labels, i.e. never for a window whose label
            # horizon ended by t
            settled = lambda e, end=end: e[e + data.horizon <= end]  # noqa: E731
            np.testing.assert_array_equal(settled(other.splits[split].ends), settled(ends))


@pytest.mark.unit
def test_the_cleaned_csv_keeps_observed_values_and_never_looks_ahead(realistic):
    cfg = presets.build("smoke").data
    base = clean(realistic, cfg, "synthetic").frame
    assert base["pressure"].isna().sum() == realistic.set_index("date")["pressure"].isna().sum() + (
        len(base) - len(realistic))  # every missing reading and every lost hour is still missing: nothing filled
    observed = realistic.set_index("date")
    both = base.set_index("date").loc[observed.index, observed.columns.drop("wind_gust")]
    pd.testing.assert_frame_equal(both, observed[both.columns], check_dtype=False)
    n = len(base)
    for when in base["date"].iloc[[int(n * 0.65), int(n * 0.9)]]:
        other = clean(perturbed_after(realistic, when, seed=1), cfg, "synthetic").frame
        upto = base["date"] <= when
        pd.testing.assert_frame_equal(other[upto], base[upto])


@pytest.mark.unit
def test_mask_keeps_windows_exclude_drops_them_and_indicators_flag_what_was_masked(realistic):
    mask, _, cleaned = prepared(realistic, missing="mask")
    exclude, _, _ = prepared(realistic, missing="exclude")
    per_feature, _, _ = prepared(realistic, missing="mask", missing_indicators="per_feature")
    for split in ("train", "val", "test"):
        assert mask.splits[split].size > exclude.splits[split].size
    assert mask.features[-1] == SHARE_INDICATOR and exclude.features == mask.columns
    assert per_feature.features[len(per_feature.columns):] == ("missing:precipitation", "missing:pressure")
    raw = cleaned.frame[list(mask.columns)].to_numpy(dtype=float)
    still = np.isnan(naive_carry_forward(raw, 6, [c != "precipitation" for c in mask.columns]))
    np.testing.assert_allclose(mask.series[:, -1], still.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(per_feature.series[:, -1], still[:, mask.columns.index("pressure")])
    assert not np.isnan(mask.series).any() and not np.isnan(exclude.series).any()
    assert (mask.series[:, :-1][still] == 0).all()        # the training mean, after scaling
    for split in exclude.splits.values():                  # exclude: no kept window touches a masked value
        windows = exclude.gather(split.ends[:: max(1, split.size // 40)])
        starts = split.ends[:: max(1, split.size // 40)] - exclude.window + 1
        assert not any(still[s:s + exclude.window].any() for s in starts)
        assert windows.shape[2] == len(exclude.columns)


@pytest.mark.unit
def test_served_model_fills_raw_windows_itself_like_training():
    frame = synthetic_frame(years=1.0, seed=2, gaps="realistic")
    data, cfg, _ = prepared(frame)
    torch.manual_seed(0)
    classifier = build_classifier(cfg, data.n_vars).eval()
    model = RainModel(classifier, data.scaler_mean, data.scaler_scale, list(data.features), data.window,
                      cfg.to_dict()).eval()
    assert model.features == list(data.columns) and model.variables == list(data.features)
    ends = data.splits["test"].ends
    raw = data.raw
    # windows whose first max_fill steps are observed: the per-window fill equals training's whole-series fill
    clean_start = [e for e in ends if not np.isnan(raw[e - data.window + 1: e - data.window + 8]).any()][:64]
    assert len(clean_start) == 64
    ends = np.array(clean_start)
    windows = raw[ends[:, None] + np.arange(1 - data.window, 1)]
    assert np.isnan(windows).any()                       # raw windows with holes go in
    with torch.no_grad():
        served = model(torch.from_numpy(windows))
        trained = classifier(torch.from_numpy(data.gather(ends)))
    torch.testing.assert_close(served, trained, rtol=1e-4, atol=1e-5)


@pytest.mark.e2e
def test_features_may_not_include_the_label_column(tmp_path, cli, store):
    with pytest.raises(ConfigError, match="features must not include the label column 'rain'"):
        presets.build("smoke", {"label_col": "rain", "features": "rain,temperature"})
    presets.build("smoke", {"features": "precipitation,temperature"})  # past precipitation is a fine input
    path = tmp_path / "labelled.csv"
    pd.DataFrame({"date": pd.date_range("2020-01-01", periods=10, freq="h"), "rain": [0, 1] * 5,
                  "temperature": range(10)}).to_csv(path, index=False)
    result = cli("clean", "--data", path, "--label-col", "rain", "--features", "rain,temperature")
    assert result.code == 2 and "features must not include the label column 'rain'" in result.err
