"""`clean`: one test per rule on a real-world-shaped CSV, the CLI end to end, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from rain_mlflow.config import DataConfig
from rain_mlflow.data.clean import clean
from tests.conftest import assert_user_error

N_HOURS = 24 * 20


def station_frame(seed: int = 0) -> pd.DataFrame:
    """20 days of hourly data the way a station export looks: Spanish date column, imperial units, a text
    column, a mostly empty sensor, duplicated and shuffled rows, irregular gaps, NaN runs and '---' cells."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2019-02-01", periods=N_HOURS, freq="h")
    frame = pd.DataFrame({
        "Fecha": dates.strftime("%Y-%m-%d %H:%M"),
        "precip_in": np.round(np.where(rng.random(N_HOURS) < 0.3, rng.gamma(0.7, 0.05, N_HOURS), 0.0), 3),
        "temp_F": np.round(55 + 10 * np.sin(np.arange(N_HOURS) / 24 * 2 * np.pi) + rng.normal(0, 1, N_HOURS), 1),
        "rh_pct": np.round(rng.uniform(40, 95, N_HOURS)),
        "pressure_inHg": np.round(29.9 + rng.normal(0, 0.05, N_HOURS), 2),
        "wind_mph": np.round(rng.gamma(2, 2, N_HOURS), 1),
        "solar_Wm2": np.where(rng.random(N_HOURS) < 0.15, rng.uniform(0, 900, N_HOURS), np.nan),
        "station": "PUNO-114",
    }).astype({"temp_F": object})
    frame.loc[100:101, "temp_F"] = np.nan            # 2-step run: filled when windows are made
    frame.loc[200:211, "temp_F"] = np.nan            # 12-step run: 6 steps filled, 6 stay missing
    frame.loc[150, "temp_F"] = "---"                 # station placeholder for a missing reading
    frame.loc[300:305, "precip_in"] = np.nan         # gauge failure: never invented
    gap = set(range(400, 448)) | {50, 51, 333}        # irregular gaps: 2 days + scattered hours
    frame = frame.drop(index=sorted(gap))
    duplicates = frame.loc[[10, 20, 30]].assign(precip_in=9.99)  # same timestamps, other values
    frame = pd.concat([frame, duplicates])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # unsorted


CFG = DataConfig(date_col="Fecha", precip_col="precip_in")


@pytest.fixture(scope="module")
def cleaned():
    return clean(station_frame(), CFG, "station.csv")


@pytest.mark.unit
def test_rows_are_sorted_on_a_regular_grid(cleaned):
    dates = cleaned.frame["Fecha"]
    assert dates.is_monotonic_increasing
    assert (dates.diff().dropna() == pd.Timedelta(hours=1)).all()
    assert cleaned.report["freq"] == "1h" and cleaned.report["freq_inferred"]
    assert len(cleaned.frame) == N_HOURS


@pytest.mark.unit
def test_duplicate_timestamps_keep_the_first_row(cleaned):
    assert cleaned.report["duplicates_dropped"] == 3
    raw = station_frame()                                   # shuffled: a copy may come before its original
    first_seen: dict[str, float] = {}
    for date, value in zip(raw["Fecha"], raw["precip_in"]):  # naive reference: walk the file top to bottom
        first_seen.setdefault(date, value)
    kept = dict(zip(cleaned.frame["Fecha"].dt.strftime("%Y-%m-%d %H:%M"), cleaned.frame["precip_in"]))
    duplicated = raw.loc[raw["Fecha"].duplicated(keep=False), "Fecha"].unique()
    assert len(duplicated) == 3
    for date in duplicated:
        assert kept[date] == first_seen[date] or (np.isnan(kept[date]) and np.isnan(first_seen[date])), date
    firsts = [first_seen[date] == 9.99 for date in duplicated]
    assert any(firsts) and not all(firsts)                  # the fixture holds both orders, so both are checked


@pytest.mark.unit
def test_a_duplicate_keeps_the_row_that_comes_first_in_the_file():
    frame = pd.DataFrame({"date": ["2020-01-01 01:00", "2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 02:00",
                                   "2020-01-01 00:00"],
                          "precipitation": [0.7, 0.0, 0.2, 0.0, 0.5], "t": [1.0, 2.0, 3.0, 4.0, 5.0]})
    result = clean(frame, DataConfig(), "x")
    assert result.report["duplicates_dropped"] == 2
    assert result.frame["precipitation"].tolist() == [0.0, 0.7, 0.0]   # 00:00 from row 2, 01:00 from row 1
    assert result.frame["t"].tolist() == [2.0, 1.0, 4.0]


@pytest.mark.unit
def test_every_gap_is_reported(cleaned):
    gaps = cleaned.report["gaps"]
    assert gaps["missing_steps"] == 48 + 3
    assert gaps["longest_steps"] == 48
    assert {(g["start"], g["steps"]) for g in gaps["runs"]} >= {("2019-02-17 16:00:00", 48),
                                                                  ("2019-02-03 02:00:00", 2)}


