"""Fast units of `data/dataset.py` and `data/missing.py` on hand-made records of a few dozen steps: labels, splits
and purge, scaler, window ends, the causal fill in numpy and torch, model inputs with each indicator kind, the
missing-data policy, degenerate checks, evaluation windows and the key fragments of every error. Expected values
are written by hand or computed by a naive loop here (each test well under a second: mutation testing runs these).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from rain_mlflow.config import presets
from rain_mlflow.data.clean import CleanResult
from rain_mlflow.data.dataset import (
    EvalWindows,
    PreparedData,
    Split,
    check_degenerate,
    data_array,
    effective_window,
    evaluation_windows,
    fit_scaler,
    persistence_forecast,
    precipitation,
    prepare,
    resolve,
    window_accounting,
    window_labels,
)
from rain_mlflow.data.missing import (
    SHARE_INDICATOR,
    MissingPolicy,
    carry_forward,
    default_max_fill,
    model_inputs,
    still_missing,
)
from rain_mlflow.errors import ConfigError, DataError

pytestmark = pytest.mark.unit

HOUR = pd.Timedelta("1h")
NAN = np.nan


# ---- naive references -------------------------------------------------------------------------------------------

def naive_fill(x: np.ndarray, max_fill: int, carried: list[bool]) -> np.ndarray:
    """[T, C]: each gap takes the last reading of its column when that reading is at most max_fill steps old."""
    out = np.array(x, dtype=float)
    for c in range(x.shape[1]):
        last = None
        for t in range(x.shape[0]):
            if not np.isnan(x[t, c]):
                last = t
            elif carried[c] and last is not None and t - last <= max_fill:
                out[t, c] = x[last, c]
    return out


def naive_labels(precip: np.ndarray, horizon: int, threshold: float) -> np.ndarray:
    out = np.full(len(precip), np.nan)
    for t in range(len(precip) - horizon):
        future = precip[t + 1: t + horizon + 1]
        if not np.isnan(future).any():
            out[t] = float(math.fsum(future) > threshold)
    return out


# ---- a hand-made record -------------------------------------------------------------------------------------------

N = 40
RAIN_AT = (5, 12, 25, 26, 35)


def record(precip_gap: int | None = 20, a_gap: tuple[int, int] = (8, 11), b_gap: int = 30) -> pd.DataFrame:
    """40 hourly steps: precipitation (1 mm at RAIN_AT, maybe missing at one step), `a` = t / 2 with a 3-step
    gap, `b` = 10 + (t mod 5) with a one-step gap."""
    t = np.arange(N, dtype=float)
    precip = np.zeros(N)
    precip[list(RAIN_AT)] = 1.0
    if precip_gap is not None:
        precip[precip_gap] = NAN
    a = t / 2
    a[a_gap[0]:a_gap[1]] = NAN
    b = 10 + t % 5
    b[b_gap] = NAN
    return pd.DataFrame({"date": pd.date_range("2022-01-01", periods=N, freq="h"), "precipitation": precip,
                         "a": a, "b": b})


def cleaned(frame: pd.DataFrame | None = None, max_fill: int = 1, features=("precipitation", "a", "b"),
            precip_col: str | None = "precipitation") -> CleanResult:
    frame = record() if frame is None else frame
    return CleanResult(frame=frame, features=tuple(features), step=HOUR, report={"precip_col": precip_col},
                       max_fill=max_fill)


def config(**overrides):
    settings = {"seq_len": "8", "input_token_len": "4", "horizon": "2", "max_fill": "1", "window_stride": "1",
                "min_windows": "0", "min_class_share": "0"}
    settings.update({k: str(v) for k, v in overrides.items()})
    return presets.build("smoke", settings)


# ---- carry_forward, still_missing ---------------------------------------------------------------------------------

X = np.array([[1.0, NAN, 5.0],
              [NAN, 2.0, NAN],
              [NAN, NAN, NAN],
              [NAN, NAN, 6.0],
              [3.0, NAN, NAN],
              [NAN, 4.0, NAN]])


def test_carry_forward_by_hand():
    got = carry_forward(X, 2, [True, True, False])
    expected = np.array([[1.0, NAN, 5.0],
                         [1.0, 2.0, NAN],       # column 2 is never carried
                         [1.0, 2.0, NAN],
                         [NAN, 2.0, 6.0],       # three steps after the reading: older than max_fill 2
                         [3.0, NAN, NAN],
                         [3.0, 4.0, NAN]])
    np.testing.assert_array_equal(got, expected)
    assert got is not X and np.isnan(X[1, 0])  # a copy: the input is left alone
    np.testing.assert_array_equal(carry_forward(X, 1, [True, True, True]), naive_fill(X, 1, [True] * 3))
    np.testing.assert_array_equal(carry_forward(X, 0, [True, True, True]), X)     # max_fill 0: nothing filled
    np.testing.assert_array_equal(carry_forward(X, 5, True), naive_fill(X, 5, [True] * 3))  # one flag for all


def test_carry_forward_never_fills_before_the_first_reading_nor_changes_readings():
    x = np.array([[NAN], [NAN], [7.0], [NAN], [8.0], [NAN]])
    np.testing.assert_array_equal(carry_forward(x, 10, [True])[:, 0], [NAN, NAN, 7.0, 7.0, 8.0, 8.0])
    np.testing.assert_array_equal(still_missing(x, 10, [True])[:, 0], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(carry_forward(np.array([[NAN, 1.0]]), 3, [True, True]), [[NAN, 1.0]])  # one step


def test_carry_forward_in_place_fills_the_array_itself_and_keeps_its_dtype():
    x = X.astype(np.float32)
    out = carry_forward(x, 2, [True, True, True], in_place=True)
    assert out is x and out.dtype == np.float32
    np.testing.assert_array_equal(x, naive_fill(X, 2, [True] * 3).astype(np.float32))
    view = X.copy()[:, 1:]                         # a strided view: columns filled through it
    carry_forward(view, 1, [True, True], in_place=True)
    np.testing.assert_array_equal(view, naive_fill(X[:, 1:], 1, [True, True]))


@pytest.mark.parametrize("max_fill", [0, 1, 2, 4])
def test_carry_forward_batched_numpy_and_torch_equal_the_naive_loop(max_fill):
    rng = np.random.default_rng(max_fill)
    x = rng.normal(size=(3, 30, 4))
    x[rng.random(x.shape) < 0.35] = NAN
    x[:, :2, 1] = NAN                              # no reading yet at the start
    carried = [True, False, True, True]
    expected = np.stack([naive_fill(w, max_fill, carried) for w in x])
    np.testing.assert_array_equal(carry_forward(x, max_fill, carried), expected)
    np.testing.assert_array_equal(carry_forward(torch.from_numpy(x), max_fill, carried).numpy(), expected)
    np.testing.assert_array_equal(still_missing(x, max_fill, carried), np.isnan(expected))


def test_still_missing_by_hand_and_without_touching_the_input():
    before = X.copy()
    got = still_missing(X, 2, [True, True, False])
    np.testing.assert_array_equal(got, [[0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 1, 1], [0, 0, 1]])
    assert got.dtype == bool
    np.testing.assert_array_equal(X, before)
    np.testing.assert_array_equal(still_missing(X, 0, [True] * 3), np.isnan(X))
    np.testing.assert_array_equal(still_missing(X, 9, [True] * 3), np.isnan(naive_fill(X, 9, [True] * 3)))


def test_default_max_fill():
    assert default_max_fill(pd.Timedelta("1h")) == 6
    assert default_max_fill(pd.Timedelta("7h")) == 0
    assert default_max_fill(pd.Timedelta("4h")) == 1      # 1.5 steps: rounded down
    assert default_max_fill(pd.Timedelta("10min")) == 36


# ---- MissingPolicy ------------------------------------------------------------------------------------------------

COLUMNS = ("precipitation", "a", "b")


def test_policy_build_for_each_missing_mode_and_indicator_kind():
    gaps = np.array([[False, True, False], [False, False, False]])        # only `a` has gaps in training
    mask_one = MissingPolicy.build(COLUMNS, config().data, 3, "precipitation", gaps)
    assert mask_one == MissingPolicy(COLUMNS, (False, True, True), 3, "mask", (SHARE_INDICATOR,))
    assert mask_one.variables == COLUMNS + ("missing:share",)
    per = MissingPolicy.build(COLUMNS, config(missing_indicators="per_feature").data, 2, "precipitation",
                              np.array([[True, False, True]]))
    assert per.indicators == ("missing:precipitation", "missing:b") and per.mode == "mask"
    assert per.variables == COLUMNS + ("missing:precipitation", "missing:b")
    no_gaps = np.zeros((4, 3), dtype=bool)
    assert MissingPolicy.build(COLUMNS, config().data, 1, "precipitation", no_gaps).indicators == ()
    assert MissingPolicy.build(COLUMNS, config(missing_indicators="per_feature").data, 1, "precipitation",
                               no_gaps).indicators == ()
    exclude = MissingPolicy.build(COLUMNS, config(missing="exclude").data, 1, None, gaps)
    assert exclude == MissingPolicy(COLUMNS, (True, True, True), 1, "exclude", ())
    assert exclude.variables == COLUMNS
    assert isinstance(MissingPolicy.build(list(COLUMNS), config().data, np.int64(2), "a", gaps).columns, tuple)
    assert type(MissingPolicy.build(COLUMNS, config().data, np.int64(2), "a", gaps).max_fill) is int


def test_policy_from_variables_rebuilds_the_trained_one():
    policy = MissingPolicy.from_variables(["precipitation", "a", "missing:share"],
                                          {"precip_col": "precipitation", "max_fill": 4, "missing": "mask"})
    assert policy == MissingPolicy(("precipitation", "a"), (False, True), 4, "mask", ("missing:share",))
    old = MissingPolicy.from_variables(["a", "b"], {})                     # a config from before missing data
    assert old == MissingPolicy(("a", "b"), (True, True), 0, "exclude", ())
    assert MissingPolicy.from_variables(["a"], {"max_fill": None}).max_fill == 0
    assert type(MissingPolicy.from_variables(["a"], {"max_fill": 3.0}).max_fill) is int


# ---- model_inputs -------------------------------------------------------------------------------------------------

RAW = np.array([[0.0, 1.0, 4.0],
                [NAN, NAN, 6.0],
                [2.0, NAN, NAN],
                [NAN, NAN, NAN]])
MEAN = np.array([1.0, 2.0, 5.0])
SCALE = np.array([2.0, 0.5, 1.0])


def policy(indicators=(), max_fill=1, mode="mask"):
    return MissingPolicy(COLUMNS, (False, True, True), max_fill, mode, tuple(indicators))


# RAW filled with max_fill 1 (precipitation never carried), then scaled, 0 where still missing
SCALED = np.array([[-0.5, -2.0, -1.0],
                   [0.0, -2.0, 1.0],
                   [0.5, 0.0, 1.0],
                   [0.0, 0.0, 0.0]])
STILL = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=bool)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_inputs_numpy_by_hand_for_each_indicator_kind(dtype):
    raw = RAW.astype(dtype)
    series, missing = model_inputs(raw, MEAN, SCALE, policy())
    np.testing.assert_array_equal(series, SCALED)
    np.testing.assert_array_equal(missing, STILL)
    assert series.dtype == dtype and missing.dtype == bool
    np.testing.assert_array_equal(raw, RAW.astype(dtype))                 # the raw data are left alone
    share, _ = model_inputs(raw, MEAN, SCALE, policy([SHARE_INDICATOR]))
    np.testing.assert_array_equal(share, np.column_stack([SCALED, [0, 1 / 3, 1 / 3, 1]]).astype(dtype))
    per, _ = model_inputs(raw, MEAN, SCALE, policy(["missing:precipitation", "missing:b"]))
    np.testing.assert_array_equal(per, np.column_stack([SCALED, [0, 1, 0, 1], [0, 0, 0, 1]]))
    no_fill, missing0 = model_inputs(raw, MEAN, SCALE, policy(max_fill=0))
    np.testing.assert_array_equal(missing0, np.isnan(RAW))
    np.testing.assert_array_equal(no_fill[1], [0.0, 0.0, 1.0])


def test_model_inputs_scale_in_float64_before_storing_float32():
    one = MissingPolicy(("a",), (True,), 0, "mask")
    got, _ = model_inputs(np.ones((1, 1), dtype=np.float32), np.array([0.1]), np.array([1.3]), one)
    assert got.dtype == np.float32
    assert got[0, 0] == np.float32(0.9 / 1.3) == np.float32(0.6923077)   # via a float32 0.9: 0.69230765
    got, _ = model_inputs(np.ones((1, 1), dtype=np.float32), np.array([1 + 1e-9]), np.array([1e-9]), one)
    assert abs(got[0, 0] + 1) < 1e-3                         # a float32 mean would round to 1: 0


def test_model_inputs_torch_equals_numpy_on_batched_windows():
    batch = np.stack([RAW, RAW[::-1].copy()])
    for indicators in ((), [SHARE_INDICATOR], ["missing:a", "missing:b"]):
        p = policy(indicators)
        expected = np.stack([model_inputs(w, MEAN, SCALE, p)[0] for w in batch])
        got, missing = model_inputs(torch.from_numpy(batch), torch.from_numpy(MEAN), torch.from_numpy(SCALE), p)
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-7)   # torch's share is float32
        np.testing.assert_array_equal(missing[0].numpy(), STILL)
        assert got.shape == (2, 4, 3 + len(indicators))
    numpy_batched, _ = model_inputs(batch, MEAN, SCALE, policy([SHARE_INDICATOR]))
    np.testing.assert_array_equal(numpy_batched[0], model_inputs(RAW, MEAN, SCALE, policy([SHARE_INDICATOR]))[0])


# ---- Split, PreparedData ------------------------------------------------------------------------------------------

def split(labels, name="val") -> Split:
    labels = np.asarray(labels, dtype=np.int64)
    return Split(name, np.arange(len(labels), dtype=np.int64) + 10, labels, 2, 0, 50, len(labels) + 2)


def test_split_properties():
    s = split([1, 0, 0, 1, 0])
    assert (s.size, s.rain, s.no_rain, s.majority_share) == (5, 2, 3, 0.6)
    assert type(s.size) is int and type(s.rain) is int
    assert split([1, 1, 1, 0]).majority_share == 0.75
    assert math.isnan(split([]).majority_share)
    assert split([]).size == 0 and split([]).no_rain == 0
    assert Split("x", np.arange(2), np.array([0, 1]), 0, 0, 2).candidates == 0


def prepared_data(policy_=None, features=("precipitation", "a"), accounting=None) -> PreparedData:
    series = np.arange(20, dtype=np.float32).reshape(10, 2)
    return PreparedData(series=series, raw=series, dates=pd.date_range("2022", periods=10, freq="h"),
                        features=features, window=3, horizon=1,
                        splits={"train": split([1, 0, 0], "train"), "val": split([1, 1, 1, 0])},
                        scaler_mean=np.zeros(2), scaler_scale=np.ones(2), policy=policy_,
                        accounting=accounting or {})


def test_prepared_data_properties():
    bare = prepared_data()
    assert bare.n_vars == 2 and type(bare.n_vars) is int
    assert bare.columns == ("precipitation", "a") and bare.rain_index is None
    p = MissingPolicy(("a", "precipitation"), (True, False), 1, "mask", (SHARE_INDICATOR,))
    with_policy = prepared_data(p, features=p.variables)
    assert with_policy.columns == ("a", "precipitation") and with_policy.rain_index == 1
    assert prepared_data(MissingPolicy(("a", "b"), (True, True), 1, "exclude")).rain_index is None
    np.testing.assert_array_equal(bare.gather(np.array([2, 5])), [bare.series[0:3], bare.series[3:6]])


def test_class_counts_by_hand():
    counts = prepared_data().class_counts()
    assert counts == {"windows_train": 3, "rain_train": 1, "no_rain_train": 2, "dropped_windows_train": 2,
                      "majority_share_train": 0.6667,
                      "windows_val": 4, "rain_val": 3, "no_rain_val": 1, "dropped_windows_val": 2,
                      "majority_share_val": 0.75}
    report = {"splits": {"val": {"candidates": 9, "label_unknown": 1, "input_missing": 2}},
              "features": {"a b": {"windows_touching_gaps": 3}}}
    counts = prepared_data(accounting=report).class_counts()
    assert counts["candidate_windows_val"] == 9 and counts["input_missing_windows_val"] == 2
    assert counts["gap_windows.a b"] == 3 and counts["windows_val"] == 4


# ---- small helpers --------------------------------------------------------------------------------------------------

def test_effective_window_trims_to_whole_tokens_with_a_note(caplog):
    notes: list[str] = []
    with caplog.at_level("WARNING", logger="rain_mlflow.data.dataset"):
        assert effective_window(config(seq_len=10), notes) == 8
    assert notes == ["seq_len 10 is not a multiple of input_token_len 4: using the most recent 8 steps of each "
                     "window (the oldest 2 are dropped)"]
    assert [r.getMessage() for r in caplog.records] == notes
    assert effective_window(config(seq_len=12), notes) == 12 and len(notes) == 1


def test_resolve_turns_durations_into_steps():
    cfg = resolve(presets.build("smoke", {"seq_len": "1d", "horizon": "6h", "input_token_len": "4"}), cleaned())
    assert (cfg.data.seq_len, cfg.data.horizon, cfg.data.max_fill) == (24, 6, 6)


def test_data_array_is_float32_in_the_given_column_order():
    frame = record()
    got = data_array(frame, ("b", "precipitation"))
    assert got.dtype == np.float32 and got.shape == (N, 2)
    np.testing.assert_array_equal(got, frame[["b", "precipitation"]].to_numpy().astype(np.float32))


def test_fit_scaler_uses_the_training_steps_only_and_ignores_gaps():
    frame = pd.DataFrame({"a": [1.0, NAN, 3.0, 100.0], "b": [2.0, 2.0, 2.0, 9.0], "c": [0.0, 4.0, NAN, NAN]})
    mean, scale = fit_scaler(frame, ("a", "b", "c"), 3)
    np.testing.assert_allclose(mean, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(scale, [1.0, 1.0, 2.0])       # population std; a constant column scales by 1
    mean, scale = fit_scaler(frame, ("c", "a"), 4)
    np.testing.assert_allclose(mean, [2.0, 104 / 3])
    np.testing.assert_allclose(scale, [2.0, np.std([1.0, 3.0, 100.0])])


def test_window_labels_from_precipitation_or_an_existing_label():
    c = cleaned()
    d = config().data
    labels = window_labels(c, d)
    np.testing.assert_array_equal(labels, naive_labels(record()["precipitation"].to_numpy(), 2, 0.1))
    assert labels[3] == 1 and labels[4] == 1 and labels[5] == 0 and np.isnan(labels[18]) and np.isnan(labels[19])
    frame = record().assign(rain=[0, 1] * 20)          # integers: read as float (NaN marks an unknown label)
    with_label = CleanResult(frame, ("a",), HOUR, {"precip_col": None}, 1)
    got = window_labels(with_label, config(label_col="rain", features="a").data)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [0.0, 1.0] * 20)


def test_precipitation_and_the_persistence_forecast():
    c = cleaned()
    np.testing.assert_array_equal(precipitation(c), record()["precipitation"].to_numpy())
    assert precipitation(cleaned(precip_col=None)) is None
    counts = cleaned(record(precip_gap=None).astype({"precipitation": int}))
    assert precipitation(counts).dtype == np.float64
    d = config().data
    forecast = persistence_forecast(c, d, window_labels(c, d))
    expected = [int(np.nansum(record()["precipitation"].to_numpy()[max(t - 1, 0): t + 1]) > 0.1) for t in range(N)]
    np.testing.assert_array_equal(forecast, expected)
    labels = np.array([1.0, 0.0, NAN, 1.0, 0.0, 1.0])                   # no precipitation: the label 2 steps ago
    no_precip = CleanResult(record().head(6), ("a",), HOUR, {"precip_col": None}, 1)
    np.testing.assert_array_equal(persistence_forecast(no_precip, d, labels), [0, 0, 1, 0, 0, 1])
    # with precipitation a missing reading counts as dry, where the label it would need is unknown
    gap = CleanResult(pd.DataFrame({"precipitation": [0.0, 1.0, NAN, 0.0, 0.0]}), (), HOUR,
                      {"precip_col": "precipitation"}, 1)
    np.testing.assert_array_equal(persistence_forecast(gap, d, window_labels(gap, d)), [0, 1, 1, 0, 0])


# ---- check_degenerate -----------------------------------------------------------------------------------------------

def splits_of(*label_lists) -> dict[str, Split]:
    return {name: split(labels, name) for name, labels in zip(("train", "val", "test"), label_lists)}


def test_check_degenerate_passes_at_the_limits():
    notes: list[str] = []
    cfg = config(min_windows=4, min_class_share=0.25)
    check_degenerate(splits_of([1, 0, 0, 0], [1, 1, 1, 0], [0, 1, 0, 1]), cfg, HOUR, notes)   # 25 % and 4 windows
    assert notes == []


def test_check_degenerate_names_every_problem_and_what_decided_them():
    cfg = config(min_windows=4, min_class_share=0.3)
    with pytest.raises(DataError) as caught:
        check_degenerate(splits_of([1, 0, 0, 0], [1, 1, 0], [0, 1, 0, 1]), cfg, HOUR, [])
    assert str(caught.value) == (
        "degenerate task: the train split is 25.0% rain and 75.0% no rain (min_class_share 30.0%); the val split "
        "has 3 usable windows (min_windows 4); class shares: train 25.0% rain of 4 windows, val 66.7% rain of 3 "
        "windows, test 50.0% rain of 4 windows; decided by horizon 2 steps (= 2 h of hourly data), "
        "rain_threshold 0.1, split fractions 0.6/0.2/0.2; change these (e.g. --horizon 24h for rain in the next "
        "24 hours), use more data, or pass --allow-degenerate to train anyway")
    labelled = config(min_windows=4, label_col="rain", features="a")
    with pytest.raises(DataError, match="decided by the label column 'rain' and the split fractions 0.6/0.2/0.2;"):
        check_degenerate(splits_of([1, 0, 0, 0], [1, 1, 1], [0, 1, 0, 1]), labelled, HOUR, [])


def test_check_degenerate_with_allow_degenerate_keeps_a_note(caplog):
    notes = ["earlier", "trim"]
    cfg = config(min_windows=3, min_class_share=0.02, allow_degenerate="true")
    with caplog.at_level("WARNING", logger="rain_mlflow.data.dataset"):
        check_degenerate(splits_of([1, 1, 1, 1], [0, 1], [0, 1]), cfg, HOUR, notes)
    assert [r.getMessage() for r in caplog.records] == notes[2:]
    assert notes[:2] == ["earlier", "trim"] and len(notes) == 3
    assert notes[2].startswith("degenerate task: the train split is 100.0% rain and 0.0% no rain")
    assert "the val split has 2 usable windows (min_windows 3)" in notes[2]
    assert notes[2].endswith("split fractions 0.6/0.2/0.2 (allow_degenerate: training anyway)")


# ---- prepare ---------------------------------------------------------------------------------------------------------

def naive_ends(labels, still, window, horizon, first, last, stride, exclude):
    out = []
    for t in range(first, last):
        if t < window - 1 or t + horizon >= last or (t - (window - 1)) % stride or np.isnan(labels[t]):
            continue
        if exclude and still[t - window + 1: t + 1].any():
            continue
        out.append(t)
    return out


@pytest.mark.parametrize("missing,stride", [("mask", 1), ("exclude", 1), ("mask", 3)])
def test_prepare_a_hand_made_record(missing, stride):
    frame = record()
    cfg = config(missing=missing, window_stride=stride)
    data = prepare(cleaned(frame), cfg)
    raw = frame[list(COLUMNS)].to_numpy()
    still = np.isnan(naive_fill(raw, 1, [False, True, True]))
    labels = naive_labels(raw[:, 0], 2, 0.1)
    train_end, val_end = 24, 32                                   # round(40 * 0.6), + round(40 * 0.2)
    mean, std = np.nanmean(raw[:train_end], axis=0), np.nanstd(raw[:train_end], axis=0)
    np.testing.assert_allclose(data.scaler_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(data.scaler_scale, std, rtol=1e-12)
    scaled = np.where(still, 0.0, (naive_fill(raw, 1, [False, True, True]) - mean) / std)
    indicators = [still.mean(axis=1)[:, None]] if missing == "mask" else []
    np.testing.assert_allclose(data.series, np.hstack([scaled, *indicators]), rtol=1e-6, atol=1e-6)
    assert data.series.dtype == np.float32 and data.raw.dtype == np.float32
    np.testing.assert_array_equal(data.raw, raw.astype(np.float32))
    assert data.features == COLUMNS + ((SHARE_INDICATOR,) if missing == "mask" else ())
    assert data.policy == MissingPolicy(COLUMNS, (False, True, True), 1, missing, data.features[3:])
    assert (data.window, data.horizon, data.notes) == (8, 2, [])
    assert data.dates.equals(pd.DatetimeIndex(frame["date"]))
    ranges = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, N)}
    for name, (first, last) in ranges.items():
        s = data.splits[name]
        step = stride if name == "train" else 1
        expected = naive_ends(labels, still.any(axis=1), 8, 2, first, last, step, missing == "exclude")
        candidates = naive_ends(np.zeros(N), still.any(axis=1), 8, 2, first, last, step, False)
        assert s.ends.tolist() == expected, name
        assert s.labels.tolist() == labels[expected].astype(int).tolist() and s.labels.dtype == np.int64
        assert (s.name, s.first_step, s.last_step) == (name, first, last)
        assert s.candidates == len(candidates) and s.dropped == len(candidates) - len(expected)
    assert data.accounting["splits"]["train"]["kept"] == data.splits["train"].size
    rained_lately = [int(np.nansum(raw[max(t - 1, 0): t + 1, 0]) > 0.1) for t in range(N)]
    np.testing.assert_array_equal(data.persistence, rained_lately)


def test_prepare_by_hand_on_each_split():
    # after the fill (max_fill 1) a is missing at 9, 10 (8 is filled from 7), precipitation at 20 (never carried),
    # b nowhere (30 is filled from 29). Windows of 8 ending at t hold [t - 7, t]; labels look at t + 1, t + 2.
    mask = prepare(cleaned(), config(missing="mask", seq_len="8h", horizon="2h")).splits   # durations resolved
    assert mask["train"].ends.tolist() == [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 20, 21]   # 18, 19 see step 20
    assert mask["train"].labels.tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]           # rain at 12
    assert mask["val"].ends.tolist() == [24, 25, 26, 27, 28, 29]          # t + 2 inside [24, 32): the purge
    assert mask["val"].labels.tolist() == [1, 1, 0, 0, 0, 0]              # rain at 25, 26
    assert mask["test"].ends.tolist() == [32, 33, 34, 35, 36, 37]
    assert mask["test"].labels.tolist() == [0, 1, 1, 0, 0, 0]             # rain at 35
    assert (mask["train"].dropped, mask["val"].dropped, mask["test"].dropped) == (2, 0, 0)
    exclude = prepare(cleaned(), config(missing="exclude")).splits
    assert exclude["train"].ends.tolist() == [7, 8]                       # 9..17 hold a's gap, 20..27 step 20
    assert exclude["val"].ends.tolist() == [28, 29] and exclude["val"].labels.tolist() == [0, 0]
    assert exclude["test"].ends.tolist() == [32, 33, 34, 35, 36, 37]
    assert (exclude["train"].dropped, exclude["val"].dropped, exclude["train"].candidates) == (13, 4, 15)


def test_prepare_decides_the_indicators_on_the_training_steps_only():
    # b's only gap is step 24, the first validation step: no indicator for it, though it is masked there
    data = prepare(cleaned(record(b_gap=24), max_fill=0),
                   config(max_fill=0, missing_indicators="per_feature"))
    assert data.features == COLUMNS + ("missing:precipitation", "missing:a")
    assert data.series[24, 2] == 0 and data.series[23, 2] != 0


def test_prepare_decides_the_indicators_after_the_fill():
    # b's one-step gap at 15 is filled (max_fill 1): no indicator for b; a's 9, 10 and precipitation's 20 stay
    data = prepare(cleaned(record(b_gap=15)), config(missing_indicators="per_feature"))
    assert data.features == COLUMNS + ("missing:precipitation", "missing:a")
    assert data.series[15, 2] == data.series[14, 2] != 0


def test_prepare_with_an_existing_label_and_no_precipitation():
    frame = record().drop(columns="precipitation").assign(rain=np.arange(N) % 3 == 0)
    frame["rain"] = frame["rain"].astype(float)
    frame.loc[30, "rain"] = NAN
    c = CleanResult(frame, ("a", "b"), HOUR, {"precip_col": None}, 1)
    data = prepare(c, config(label_col="rain", features="a,b"))
    assert data.rain_index is None and data.features == ("a", "b", SHARE_INDICATOR)
    assert data.splits["test"].ends.tolist() == [32, 33, 34, 35, 36, 37]
    assert data.splits["test"].labels.tolist() == [0, 1, 0, 0, 1, 0]        # the column itself: t % 3 == 0
    assert 30 not in data.splits["val"].ends.tolist() and data.splits["val"].ends.tolist() == [24, 25, 26, 27, 28,
                                                                                               29]
    # persistence without precipitation: the label of the window that ended `horizon` steps ago (unknown: dry)
    expected = [0, 0] + [int(t % 3 == 0 and t != 30) for t in range(N - 2)]
    np.testing.assert_array_equal(data.persistence, expected)
    every = evaluation_windows(c, config(label_col="rain", features="a,b"), data.policy, 8, test_split_only=False)
    np.testing.assert_array_equal(every.persistence, np.array(expected)[every.ends])


def test_prepare_refuses_a_window_longer_than_the_training_split():
    frame = record(precip_gap=None)
    assert prepare(cleaned(frame), config(seq_len=20, horizon=4)).splits["train"].ends.tolist() == [19]  # 24: fits
    with pytest.raises(ConfigError) as caught:
        prepare(cleaned(frame), config(seq_len=20, horizon=5))
    assert str(caught.value) == (
        "seq_len 20 (effective 20) is longer than the training split allows: the training split has 24 steps and "
        "a window needs 20 input steps plus horizon 5; use a shorter seq_len, a larger train_fraction or more data")


def test_prepare_names_a_split_without_usable_windows():
    frame = record(precip_gap=None)
    frame.loc[24:, "precipitation"] = NAN                       # no label known after training
    with pytest.raises(DataError) as caught:
        prepare(cleaned(frame), config())
    assert str(caught.value) == (
        "the val split has no usable window (6 candidate windows: 6 with an unknown label, 0 touching an input "
        "still missing after the fill); check the data's gaps (rain-mlflow clean shows them), seq_len 8 and the "
        "split fractions")
    frame = record(precip_gap=None, a_gap=(2, 30))
    with pytest.raises(DataError, match=r"the train split has no usable window \(15 candidate windows: 0 with an "
                       r"unknown label, 15 touching an input still missing.*; --missing mask keeps windows with "
                       r"missing inputs$"):
        prepare(cleaned(frame), config(missing="exclude"))


def test_prepare_applies_the_degenerate_check_and_notes_the_trim():
    with pytest.raises(DataError, match="degenerate task: the train split has 13 usable windows"):
        prepare(cleaned(), config(min_windows=16))
    data = prepare(cleaned(), config(seq_len=9, min_windows=16, allow_degenerate="true"))
    assert data.window == 8
    assert data.notes[0].startswith("seq_len 9 is not a multiple of input_token_len 4")
    assert data.notes[1].startswith("degenerate task:") and data.notes[1].endswith("training anyway)")


def test_window_accounting_counts_windows_of_seq_len_as_given():
    c = cleaned()
    d = config(seq_len="10h", horizon="2h", missing="exclude").data
    report = window_accounting(c, d)
    assert report["seq_len"] == 10 and report["max_fill"] == 1                   # not trimmed to 8
    # `a` missing at 9, 10 after the fill: windows of 10 ending 9..19 touch them; with a known label: 9..17, 21+
    assert report["features"]["a"]["windows_touching_gaps"] == 9
    assert report["features"]["a"]["missing_steps_after_fill"] == 2
    assert report["features"]["b"]["missing_steps_after_fill"] == 0           # step 30 filled from 29
    assert report["features"]["precipitation"]["missing_steps_after_fill"] == 1  # never carried
    # and, with exclude, the windows ending 20, 21 that hold the missing precipitation at 20
    assert report["splits"]["train"] == {"candidates": 13, "kept": 0, "label_unknown": 2, "input_missing": 11,
                                         "kept_share": 0.0}


# ---- evaluation windows ----------------------------------------------------------------------------------------------

def test_evaluation_windows_every_window_or_the_test_split():
    c = cleaned()
    cfg = config(horizon="2h")
    p = MissingPolicy(COLUMNS, (False, True, True), 1, "mask", (SHARE_INDICATOR,))
    every = evaluation_windows(c, cfg, p, 8, test_split_only=False)
    labels = naive_labels(record()["precipitation"].to_numpy(), 2, 0.1)
    expected = [t for t in range(7, N - 2) if not np.isnan(labels[t])]
    assert every.ends.tolist() == expected and every.scope == "all windows"
    assert every.candidates == N - 2 - 7 and every.dropped == every.candidates - len(expected)
    assert every.labels.tolist() == labels[expected].astype(int).tolist() and every.labels.dtype == np.int64
    assert every.end_dates.equals(pd.DatetimeIndex(record()["date"].to_numpy()[expected]))
    forecast = persistence_forecast(c, resolve(cfg, c).data, labels)
    np.testing.assert_array_equal(every.persistence, forecast[expected])
    assert every.raw.dtype == np.float32
    np.testing.assert_array_equal(every.raw, record()[list(COLUMNS)].to_numpy().astype(np.float32))
    np.testing.assert_array_equal(every.gather(np.array([9]), 3), every.raw[7:10][None])
    assert evaluation_windows(c, cfg, p, 1, test_split_only=False).ends[:3].tolist() == [0, 1, 2]  # from step 0
    test = evaluation_windows(c, cfg, p, 8, test_split_only=True)
    assert test.ends.tolist() == list(range(32, 38)) and test.scope == "test split"
    assert test.candidates == 6 and test.dropped == 0


def test_evaluation_windows_with_exclude_drop_windows_touching_a_gap():
    p = MissingPolicy(COLUMNS, (False, True, True), 1, "exclude")
    got = evaluation_windows(cleaned(), config(), p, 8, test_split_only=False)
    assert got.ends.tolist() == [7, 8, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37]
    assert got.candidates == 31 and got.dropped == 19
    unfilled = MissingPolicy(COLUMNS, (False, True, True), 0, "exclude")   # b's step 30 now stays missing
    assert evaluation_windows(cleaned(), config(), unfilled, 4, test_split_only=True).ends.tolist() == [34, 35, 36,
                                                                                                     37]


def test_evaluation_windows_without_a_usable_window_say_why():
    p = MissingPolicy(COLUMNS, (False, True, True), 1, "exclude")
    with pytest.raises(DataError) as caught:
        evaluation_windows(cleaned(), config(), p, 39, test_split_only=False)
    assert str(caught.value) == ("no usable window to evaluate (0 candidates, all with an unknown label or touching "
                                 "a missing input, or the record is shorter than the model's window of 39 steps)")
    masked = MissingPolicy(COLUMNS, (False, True, True), 1, "mask")
    with pytest.raises(DataError, match=r"\(0 candidates, all with an unknown label, or the record is shorter"):
        evaluation_windows(cleaned(), config(), masked, 39, test_split_only=False)


def test_eval_windows_gather():
    raw = np.arange(12, dtype=np.float32).reshape(6, 2)
    w = EvalWindows(raw, np.array([2, 5]), np.array([0, 1]), np.array([0, 0]), pd.DatetimeIndex([]), 2, 0, "x")
    np.testing.assert_array_equal(w.gather(np.array([2, 5]), 2), [raw[1:3], raw[4:6]])
