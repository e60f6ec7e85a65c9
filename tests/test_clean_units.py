"""`clean` rule by rule on tiny hand-written records: whole cleaned frames, whole reports and exact error messages,
every expected value worked out by hand (fast; these are the tests mutation testing runs for `data/clean.py`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rain_mlflow.config import DataConfig
from rain_mlflow.data.clean import SCHEDULE_AGGREGATION, clean, summary_lines
from rain_mlflow.errors import DataError

pytestmark = pytest.mark.unit

NAN = np.nan


def dates(*texts: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(texts)))


def expected_frame(columns: dict) -> pd.DataFrame:
    return pd.DataFrame(columns)


def column_report(missing: int, filled: int, longest_after: int, runs: list[tuple[str, int]]) -> dict:
    """The per-column report from hand-counted numbers: runs are (first missing step, length)."""
    return {"missing": missing, "filled": filled, "missing_after_fill": missing - filled,
            "longest_after_fill": longest_after, "missing_after": missing, "interpolated": 0,
            "missing_runs": len(runs), "longest_missing_run": max((n for _, n in runs), default=0),
            "runs": [{"start": start, "steps": n} for start, n in runs]}


def no_gaps() -> dict:
    return {"count": 0, "missing_steps": 0, "longest_steps": 0, "runs": []}


# ---- an hourly station export with every kind of mess --------------------------------------------------------

def messy_hourly() -> pd.DataFrame:
    # file order (line = index + 2); hours written by hand:
    #   line 2: 02:00   line 3: 00:00   line 4: 01:00 (-999 precip, '---' temp)   line 5: 00:00 again (dropped)
    #   line 6: 04:00 (' S/D ' temp)    line 7: no date    line 8: 02:30 (off the hourly grid)
    return pd.DataFrame({
        "date": ["2020-01-01 02:00", "2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 00:00",
                 "2020-01-01 04:00", None, "2020-01-01 02:30"],
        "precipitation": [0.5, 0.0, -999.0, 9.0, 1.25, 3.0, 7.0],
        "temp": ["12.0", "10", "---", "99", " S/D ", "50", "1"],
        "station": ["X", "X", "X", "X", "X", "X", "X"],
        "flag": [True, False, True, True, False, False, True],
        "solar": [NAN, NAN, NAN, 1.0, 8.0, 2.0, 3.0],
    })


MESSY_CFG = DataConfig(na_values=("-999",), max_fill=1)


def test_a_messy_hourly_record_becomes_this_frame():
    result = clean(messy_hourly(), MESSY_CFG, "station.csv")
    grid = dates("2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00", "2020-01-01 03:00", "2020-01-01 04:00")
    expected = expected_frame({"date": grid,
                               "precipitation": [0.0, NAN, 0.5, NAN, 1.25],   # -999 -> missing; 03:00 a gap
                               "temp": [10.0, NAN, 12.0, NAN, NAN],          # '---', the gap, ' S/D '
                               "flag": [0.0, 1.0, 1.0, NAN, 0.0]})
    pd.testing.assert_frame_equal(result.frame, expected)
    assert result.features == ("precipitation", "temp", "flag")
    assert result.step == pd.Timedelta(hours=1)
    assert result.max_fill == 1


def test_a_messy_hourly_record_gives_this_report():
    report = clean(messy_hourly(), MESSY_CFG, "station.csv").report
    assert report == {
        "source": "station.csv", "rows_in": 7,
        "columns_in": ["date", "precipitation", "temp", "station", "flag", "solar"],
        "date_col": "date", "precip_col": "precipitation", "label_col": None, "warnings": [],
        "rows_without_date": 1,
        "ignored_columns": {"station": "not numeric"},
        "duplicates_dropped": 1,
        "schedule": None,
        # steps between the 5 dated distinct rows: 1h, 1h, 30min, 90min: 1h is the most common, 2 of 4
        "freq": "1h", "freq_inferred": True, "freq_share": 0.5,
        "off_grid_rows_dropped": 1,
        "gaps": {"count": 1, "missing_steps": 1, "longest_steps": 1,
                 "runs": [{"start": "2020-01-01 03:00:00", "end": "2020-01-01 03:00:00", "steps": 1}]},
        # training period: the first round(5 * 0.6) = 3 steps; solar has none of 00:00, 01:00, 02:00
        "dropped_features": {"solar": "missing in 100.0% of the training period's steps (> max_missing_fraction "
                                      "0.5)"},
        "max_fill": 1, "max_fill_default": False,
        "columns": {
            # precipitation is never carried forward
            "precipitation": column_report(2, 0, 1, [("2020-01-01 01:00:00", 1), ("2020-01-01 03:00:00", 1)]),
            # 01:00 gets 00:00's reading, 03:00 gets 02:00's, 04:00 is 2 steps after it: > max_fill 1
            "temp": column_report(3, 2, 1, [("2020-01-01 01:00:00", 1), ("2020-01-01 03:00:00", 2)]),
            "flag": column_report(1, 1, 0, [("2020-01-01 03:00:00", 1)]),
        },
        "features": ["precipitation", "temp", "flag"], "steps": 5,
        "start": "2020-01-01 00:00:00", "end": "2020-01-01 04:00:00",
    }


def test_the_summary_of_a_messy_hourly_record():
    report = clean(messy_hourly(), MESSY_CFG, "station.csv").report
    assert summary_lines(report) == [
        "7 rows in -> 5 steps of 1h (2020-01-01 00:00:00 .. 2020-01-01 04:00:00)",
        "duplicates dropped: 1, rows without date: 1, off-grid rows dropped: 1",
        "gaps: 1 (1 missing steps, longest 1)",
        "columns (the causal fill carries a reading forward over at most 1 steps when windows are made; "
        "precipitation is never carried):",
        "  precipitation: 2 missing (longest run 1), 0 will be filled, 2 stay missing (longest 1)",
        "  temp: 3 missing (longest run 2), 2 will be filled, 1 stay missing (longest 1)",
        "  flag: 1 missing (longest run 1), 1 will be filled, 0 stay missing (longest 0)",
        "  dropped solar: missing in 100.0% of the training period's steps (> max_missing_fraction 0.5)",
        "  ignored station: not numeric",
    ]


def test_a_cleaned_record_cleans_to_itself():
    first = clean(messy_hourly(), MESSY_CFG, "station.csv")
    again = clean(first.frame, MESSY_CFG, "again")
    pd.testing.assert_frame_equal(again.frame, first.frame)
    assert again.report["duplicates_dropped"] == again.report["off_grid_rows_dropped"] == 0


# ---- dates ---------------------------------------------------------------------------------------------------

def test_time_zones_are_converted_to_utc_with_a_warning():
    raw = pd.DataFrame({"date": ["2020-01-01 01:00+01:00", "2020-01-01 02:00+01:00", "2020-01-01 03:00+01:00"],
                        "precipitation": [0.0, 1.0, 2.0]})
    result = clean(raw, DataConfig(), "x")
    pd.testing.assert_series_equal(result.frame["date"],
                                   dates("2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00"),
                                   check_names=False)
    assert result.report["warnings"] == ["timestamps carried a time zone; converted to UTC"]
    assert summary_lines(result.report)[-1] == "warning: timestamps carried a time zone; converted to UTC"


def test_dates_in_several_formats_are_each_parsed():
    raw = pd.DataFrame({"date": ["2020-01-01 00:00", "2020-01-01 01:00", "Jan 1 2020 02:00", "2020-01-01 03:00"],
                        "precipitation": [0.0, 1.0, 2.0, 3.0]})
    result = clean(raw, DataConfig(), "x")
    assert result.frame["date"].tolist() == dates("2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00",
                                                  "2020-01-01 03:00").tolist()
    assert result.frame["precipitation"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert result.report["warnings"] == []


def test_an_unparseable_date_is_an_error_naming_its_line():
    raw = pd.DataFrame({"date": ["2020-01-01 00:00", None, "2020-01-01 01:00", "not a date", "never"],
                        "precipitation": [0.0, 1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(DataError) as error:
        clean(raw, DataConfig(), "x")
    assert str(error.value) == ("date column 'date' has 2 unparseable value(s), first 'not a date' on line 5; "
                                "expected timestamps such as 2014-01-31 13:00")


def test_three_dated_rows_are_enough_and_two_are_not():
    three = pd.DataFrame({"date": ["2020-01-01 00:00", "2020-01-01 01:00", None, "2020-01-01 02:00"],
                          "precipitation": [0.0, 1.0, 2.0, 3.0]})
    assert clean(three, DataConfig(), "x").report["steps"] == 3
    with pytest.raises(DataError) as error:
        clean(three.drop(index=3), DataConfig(), "x")
    assert str(error.value) == "need at least 3 rows with a date to infer the time step; got 2"


# ---- columns -------------------------------------------------------------------------------------------------

HOURS = ["2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00", "2020-01-01 03:00"]


def test_a_missing_date_column_is_an_error_listing_the_columns():
    with pytest.raises(DataError) as error:
        clean(pd.DataFrame({"time": HOURS, "precipitation": 0.0}), DataConfig(), "x")
    assert str(error.value) == ("date column 'date' not found; columns are: time, precipitation "
                                "(choose one with --date-col)")


def test_a_missing_label_is_an_error_listing_the_columns():
    with pytest.raises(DataError) as error:
        clean(pd.DataFrame({"date": HOURS, "precipitation": 0.0}), DataConfig(label_col="rain"), "x")
    assert str(error.value) == "label column 'rain' not found; columns are: date, precipitation"


def test_a_missing_precipitation_column_is_an_error_unless_a_label_is_given():
    with pytest.raises(DataError) as error:
        clean(pd.DataFrame({"date": HOURS, "rain_mm": 0.0}), DataConfig(), "x")
    assert str(error.value) == ("precipitation column 'precipitation' not found; columns are: date, rain_mm "
                                "(choose one with --precip-col, or give an existing 0/1 label with --label-col)")


def test_a_label_without_precipitation_is_a_record_of_its_own():
    raw = pd.DataFrame({"date": HOURS, "rain": [0, 1, None, 1], "temp": [1.0, NAN, 3.0, 4.0]})
    result = clean(raw, DataConfig(label_col="rain"), "x")
    expected = expected_frame({"date": dates(*HOURS), "temp": [1.0, NAN, 3.0, 4.0], "rain": [0.0, 1.0, NAN, 1.0]})
    pd.testing.assert_frame_equal(result.frame, expected)
    assert result.features == ("temp",)
    report = result.report
    assert report["precip_col"] is None and report["label_col"] == "rain"
    assert report["columns"] == {"temp": column_report(1, 1, 0, [("2020-01-01 01:00:00", 1)])}
    assert report["max_fill"] == 6 and report["max_fill_default"]


def test_a_named_precipitation_column_is_used():
    raw = pd.DataFrame({"Fecha": HOURS, "pp": [0.0, 1.0, NAN, 2.0], "t": 1.0})
    result = clean(raw, DataConfig(date_col="Fecha", precip_col="pp"), "x")
    assert list(result.frame.columns) == ["Fecha", "pp", "t"]
    assert result.report["precip_col"] == "pp" and result.report["date_col"] == "Fecha"
    # precipitation is never carried forward, whatever max_fill says
    assert result.report["columns"]["pp"] == column_report(1, 0, 1, [("2020-01-01 02:00:00", 1)])
    assert result.report["columns"]["t"] == {"missing": 0, "filled": 0, "missing_after_fill": 0,
                                             "longest_after_fill": 0, "missing_after": 0, "interpolated": 0,
                                             "missing_runs": 0, "longest_missing_run": 0, "runs": []}


def test_a_column_mixing_numbers_and_text_is_an_error_naming_its_line():
    raw = pd.DataFrame({"date": ["2020-01-01 00:00", None, "2020-01-01 01:00", "2020-01-01 02:00"],
                        "precipitation": 0.0, "temp": ["1", "2", "abc", "xyz"]})
    with pytest.raises(DataError) as error:
        clean(raw, DataConfig(), "x")
    assert str(error.value) == ("column 'temp' is not numeric: value 'abc' on line 4; if it marks a missing "
                                "reading, pass --na-values 'abc'")


@pytest.mark.parametrize("column, cfg", [("precipitation", DataConfig()),
                                         ("rain", DataConfig(label_col="rain")),
                                         ("station", DataConfig(features=("station",)))])
def test_a_text_column_the_user_asked_for_is_an_error_not_ignored(column, cfg):
    raw = pd.DataFrame({"date": HOURS, "precipitation": 0.0, "rain": 0, "station": 1.0})
    raw[column] = ["a", "b", "c", "d"]
    with pytest.raises(DataError) as error:
        clean(raw, cfg, "x")
    assert str(error.value) == (f"column {column!r} is not numeric: value 'a' on line 2; if it marks a missing "
                                "reading, pass --na-values 'a'")


def test_a_missing_feature_column_is_an_error():
    raw = pd.DataFrame({"date": HOURS, "precipitation": 0.0, "temp": 1.0})
    with pytest.raises(DataError) as error:
        clean(raw, DataConfig(features=("temp", "wind", "gust")), "x")
    assert str(error.value) == "feature column 'wind' not found; columns are: date, precipitation, temp"


def test_chosen_features_keep_their_order_and_leave_the_others_out():
    raw = pd.DataFrame({"date": HOURS, "a": 1.0, "precipitation": 0.0, "b": 2.0, "c": 3.0})
    result = clean(raw, DataConfig(features=("c", "a")), "x")
    assert list(result.frame.columns) == ["date", "precipitation", "c", "a"]
    assert result.features == ("c", "a")
    assert list(result.report["columns"]) == ["precipitation", "c", "a"]


def test_precipitation_named_as_a_feature_appears_once():
    raw = pd.DataFrame({"date": HOURS, "precipitation": 0.0, "temp": 1.0})
    result = clean(raw, DataConfig(features=("temp", "precipitation")), "x")
    assert list(result.frame.columns) == ["date", "precipitation", "temp"]
    assert result.features == ("temp", "precipitation")


def test_station_placeholders_and_given_sentinels_become_missing():
    raw = pd.DataFrame({"date": HOURS + ["2020-01-01 04:00", "2020-01-01 05:00"],
                        "precipitation": [0.0, -9999.0, 1.0, -999.0, 2.0, 3.0],
                        "a": ["-", "--", "?", "s/d", " 4 ", "S/D"],
                        "b": ["1", "n/a", "2", "3", "4", "5"]})
    result = clean(raw, DataConfig(na_values=("-999", "-9999", "n/a"), max_missing_fraction=1.0), "x")
    assert result.frame["precipitation"].tolist()[::2] == [0.0, 1.0, 2.0]
    assert result.frame["precipitation"].isna().tolist() == [False, True, False, True, False, False]
    assert result.frame["a"].isna().tolist() == [True, True, True, True, False, True]
    assert result.frame["a"].iloc[4] == 4.0
    assert result.frame["b"].isna().tolist() == [False, True, False, False, False, False]


# ---- duplicates, step, off-grid rows and gaps ----------------------------------------------------------------

def test_a_duplicate_keeps_the_row_that_comes_first_in_the_file():
    raw = pd.DataFrame({"date": ["2020-01-01 01:00", "2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00",
                                 "2020-01-01 00:00", "2020-01-01 01:00"],
                        "precipitation": [0.7, 0.0, 0.2, 0.0, 0.5, 0.9]})
    result = clean(raw, DataConfig(), "x")
    assert result.report["duplicates_dropped"] == 3
    assert result.frame["precipitation"].tolist() == [0.0, 0.7, 0.0]


@pytest.mark.parametrize("step, freq", [("30min", "30min"), ("2h", "2h"), ("1D", "1D"), ("36h", "36h"),
                                        ("90s", "90s"), ("150min", "150min")])
def test_the_inferred_step_is_written_in_its_largest_whole_unit(step, freq):
    raw = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=4, freq=step), "precipitation": 0.0})
    report = clean(raw, DataConfig(max_fill=0, horizon=1), "x").report
    assert (report["freq"], report["freq_inferred"], report["freq_share"]) == (freq, True, 1.0)


def test_a_given_step_is_reported_as_given_and_moves_rows_off_the_grid():
    raw = pd.DataFrame({"date": ["2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00", "2020-01-01 04:00",
                                 "2020-01-01 05:00"],
                        "precipitation": [0.0, 1.0, 2.0, 4.0, 5.0]})
    result = clean(raw, DataConfig(freq="120min"), "x")
    assert result.frame["precipitation"].tolist() == [0.0, 2.0, 4.0]
    assert result.step == pd.Timedelta(hours=2)
    report = result.report
    assert (report["freq"], report["freq_inferred"], "freq_share" in report) == ("120min", False, False)
    assert report["off_grid_rows_dropped"] == 2
    assert report["max_fill"] == 3                      # 6 h of 2 h steps


@pytest.mark.parametrize("freq", ["often", "1M"])
def test_a_step_that_is_not_fixed_is_an_error(freq):
    raw = pd.DataFrame({"date": HOURS, "precipitation": 0.0})
    with pytest.raises(DataError) as error:
        clean(raw, DataConfig(freq=freq), "x")
    assert str(error.value) == f"freq must be a fixed step such as 1h, 3h or 30min; got {freq!r}"


def test_every_gap_is_a_run_of_missing_steps():
    present = [0, 1, 3, 4, 8, 9, 10, 12]        # 2, 5..7 and 11 are missing
    raw = pd.DataFrame({"date": pd.Timestamp("2020-01-01") + pd.to_timedelta(present, unit="h"),
                        "precipitation": 0.0, "temp": 1.0})
    result = clean(raw, DataConfig(max_fill=2), "x")
    assert result.report["freq_share"] == 0.5714        # 4 of the 7 steps between rows are 1 h
    assert result.report["gaps"] == {
        "count": 3, "missing_steps": 5, "longest_steps": 3,
        "runs": [{"start": "2020-01-01 02:00:00", "end": "2020-01-01 02:00:00", "steps": 1},
                 {"start": "2020-01-01 05:00:00", "end": "2020-01-01 07:00:00", "steps": 3},
                 {"start": "2020-01-01 11:00:00", "end": "2020-01-01 11:00:00", "steps": 1}]}
    # max_fill 2: of 05..07 only 07 stays missing
    assert result.report["columns"]["temp"] == column_report(
        5, 4, 1, [("2020-01-01 02:00:00", 1), ("2020-01-01 05:00:00", 3), ("2020-01-01 11:00:00", 1)])
    assert result.frame["temp"].isna().tolist() == [i not in present for i in range(13)]
    lines = summary_lines(result.report)
    assert lines[2] == "gaps: 3 (5 missing steps, longest 3)"
    assert lines[4] == "  precipitation: 5 missing (longest run 3), 0 will be filled, 5 stay missing (longest 3)"


def test_a_record_ending_in_a_missing_run_reports_it_to_the_end():
    raw = pd.DataFrame({"date": HOURS, "precipitation": [NAN, 0.0, NAN, NAN], "temp": 1.0})
    result = clean(raw, DataConfig(), "x")
    assert result.report["columns"]["precipitation"] == column_report(
        3, 0, 2, [("2020-01-01 00:00:00", 1), ("2020-01-01 02:00:00", 2)])


# ---- precipitation and label checks --------------------------------------------------------------------------

def test_precipitation_without_any_reading_is_an_error():
    with pytest.raises(DataError) as error:
        clean(pd.DataFrame({"date": HOURS, "precipitation": NAN, "t": 1.0}), DataConfig(), "x")
    assert str(error.value) == "precipitation column 'precipitation' has no readings (every value is missing)"


def test_negative_precipitation_is_an_error_naming_the_first_one():
    raw = pd.DataFrame({"date": HOURS, "precipitation": [0.0, -5.0, 1.0, -7.5]})
    with pytest.raises(DataError) as error:
        clean(raw, DataConfig(), "x")
    assert str(error.value) == ("precipitation column 'precipitation' has 2 negative value(s), first -5 at "
                                "2020-01-01 01:00:00; precipitation cannot be negative (if -5 marks a missing "
                                "reading, pass --na-values -5)")


def test_a_label_other_than_0_or_1_is_an_error():
    raw = pd.DataFrame({"date": HOURS, "precipitation": 0.0, "rain": [0, 2, None, 3], "t": 1.0})
    with pytest.raises(DataError) as error:
        clean(raw, DataConfig(label_col="rain"), "x")
    assert str(error.value) == "label column 'rain' must hold only 0 and 1 (missing allowed); found 2 (2 such values)"


# ---- features ------------------------------------------------------------------------------------------------

def test_only_the_training_period_decides_which_features_are_dropped():
    # 10 steps: the training period is the first 6. 'half' misses 3 of them (exactly 0.5: kept), 'more' 4 of them,
    # 'late' misses every step after the training period (kept); precipitation is never dropped
    raw = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=10, freq="h"),
                        "precipitation": [NAN] * 4 + [0.0] * 6,
                        "half": [NAN, 1, NAN, 1, NAN, 1, 1, 1, 1, 1],
                        "more": [NAN, NAN, NAN, NAN, 1, 1, 1, 1, 1, 1],
                        "late": [1.0] * 6 + [NAN] * 4})
    result = clean(raw, DataConfig(), "x")
    assert result.features == ("precipitation", "half", "late")
    assert result.report["dropped_features"] == {
        "more": "missing in 66.7% of the training period's steps (> max_missing_fraction 0.5)"}
    assert list(result.frame.columns) == ["date", "precipitation", "half", "late"]
    stricter = clean(raw, DataConfig(max_missing_fraction=0.25), "x")
    assert stricter.features == ("precipitation", "late")
    assert set(stricter.report["dropped_features"]) == {"half", "more"}
    assert stricter.report["dropped_features"]["half"].endswith("(> max_missing_fraction 0.25)")


def test_a_one_step_training_period_still_decides():
    # 3 steps, train_fraction 0.1: round(0.3) = 0 steps, so the first step is the training period
    raw = pd.DataFrame({"date": HOURS[:3], "precipitation": 0.0, "first_missing": [NAN, 1.0, 1.0],
                        "then_missing": [1.0, NAN, NAN]})
    result = clean(raw, DataConfig(train_fraction=0.1, val_fraction=0.1, test_fraction=0.8), "x")
    assert result.features == ("precipitation", "then_missing")
    assert list(result.report["dropped_features"]) == ["first_missing"]


def test_no_feature_left_is_an_error_naming_what_was_dropped():
    raw = pd.DataFrame({"date": HOURS, "rain": [0, 1, 0, 1], "a": NAN, "b": [NAN, NAN, NAN, 1.0]})
    with pytest.raises(DataError) as error:
        clean(raw, DataConfig(label_col="rain"), "x")
    assert str(error.value) == ("no usable feature column is left after cleaning (dropped: a, b); check --features "
                                "and --max-missing-fraction")
    with pytest.raises(DataError) as error:
        clean(raw[["date", "rain"]], DataConfig(label_col="rain"), "x")
    assert str(error.value) == ("no usable feature column is left after cleaning (dropped: none); check "
                                "--features and --max-missing-fraction")


# ---- records read at a few fixed times of day ----------------------------------------------------------------

def fixed_times(days: list[str], times=("07:30", "13:00", "19:00"), **columns) -> pd.DataFrame:
    return pd.DataFrame({"date": [f"{d} {t}" for d in days for t in times], **columns})


def test_three_readings_a_day_are_summed_and_averaged_per_day():
    # 2020-01-03 was never read: its day is a gap. Each day's readings land on the next midnight: (t - 1D, t]
    raw = fixed_times(["2020-01-01", "2020-01-02", "2020-01-04"],
                      precipitation=[1.0, 2.0, 0.5, 0.0, NAN, 4.0, 0.0, 0.0, 0.25],
                      temp=[10.0, 20.0, 30.0, 12.0, NAN, 18.0, 5.0, 7.0, 9.0],
                      rain=[0, 1, 0, 0, 0, 0, 0, 0, 1])
    result = clean(raw, DataConfig(label_col="rain"), "x")
    expected = expected_frame({"date": dates("2020-01-02", "2020-01-03", "2020-01-04", "2020-01-05"),
                               "precipitation": [3.5, NAN, NAN, 0.25],   # day 2 lost a reading: total unknown
                               "temp": [20.0, 15.0, NAN, 7.0],
                               "rain": [1.0, 0.0, NAN, 1.0]})
    pd.testing.assert_frame_equal(result.frame, expected)
    assert result.step == pd.Timedelta(days=1)
    report = result.report
    assert {k: report[k] for k in ("freq", "freq_inferred", "schedule", "gaps", "max_fill", "max_fill_default",
                                   "columns", "dropped_features", "steps", "start", "end")} == {
        "freq": "1D", "freq_inferred": True,
        "schedule": {"times": ["07:30", "13:00", "19:00"], "grid": "1D", "grid_default": True,
                     "aggregation": SCHEDULE_AGGREGATION},
        "gaps": {"count": 1, "missing_steps": 1, "longest_steps": 1,
                 "runs": [{"start": "2020-01-04 00:00:00", "end": "2020-01-04 00:00:00", "steps": 1}]},
        "max_fill": 0, "max_fill_default": True,              # 6 h is no whole day
        "columns": {"precipitation": column_report(2, 0, 2, [("2020-01-03 00:00:00", 2)]),
                    "temp": column_report(1, 0, 1, [("2020-01-04 00:00:00", 1)])},
        "dropped_features": {}, "steps": 4, "start": "2020-01-02 00:00:00", "end": "2020-01-05 00:00:00"}
    assert "freq_share" not in report
    assert summary_lines(report)[3] == (
        "schedule: observed at fixed times 07:30, 13:00, 19:00; resampled to a regular 1D grid (the default; "
        f"choose another with --freq): {SCHEDULE_AGGREGATION}")


def test_a_grid_finer_than_the_schedule_holds_zero_rain_where_nothing_is_ever_read():
    # 6 h grid: 07:30 -> 12:00, 13:00 -> 18:00, 19:00 -> next 00:00; nothing is ever read in (00:00, 06:00]
    raw = fixed_times(["2020-01-01", "2020-01-02", "2020-01-03"],
                      precipitation=[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.5, NAN, 0.0],
                      temp=[10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0])
    result = clean(raw, DataConfig(freq="6h"), "x")
    grid = pd.date_range("2020-01-01 12:00", "2020-01-04 00:00", freq="6h")
    expected = expected_frame({"date": grid.to_series(index=range(len(grid))),
                               "precipitation": [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, NAN, 0.0],
                               "temp": [10.0, 11.0, 12.0, NAN, 13.0, 14.0, 15.0, NAN, 16.0, 17.0, 18.0]})
    pd.testing.assert_frame_equal(result.frame, expected, check_freq=False)
    report = result.report
    assert report["schedule"] == {"times": ["07:30", "13:00", "19:00"], "grid": "6h", "grid_default": False,
                                  "aggregation": SCHEDULE_AGGREGATION}
    assert (report["freq"], report["freq_inferred"], report["gaps"]) == ("6h", False, no_gaps())
    assert report["max_fill"] == 1
    assert report["columns"]["temp"] == column_report(2, 2, 0, [("2020-01-02 06:00:00", 1),
                                                                ("2020-01-03 06:00:00", 1)])
    assert summary_lines(report)[3] == ("schedule: observed at fixed times 07:30, 13:00, 19:00; resampled to a "
                                        f"regular 6h grid: {SCHEDULE_AGGREGATION}")


def test_a_reading_on_a_step_boundary_closes_the_step_it_ends():
    # readings at 00, 07 and 13 h: the midnight one belongs to the day (t - 1D, t] that it ends
    raw = fixed_times(days_from("2020-01-01", 3), times=("00:00", "07:00", "13:00"), precipitation=1.0,
                      temp=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    result = clean(raw, DataConfig(), "x")
    # steps hold 1, 3, 3 and 2 readings; 3 is usual, so the first and last totals are unknown
    expected = expected_frame({"date": dates("2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"),
                               "precipitation": [NAN, 3.0, 3.0, NAN], "temp": [0.0, 2.0, 5.0, 7.5]})
    pd.testing.assert_frame_equal(result.frame, expected)


def test_eight_readings_are_too_few_to_call_a_schedule():
    raw = fixed_times(["2020-01-01", "2020-01-02", "2020-01-03"], precipitation=0.0).iloc[:8]
    report = clean(raw, DataConfig(max_fill=0, horizon=1), "x").report
    assert report["schedule"] is None
    assert summary_lines(report)[3].startswith("columns")


def test_evenly_spaced_times_of_day_are_a_regular_grid():
    raw = fixed_times(["2020-01-01", "2020-01-02", "2020-01-03"], times=("00:00", "08:00", "16:00"),
                      precipitation=0.0)
    report = clean(raw, DataConfig(), "x").report
    assert (report["schedule"], report["freq"], report["steps"]) == (None, "8h", 9)


@pytest.mark.parametrize("hours, schedule", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12], True),           # 12 distinct times: at most SCHEDULE_MAX_TIMES
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13], False),      # 13: an hourly record with gaps
])
def test_more_than_twelve_times_of_day_are_an_hourly_record(hours, schedule):
    times = [f"{h:02d}:00" for h in hours]
    raw = fixed_times(["2020-01-01", "2020-01-02"], times=times, precipitation=0.0)
    report = clean(raw, DataConfig(max_fill=0), "x").report
    assert (report["schedule"] is not None) == schedule
    if schedule:
        assert report["schedule"]["times"] == times


def test_a_few_hours_of_one_day_are_an_hourly_record_not_a_schedule():
    # ten hourly readings: ten distinct times of day, unequally spaced around the clock, but none recurs
    raw = pd.DataFrame({"date": pd.date_range("2020-01-01 08:00", periods=10, freq="h"), "precipitation": 1.0})
    report = clean(raw, DataConfig(), "x").report
    assert (report["schedule"], report["freq"], report["steps"]) == (None, "1h", 10)


def test_two_times_of_day_unequally_spaced_are_a_schedule():
    raw = fixed_times(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04", "2020-01-05"], times=("07:00", "13:00"),
                      precipitation=[1.0, 2.0] * 5)
    result = clean(raw, DataConfig(), "x")
    assert result.report["schedule"]["times"] == ["07:00", "13:00"]
    assert result.frame["precipitation"].tolist() == [3.0] * 5


def test_a_single_time_of_day_is_a_daily_record():
    raw = fixed_times([f"2020-01-0{d}" for d in range(1, 10)], times=("07:00",), precipitation=0.0)
    report = clean(raw, DataConfig(max_fill=0), "x").report
    assert (report["schedule"], report["freq"], report["start"]) == (None, "1D", "2020-01-01 07:00:00")


def days_from(first: str, n: int) -> list[str]:
    return [str(d.date()) for d in pd.date_range(first, periods=n)]


STRAYS = ["2020-01-05 10:00", "2020-01-09 03:00", "2020-01-12 22:00", "2020-01-15 16:00"]


def test_scattered_readings_off_the_schedule_are_tolerated_up_to_five_percent():
    base = fixed_times(days_from("2020-01-01", 19), times=("07:00", "13:00", "19:00"))  # 57 readings
    few = pd.concat([base, pd.DataFrame({"date": STRAYS[:3]})]).assign(precipitation=0.0)  # 57 of 60: exactly 95 %
    assert clean(few, DataConfig(max_fill=0), "x").report["schedule"]["times"] == ["07:00", "13:00", "19:00"]
    many = pd.concat([base, pd.DataFrame({"date": STRAYS})]).assign(precipitation=0.0)     # 57 of 61
    report = clean(many, DataConfig(max_fill=0), "x").report
    assert report["schedule"] is None and report["freq"] == "6h"


def test_a_time_of_day_seen_in_under_two_percent_of_the_readings_is_a_stray():
    # 40 days at 07, 13 and 19 h (120 readings) and 3 other times read twice each: 2 < 2 % of 126 readings
    base = fixed_times(days_from("2020-01-01", 40), times=("07:00", "13:00", "19:00"))
    strays = pd.DataFrame({"date": STRAYS[:3] + [s.replace("-01-", "-02-") for s in STRAYS[:3]]})
    raw = pd.concat([base, strays]).assign(precipitation=0.0)
    assert clean(raw, DataConfig(max_fill=0), "x").report["schedule"]["times"] == ["07:00", "13:00", "19:00"]


def test_a_time_of_day_seen_twice_belongs_to_the_schedule():
    # 3 days at 07, 10, 13 and 19 h, the 10 h reading missed once: 10 h is still one of the times (2 readings)
    raw = fixed_times(days_from("2020-01-01", 3), times=("07:00", "10:00", "13:00", "19:00"),
                      precipitation=[1.0] * 12).drop(index=5)
    assert clean(raw, DataConfig(), "x").report["schedule"]["times"] == ["07:00", "10:00", "13:00", "19:00"]


def test_duplicates_of_many_timestamps_keep_their_first_row_whatever_the_sort():
    # 300 distinct hours, each written twice in a shuffled file: a sort that is not stable would mix them up
    hours = pd.date_range("2020-01-01", periods=300, freq="h")
    order = np.random.default_rng(0).permutation(600)
    stamps = np.concatenate([hours, hours])[order]
    raw = pd.DataFrame({"date": stamps, "precipitation": order.astype(float)})
    first = {}
    for stamp, value in zip(stamps, order):           # naive reference: walk the file top to bottom
        first.setdefault(stamp, float(value))
    result = clean(raw, DataConfig(max_fill=0), "x")
    assert result.report["duplicates_dropped"] == 300
    assert result.frame["precipitation"].tolist() == [first[h] for h in hours.to_numpy()]