@pytest.mark.unit
def test_the_cleaned_record_keeps_observed_values_and_counts_what_the_causal_fill_will_fill(cleaned):
    temp = cleaned.frame["temp_F"].to_numpy()
    assert np.isnan(temp[100:102]).all() and np.isnan(temp[200:212]).all() and np.isnan(temp[150])  # not filled
    info = cleaned.report["columns"]["temp_F"]
    assert cleaned.max_fill == cleaned.report["max_fill"] == 6 and cleaned.report["max_fill_default"]
    # missing: 2 + 12 + 1 ('---') + the 51 steps of the timestamp gaps (2 days, 2 hours, 1 hour)
    assert info["missing"] == 2 + 12 + 1 + 48 + 3
    # filled causally, at most 6 steps after the last reading: 2 + 6 + 1 + 6 (of the 48) + 2 + 1
    assert info["filled"] == 2 + 6 + 1 + 6 + 2 + 1
    assert info["missing_after_fill"] == 6 + 42 and info["longest_after_fill"] == 42
    assert info["interpolated"] == 0                            # kept for older readers of the report


@pytest.mark.unit
def test_precipitation_is_never_invented(cleaned):
    precip = cleaned.frame["precip_in"].to_numpy()
    assert np.isnan(precip[300:306]).all()
    assert np.isnan(precip[400:448]).all()                      # the rows of the 2-day gap stay missing
    info = cleaned.report["columns"]["precip_in"]
    assert info["filled"] == 0 and info["missing"] == info["missing_after_fill"] == 6 + 48 + 3


@pytest.mark.unit
def test_mostly_missing_feature_is_dropped_and_reported(cleaned):
    assert "solar_Wm2" not in cleaned.features
    assert "solar_Wm2" in cleaned.report["dropped_features"]
    assert "max_missing_fraction" in cleaned.report["dropped_features"]["solar_Wm2"]


@pytest.mark.unit
def test_only_the_training_period_decides_which_features_are_dropped():
    # a sensor that works in the training period (first 60 % of the steps) and dies afterwards is kept; one that
    # is dead in the training period is dropped, however complete it is later
    n = 100
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h"), "precipitation": 0.0,
                          "late_death": np.where(np.arange(n) < 58, 1.0, np.nan),
                          "late_start": np.where(np.arange(n) < 40, np.nan, 1.0)})
    result = clean(frame, DataConfig(), "x")
    assert frame["late_death"].isna().mean() == 0.42 and frame["late_start"].isna().mean() == 0.40
    assert "late_death" in result.features                     # 0 % missing in the training period
    assert "late_start" not in result.features                 # 40 of 60 training steps missing: 67 %
    assert "66.7% of the training period" in result.report["dropped_features"]["late_start"]


@pytest.mark.unit
def test_text_column_is_ignored_and_reported(cleaned):
    assert cleaned.report["ignored_columns"] == {"station": "not numeric"}
    assert list(cleaned.features) == ["precip_in", "temp_F", "rh_pct", "pressure_inHg", "wind_mph"]


@pytest.mark.unit
def test_off_grid_timestamps_are_dropped_and_counted():
    frame = pd.DataFrame({"date": ["2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 01:17",
                                   "2020-01-01 02:00", "2020-01-01 03:00"],
                          "precipitation": [0, 1, 2, 0, 0], "t": [1.0, 2, 3, 4, 5]})
    result = clean(frame, DataConfig(), "x")
    assert result.report["off_grid_rows_dropped"] == 1
    assert len(result.frame) == 4


@pytest.mark.unit
def test_cleaning_is_idempotent(cleaned):
    again = clean(cleaned.frame, CFG, "again")
    pd.testing.assert_frame_equal(again.frame, cleaned.frame)


@pytest.mark.e2e
def test_cli_cleans_a_station_export_with_only_its_column_names(store, tmp_path, cli):
    raw = tmp_path / "station.csv"
    station_frame().to_csv(raw, index=False)
    out = tmp_path / "out" / "clean.csv"
    result = cli("clean", "--data", raw, "--date-col", "Fecha", "--precip-col", "precip_in", "--output", out)
    assert result.code == 0, result.err
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["Fecha", "precip_in", "temp_F", "rh_pct", "pressure_inHg", "wind_mph"]
    report = json.loads((tmp_path / "out" / "clean.report.json").read_text())
    assert report["duplicates_dropped"] == 3 and report["gaps"]["count"] >= 2
    assert "gaps:" in result.out and "MLflow run:" in result.out
    windows = report["windows"]   # accounting for windows of --seq-len steps (default preset: 720 > 20 days)
    assert windows["seq_len"] == 720 and windows["splits"]["train"]["candidates"] == 0
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("rain-timerxl").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["rain.step"] == "clean"
    assert run.data.params["date_col"] == "Fecha" and run.data.metrics["duplicates_dropped"] == 3
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "cleaned")}
    assert artifacts == {"cleaned/clean.csv", "cleaned/clean.report.json"}
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == run.data.tags["data_digest"]


# ---- bad input: exit code 2, one `error:` line, nothing written, no run -------------------------------------

def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


GOOD_HEADER = "date,precipitation,temperature\n"


@pytest.mark.e2e
@pytest.mark.parametrize("name, content, args, fragments", [
    ("missing.csv", None, [], ("does not exist",)),
    ("empty.csv", "", [], ("is empty",)),
    ("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), [], ("not a CSV",)),
    ("nodate.csv", "time,precipitation\n2020-01-01,1\n2020-01-02,0\n2020-01-03,0\n", [],
     ("date column 'date' not found", "time")),
    ("noprecip.csv", "date,rain_mm\n2020-01-01,1\n2020-01-02,0\n2020-01-03,0\n", [],
     ("precipitation column 'precipitation' not found", "rain_mm")),
    ("baddates.csv", GOOD_HEADER + "2020-01-01 00:00,0,1\n2020-01-01 01:00,0,2\nyesterday,0,3\n", [],
     ("unparseable", "'yesterday'", "line 4")),
    ("textfeature.csv", GOOD_HEADER + "2020-01-01 00:00,0,1\n2020-01-01 01:00,0,abc\n2020-01-01 02:00,0,3\n", [],
     ("'temperature' is not numeric", "'abc'")),
    ("onerow.csv", GOOD_HEADER + "2020-01-01 00:00,0,1\n", [], ("at least 3 rows",)),
    ("nanprecip.csv", GOOD_HEADER + "2020-01-01 00:00,,1\n2020-01-01 01:00,,2\n2020-01-01 02:00,,3\n", [],
     ("no readings",)),
    ("negprecip.csv", GOOD_HEADER + "2020-01-01 00:00,0,1\n2020-01-01 01:00,-999,2\n2020-01-01 02:00,1,3\n", [],
     ("negative", "-999", "--na-values")),
    ("badlabel.csv", "date,precipitation,rain\n2020-01-01 00:00,0,0\n2020-01-01 01:00,1,2\n2020-01-01 02:00,0,1\n",
     ["--label-col", "rain"], ("label column 'rain'", "0 and 1", "2")),
])
def test_bad_input_is_one_error_line_and_nothing_written(store, tmp_path, cli, name, content, args, fragments):
    path = tmp_path / name if content is None else write(tmp_path, name, content)
    out = tmp_path / "clean.csv"
    result = cli("clean", "--data", path, "--output", out, *args)
    assert_user_error(result, *fragments)
    assert not out.exists() and not (tmp_path / "clean.report.json").exists()
    assert not list(tmp_path.glob(".clean*"))  # no temp file left behind
    assert not (tmp_path / "mlflow.db").exists()  # the store was never opened: no run, not even an experiment


@pytest.mark.e2e
def test_negative_sentinel_becomes_missing_with_na_values(store, tmp_path, cli):
    path = write(tmp_path, "sentinel.csv", GOOD_HEADER + "2020-01-01 00:00,0,1\n2020-01-01 01:00,-999,2\n"
                                                         "2020-01-01 02:00,1,3\n")
    result = cli("clean", "--data", path, "--output", tmp_path / "c.csv", "--na-values", "-999")
    assert result.code == 0, result.err
    assert pd.read_csv(tmp_path / "c.csv")["precipitation"].isna().sum() == 1


@pytest.mark.e2e
def test_unknown_option_value_is_one_error_line(store, tmp_path, cli, synthetic_csv):
    assert_user_error(cli("clean", "--data", synthetic_csv, "--max-fill", "many"), "max_fill", "integer", "'many'")
    assert_user_error(cli("clean", "--data", synthetic_csv, "--missing", "drop"), "missing", "mask, exclude",
                      "'drop'")
    assert_user_error(cli("clean", "--data", synthetic_csv, "--max-missing-fraction", "2"),
                      "max_missing_fraction", "<= 1.0")
    assert_user_error(cli("clean", "--bogus"), "--bogus")


@pytest.mark.e2e
def test_clean_reports_the_window_accounting_with_a_suggestion(store, tmp_path, cli):
    from rain_mlflow.synth import SynthConfig, write_synthetic

    raw = tmp_path / "airport.csv"
    write_synthetic(str(raw), SynthConfig(years=1.0, seed=2, gaps="realistic"))
    out = tmp_path / "clean.csv"
    result = cli("clean", "--data", raw, "--output", out, "--seq-len", "168", "--missing", "exclude")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "clean.report.json").read_text())
    windows = report["windows"]
    assert windows["seq_len"] == 168 and windows["missing"] == "exclude" and windows["max_fill"] == 6
    for split in ("train", "val", "test"):
        counts = windows["splits"][split]
        assert counts["kept"] + counts["label_unknown"] + counts["input_missing"] == counts["candidates"] > 0
    costly = [c for c, info in windows["features"].items() if info["share"] > 0.2]
    assert costly and all(any(s.startswith(f"{c}:") for s in windows["suggestions"]) for c in costly)
    assert "suggestion:" in result.out and "--missing mask" in result.out
    assert "wind_gust" in report["dropped_features"]
    cleaned = pd.read_csv(out)
    assert cleaned["pressure"].isna().sum() == report["columns"]["pressure"]["missing"]  # nothing filled in the CSV
