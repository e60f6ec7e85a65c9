"""The diagnosis rules, pure and fast: the seed's two documented sick runs, healthy runs, every boundary."""

from __future__ import annotations

import json
import math

import pytest

from rain_mlflow.diagnostics.history import RunHistory
from rain_mlflow.diagnostics.rules import RULES, diagnose, diagnosis_tag, skipped, validate_flags
from rain_mlflow.diagnostics.tags import diagnosis_tags, tag_changes
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.diagnostics.rules import format_epochs
from rain_mlflow.errors import ConfigError, UserError

pytestmark = pytest.mark.unit

MLFLOW_INF = 1.7976931348623157e308  # how MLflow hands back +inf
HOUR_MS = 3_600_000
NOW_MS = 1_760_000_000_000


def history(val_acc=(), test_acc=(), val_loss=(), train_loss=(), vram=(), rain_fraction=(), epoch_time=(),
            params=None, status="FINISHED", last_update_ms=None, run_id="run") -> RunHistory:
    """A run whose per-epoch metrics start at epoch 1 (each sequence is one metric)."""
    series = {"val_accuracy": val_acc, "test_accuracy": test_acc, "val_loss": val_loss, "train_loss": train_loss,
              "vram_peak_gb": vram, "val_pred_rain_fraction": rain_fraction, "epoch_time_s": epoch_time}
    metrics = {name: dict(enumerate(values, start=1)) for name, values in series.items() if values}
    return RunHistory(run_id=run_id, run_name=run_id, status=status, params=dict(params or {}), metrics=metrics,
                      last_update_ms=last_update_ms)


def flags(h: RunHistory, thresholds: Thresholds = Thresholds(), now_ms: int = NOW_MS) -> set[str]:
    return {finding.flag for finding in diagnose(h, thresholds, now_ms)}


def finding(h: RunHistory, flag: str, thresholds: Thresholds = Thresholds(), now_ms: int = NOW_MS):
    return RULES[flag](h, thresholds, now_ms)


# ---- the seed's runs (seeds/001...md; numbers as fractions) ------------------------------------------------------

TRANSFER_LONG = dict(
    val_acc=(0.6905, 0.6905), test_acc=(0.6334, 0.6334), val_loss=(0.0392924, 0.0394477),
    vram=(10.0, 10.0), epoch_time=(3897.7, 3881.5),
    params={"vram_budget_gb": "7.0", "windows_val": "6025", "seq_len": "2880", "batch_size": "12"},
)
SMALL_IMPROVED = dict(
    val_acc=(0.7540, 0.7029, 0.7542), test_acc=(0.7622, 0.7249, 0.7011),
    val_loss=(0.0355761, 0.0380584, 0.0372419), vram=(6.0, 6.0, 6.0), epoch_time=(860.1, 866.6, 865.8),
    params={"vram_budget_gb": "5.0", "windows_val": "6025", "seq_len": "1440", "batch_size": "24"},
)


def test_transfer_long_gets_divergence_and_vram_but_is_not_yet_stalled():
    h = history(**TRANSFER_LONG)
    assert flags(h) == {"val_test_divergence", "vram_over_budget"}
    assert diagnosis_tag(diagnose(h, now_ms=NOW_MS)) == "val_test_divergence,vram_over_budget"


def test_transfer_long_with_a_third_identical_epoch_is_stalled():
    seed = dict(TRANSFER_LONG, val_acc=(0.6905,) * 3, test_acc=(0.6334,) * 3,
                val_loss=(0.0392924, 0.0394477, 0.0395), vram=(10.0,) * 3)
    found = finding(history(**seed), "stalled")
    assert found is not None and found.epochs == (1, 2, 3)
    assert "val_accuracy 69.05% at epochs 1-3" in found.evidence
    assert "tolerance 0.10 pts" in found.evidence and "6025 val windows" in found.evidence
    assert "threshold 3 epochs" in found.evidence


def test_small_improved_gets_four_flags():
    h = history(**SMALL_IMPROVED)
    assert flags(h) == {"oscillating", "val_test_divergence", "val_loss_not_improving", "vram_over_budget"}


def test_seed_evidence_names_epochs_values_and_thresholds():
    small = history(**SMALL_IMPROVED)
    assert finding(small, "oscillating").evidence.startswith(
        "val_accuracy fell 5.11 pts from 75.40% at epoch 1 to 70.29% at epoch 2")
    divergence = finding(small, "val_test_divergence")
    assert "75.42% vs test_accuracy 70.11% at epoch 3: gap 5.31 pts > 5.00 pts" in divergence.evidence
    assert divergence.epochs == (3,)
    not_improving = finding(small, "val_loss_not_improving").evidence
    assert "lowest at epoch 1 (0.03558)" in not_improving and "0.03724 at epoch 3" in not_improving
    vram = finding(history(**TRANSFER_LONG), "vram_over_budget")
    assert "10.00 GB at epoch 1 > budget 7.00 GB" in vram.evidence and vram.values["budget_gb"] == 7.0


# ---- healthy runs get nothing -----------------------------------------------------------------------------------

def test_early_stopped_run_is_healthy():
    # val_loss improves for 5 epochs, then rises slightly for 3 (patience) epochs before early stopping.
    h = history(val_acc=(0.700, 0.720, 0.740, 0.755, 0.765, 0.762, 0.758, 0.760),
                test_acc=(0.690, 0.715, 0.730, 0.748, 0.752, 0.750, 0.747, 0.749),
                val_loss=(0.0400, 0.0380, 0.0365, 0.0352, 0.0344, 0.0346, 0.0349, 0.0351),
                train_loss=(0.041, 0.037, 0.034, 0.032, 0.030, 0.029, 0.028, 0.027),
                vram=(3.1,) * 8, rain_fraction=(0.74, 0.72, 0.70, 0.71, 0.70, 0.69, 0.70, 0.70),
                epoch_time=(500.0,) * 8, params={"vram_budget_gb": "5.0", "windows_val": "6025"})
    assert flags(h) == set()
    assert diagnosis_tag(diagnose(h, now_ms=NOW_MS)) == "ok"


@pytest.mark.parametrize("windows_val", ["6025", "400"])
def test_slow_steady_improver_is_healthy(windows_val):
    epochs = range(25)  # +0.3 points per epoch: above both the 0.1-pt floor and one window of 400 (0.25 pts)
    h = history(val_acc=tuple(0.70 + 0.003 * e for e in epochs), test_acc=tuple(0.69 + 0.003 * e for e in epochs),
                val_loss=tuple(0.040 - 0.0002 * e for e in epochs), params={"windows_val": windows_val})
    assert flags(h) == set()


def test_accuracy_jumping_up_is_healthy():
    h = history(val_acc=(0.60, 0.70, 0.72), test_acc=(0.61, 0.69, 0.71), val_loss=(0.045, 0.038, 0.036))
    assert flags(h) == set()


# ---- stalled ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spread", "windows_val", "fires"), [
    (0.0009, "6025", True), (0.0011, "6025", False),   # the 0.1-pt floor wins over 1/6025
    (0.0019, "500", True), (0.0021, "500", False),     # one window of 500 = 0.2 pts wins over the floor
    (0.0009, None, True), (0.0011, None, False),       # windows_val unknown: the floor alone
])
def test_stalled_boundary(spread, windows_val, fires):
    params = {"windows_val": windows_val} if windows_val else {}
    h = history(val_acc=(0.70, 0.70 + spread, 0.70 + spread / 2), params=params)
    assert (finding(h, "stalled") is not None) is fires


def test_stalled_needs_enough_consecutive_epochs():
    assert finding(history(val_acc=(0.7, 0.7)), "stalled") is None
    assert finding(history(val_acc=(0.7, 0.7, 0.7)), "stalled", Thresholds(stalled_epochs=4)) is None
    gap = RunHistory("r", "r", "FINISHED", metrics={"val_accuracy": {1: 0.7, 2: 0.7, 4: 0.7}})
    assert finding(gap, "stalled") is None


def test_stalled_reports_the_whole_flat_stretch():
    h = history(val_acc=(0.60, 0.70, 0.70, 0.7005, 0.70, 0.75), params={"windows_val": "6025"})
    found = finding(h, "stalled")
    assert found.epochs == (2, 3, 4, 5)
    assert "70.00%-70.05% at epochs 2-5" in found.evidence and "spread 0.05 pts" in found.evidence


def test_stalled_ignores_nan_accuracy():
    assert finding(history(val_acc=(0.7, math.nan, 0.7, 0.7)), "stalled") is None


# ---- oscillating ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("after", "fires"), [(0.7001, False), (0.70, False), (0.6999, True)])
def test_oscillating_boundary(after, fires):
    # 0.75 -> 0.70 is a fall of exactly 5 points (0.05000000000000004 in floats): not "more than 5".
    assert (finding(history(val_acc=(0.75, after)), "oscillating") is not None) is fires


def test_oscillating_reports_the_largest_fall_and_counts_them():
    found = finding(history(val_acc=(0.80, 0.74, 0.80, 0.70)), "oscillating")
    assert "fell 10.00 pts from 80.00% at epoch 3 to 70.00% at epoch 4" in found.evidence
    assert "2 such drops" in found.evidence and found.epochs == (1, 2, 3, 4)


def test_oscillating_needs_two_epochs():
    assert finding(history(val_acc=(0.75,)), "oscillating") is None


# ---- val_test_divergence ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("test_acc", "fires"), [(0.7501, False), (0.75, False), (0.7499, True), (0.8501, True)])
def test_divergence_boundary(test_acc, fires):
    assert (finding(history(val_acc=(0.80,), test_acc=(test_acc,)), "val_test_divergence") is not None) is fires


def test_divergence_needs_both_metrics_at_the_same_epoch():
    assert finding(history(val_acc=(0.80, 0.80)), "val_test_divergence") is None
    h = RunHistory("r", "r", "FINISHED", metrics={"val_accuracy": {1: 0.8}, "test_accuracy": {2: 0.6}})
    assert finding(h, "val_test_divergence") is None


# ---- val_loss_not_improving --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("val_loss", "fires"), [
    ((0.030, 0.031, 0.032), True),
    ((0.030, 0.030, 0.030), True),           # equal is not an improvement
    ((0.030, 0.0299, 0.032), False),         # best at epoch 2
    ((0.030, 0.031), False),                 # only one later epoch: too few to judge
])
def test_val_loss_not_improving(val_loss, fires):
    assert (finding(history(val_loss=val_loss), "val_loss_not_improving") is not None) is fires


def test_val_loss_not_improving_threshold_is_configurable():
    h = history(val_loss=(0.030, 0.031, 0.032))
    assert finding(h, "val_loss_not_improving", Thresholds(not_improving_min_later_epochs=3)) is None
    assert finding(h, "val_loss_not_improving", Thresholds(not_improving_min_later_epochs=1)) is not None


# ---- vram_over_budget -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("peak", "fires"), [(4.99, False), (5.0, False), (5.01, True)])
def test_vram_boundary(peak, fires):
    h = history(vram=(3.0, peak), params={"vram_budget_gb": "5"})
    assert (finding(h, "vram_over_budget") is not None) is fires


@pytest.mark.parametrize("params", [{}, {"vram_budget_gb": "None"}, {"vram_budget_gb": "abc"}])
def test_vram_without_a_budget_is_not_judged(params):
    assert finding(history(vram=(50.0,), params=params), "vram_over_budget") is None


def test_cpu_run_without_vram_is_not_judged():
    assert finding(history(val_acc=(0.7,), params={"vram_budget_gb": "5"}), "vram_over_budget") is None


# ---- class_collapse ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fraction", "fires"), [
    (0.99, True), (1.0, True), (0.9899, False), (0.01, True), (0.0, True), (0.0101, False), (0.72, False),
])
def test_class_collapse_boundary(fraction, fires):
    assert (finding(history(rain_fraction=(0.7, fraction)), "class_collapse") is not None) is fires


def test_class_collapse_judges_the_final_epoch_only():
    assert finding(history(rain_fraction=(1.0, 1.0, 0.72)), "class_collapse") is None
    found = finding(history(rain_fraction=(0.72, 1.0)), "class_collapse")
    assert "100.00% at final epoch 2" in found.evidence and "predicts rain" in found.evidence


def test_old_runs_without_rain_fraction_are_not_judged():
    assert finding(history(val_acc=(0.72, 0.72)), "class_collapse") is None


# ---- non_finite_loss --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, MLFLOW_INF, -MLFLOW_INF])
def test_non_finite_loss(bad):
    found = finding(history(val_loss=(0.04, bad, 0.03), train_loss=(0.05, 0.04, 0.03)), "non_finite_loss")
    assert found is not None and found.epochs == (2,)
    assert f"val_loss is {math.copysign(math.inf, bad) if not math.isnan(bad) else 'nan'} at epoch 2" \
        in found.evidence


def test_non_finite_loss_names_the_first_epoch_and_metric():
    h = history(train_loss=(0.05, 0.04, math.nan, math.nan), val_loss=(0.04, math.inf, math.nan, math.nan))
    found = finding(h, "non_finite_loss")
    assert found.evidence.startswith("val_loss is inf at epoch 2")
    assert "5 non-finite values" in found.evidence and found.epochs == (2, 3, 4)
    assert finding(history(val_loss=(0.04, 0.03), train_loss=(0.05, 0.04)), "non_finite_loss") is None


def test_large_finite_losses_are_not_infinite():
    assert finding(history(val_loss=(1e30, 1e300)), "non_finite_loss") is None


# ---- dead_run ---------------------------------------------------------------------------------------------------

def running(silent_ms: int | None, epoch_time=(3600.0, 3600.0), status="RUNNING") -> RunHistory:
    last = None if silent_ms is None else NOW_MS - silent_ms
    return history(val_acc=(0.7, 0.71) if silent_ms is not None else (), epoch_time=epoch_time,
                   status=status, last_update_ms=last)


@pytest.mark.parametrize(("silent_ms", "fires"), [(3 * HOUR_MS, False), (3 * HOUR_MS + 1000, True)])
def test_dead_run_boundary(silent_ms, fires):
    # Limit = max(3 x mean epoch time of 1 h, 600 s) = 3 h.
    assert (finding(running(silent_ms), "dead_run") is not None) is fires


def test_dead_run_floor_for_short_epochs():
    assert finding(running(599_000, epoch_time=(10.0,)), "dead_run") is None
    found = finding(running(601_000, epoch_time=(10.0,)), "dead_run")
    assert found is not None and "limit 10.0 min" in found.evidence and "last epoch (2)" in found.evidence


def test_dead_run_without_epoch_time_uses_the_floor():
    assert finding(running(601_000, epoch_time=()), "dead_run") is not None


def test_dead_run_not_judged_before_the_first_epoch_or_when_finished():
    assert finding(running(None), "dead_run") is None
    assert finding(running(100 * HOUR_MS, status="FINISHED"), "dead_run") is None
    assert finding(running(100 * HOUR_MS, status="FAILED"), "dead_run") is None


# ---- diagnose, tags, flags, thresholds --------------------------------------------------------------------------

def test_diagnose_runs_only_the_named_rules_in_rules_order():
    h = history(**SMALL_IMPROVED)
    only = diagnose(h, now_ms=NOW_MS, only=["vram_over_budget", "oscillating"])
    assert [f.flag for f in only] == ["oscillating", "vram_over_budget"]
    with pytest.raises(UserError, match="unknown diagnosis flag 'stale'; allowed: stalled, oscillating"):
        diagnose(h, now_ms=NOW_MS, only=["stale"])


def test_validate_flags_accepts_comma_separated_items():
    assert validate_flags(["stalled, oscillating", "dead_run"]) == ("stalled", "oscillating", "dead_run")
    assert validate_flags([]) == ()


def test_diagnosis_tag_is_ok_or_sorted_flags():
    assert diagnosis_tag([]) == "ok"
    assert diagnosis_tag(diagnose(history(**SMALL_IMPROVED), now_ms=NOW_MS)) == \
        "oscillating,val_loss_not_improving,val_test_divergence,vram_over_budget"


def test_rules_match_the_config_flag_list():
    config = pytest.importorskip("rain_mlflow.config")
    assert tuple(RULES) == tuple(config.DIAGNOSIS_FLAGS)


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("stalled_epochs", 1, "an integer >= 2"),
    ("stalled_epochs", 2.5, "an integer >= 2"),
    ("stalled_epochs", True, "an integer >= 2"),
    ("stalled_tolerance", -0.1, "a number in [0, 1)"),
    ("oscillation_drop", 0, "a number in (0, 1)"),
    ("divergence_gap", math.nan, "a number in (0, 1)"),
    ("not_improving_min_later_epochs", 0, "an integer >= 1"),
    ("collapse_fraction", 0.5, "a number in (0.5, 1]"),
    ("dead_factor", 0.0, "a number > 0"),
    ("dead_min_seconds", -1, "a number >= 0"),
    ("noise_z", -0.5, "a number >= 0"),
])
def test_thresholds_validation_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ConfigError) as error:
        Thresholds(**{field: value})
    assert str(error.value) == f"Thresholds.{field} must be {allowed}; got {value!r}"


def test_thresholds_defaults_are_the_design_ones():
    t = Thresholds()
    assert (t.stalled_epochs, t.stalled_tolerance, t.oscillation_drop, t.divergence_gap) == (3, 0.001, 0.05, 0.05)
    assert (t.not_improving_min_later_epochs, t.collapse_fraction, t.dead_factor, t.dead_min_seconds) == \
        (2, 0.99, 3.0, 600.0)
    assert t.noise_z == 2.0


# ---- RunHistory ---------------------------------------------------------------------------------------------------

def test_run_history_helpers():
    h = RunHistory("r", "r", "RUNNING", params={"windows_val": "6025.0", "vram_budget_gb": "7", "x": "1.5"},
                   metrics={"val_loss": {2: 0.3, 1: 0.4}, "val_accuracy": {3: 0.7}})
    assert h.epochs() == [1, 2, 3]
    assert h.series("val_loss") == [(1, 0.4), (2, 0.3)] and h.series("missing") == []
    assert h.param_int("windows_val") == 6025 and h.param_int("x") is None and h.param_int("missing") is None
    assert h.param_float("vram_budget_gb") == 7.0
    grown = h.with_epoch(4, {"val_accuracy": 0.71, "val_loss": 0.29}, timestamp_ms=123)
    assert grown.epochs() == [1, 2, 3, 4] and grown.last_update_ms == 123
    assert h.epochs() == [1, 2, 3]  # the original is unchanged
    with pytest.raises(ValueError, match="epoch must be >= 1"):
        h.with_epoch(0, {})


def test_format_epochs():
    assert format_epochs([5, 1, 2, 3, 7, 8]) == "1-3, 5, 7-8"
    assert format_epochs([4]) == "4" and format_epochs([]) == ""


# ---- the noise floor (issue: rules that know the evaluation set's size) ------------------------------------------

def with_windows(h: RunHistory, val: int | None = None, test: int | None = None, as_metric: bool = True):
    """The same history with its evaluation set sizes, as the per-epoch metrics or as the older params."""
    import dataclasses

    epochs = h.epochs()
    metrics, params = dict(h.metrics), dict(h.params)
    for split, n in (("val", val), ("test", test)):
        if n is not None and as_metric:
            metrics[f"{split}_windows"] = {e: float(n) for e in epochs}
        elif n is not None:
            params[f"windows_{split}"] = str(n)
    return dataclasses.replace(h, metrics=metrics, params=params)


@pytest.mark.parametrize(("before", "after", "fires"), [
    (0.55, 0.45, False),       # a 10-pt fall equal to the floor 2 * sqrt(0.5 * 0.5 / 100) = 0.1: not more
    (0.5505, 0.4495, True),    # 10.1 pts > 0.1 (the mean accuracy stays 0.5, so the floor stays 10 pts)
    (0.5495, 0.4505, False),   # 9.9 pts: above the 5-pt threshold, inside the noise
])
def test_oscillating_noise_floor_boundary_at_100_windows(before, after, fires):
    h = with_windows(history(val_acc=(before, after)), val=100)
    assert (finding(h, "oscillating") is not None) is fires
    # Without the count the 5-pt threshold alone judges, as before counts were logged.
    assert finding(history(val_acc=(before, after)), "oscillating") is not None


@pytest.mark.parametrize(("val_acc", "test_acc", "fires"), [
    (0.55, 0.45, False),   # floor 2 * sqrt(2 * 0.55 * 0.45 / 198) = 0.1 exactly: a gap of 0.1 is not more
    (0.551, 0.449, True),  # gap 0.102 > floor 2 * sqrt(2 * 0.551 * 0.449 / 198) = 0.09998
    (0.549, 0.451, False),  # gap 0.098 < floor 0.09998
])
def test_divergence_noise_floor_boundary_at_198_windows(val_acc, test_acc, fires):
    h = with_windows(history(val_acc=(val_acc,), test_acc=(test_acc,)), val=198, test=198)
    assert (finding(h, "val_test_divergence") is not None) is fires


def test_noise_floor_reads_the_metric_first_then_the_params_and_needs_both_counts_for_divergence():
    fall = history(val_acc=(0.80, 0.70))  # 10 pts; floor at 100 windows: 2 * sqrt(0.75 * 0.25 / 100) = 8.66 pts
    assert finding(with_windows(fall, val=100, as_metric=False), "oscillating") is not None
    assert finding(with_windows(fall, val=50), "oscillating") is None  # 12.2 pts at 50 windows
    both = with_windows(with_windows(fall, val=100), val=50, as_metric=False)
    assert finding(both, "oscillating") is not None  # the metric (100) wins over the param (50)
    gap = history(val_acc=(0.60,), test_acc=(0.52,))  # 8 pts; floor at 60/60: 2 * sqrt(.24/60 + .2496/60) = 18 pts
    assert finding(with_windows(gap, val=60), "val_test_divergence") is not None  # test count unknown: no floor
    assert finding(with_windows(gap, val=60, test=60), "val_test_divergence") is None
    assert finding(with_windows(gap, val=60, test=60), "val_test_divergence", Thresholds(noise_z=0)) is not None


def test_the_seed_runs_keep_their_flags_with_their_window_counts():
    # 6025 validation and 6026 test windows, the counts in the seed's logs.
    transfer = with_windows(history(**TRANSFER_LONG), val=6025, test=6026)
    small = with_windows(history(**SMALL_IMPROVED), val=6025, test=6026)
    assert flags(transfer) == {"val_test_divergence", "vram_over_budget"}
    assert flags(small) == {"oscillating", "val_test_divergence", "val_loss_not_improving", "vram_over_budget"}
    # The floors, by hand: 2 * sqrt(p (1 - p) / n), p the mean of the two accuracies; two proportions for the gap.
    fall_floor = 2 * math.sqrt(((0.7540 + 0.7029) / 2) * (1 - (0.7540 + 0.7029) / 2) / 6025)
    gap_floor = 2 * math.sqrt(0.7542 * 0.2458 / 6025 + 0.7011 * 0.2989 / 6026)
    assert f"noise floor {100 * fall_floor:.2f} pts = 2 SE at 6025 val windows" in \
        finding(small, "oscillating").evidence
    assert f"noise floor {100 * gap_floor:.2f} pts = 2 SE at 6025 val / 6026 test windows" in \
        finding(small, "val_test_divergence").evidence
    assert finding(small, "oscillating").values["noise_floor"] == pytest.approx(fall_floor)
    assert 0.011 < fall_floor < 0.012 and 0.016 < gap_floor < 0.017  # both far below the 5-pt thresholds


def test_stalled_tolerance_reads_the_window_metric():
    # One window of 400 = 0.25 pts: a 0.2-pt spread is one window, stalled; with 6025 windows it is not.
    h = history(val_acc=(0.70, 0.702, 0.701))
    assert finding(with_windows(h, val=400), "stalled") is not None
    assert finding(with_windows(h, val=6025), "stalled") is None


def test_eval_windows_precedence():
    h = RunHistory("r", "r", "FINISHED", params={"windows_val": "500"},
                   metrics={"val_windows": {1: 100.0, 2: 120.0}}, summary={"test_windows": 90.0})
    assert h.eval_windows("val", 1) == 100 and h.eval_windows("val", 2) == 120 and h.eval_windows("val", 7) == 120
    assert h.eval_windows("test") == 90
    assert RunHistory("r", "r", "FINISHED", params={"windows_val": "500"}).eval_windows("val") == 500
    assert RunHistory("r", "r", "FINISHED", metrics={"val_windows": {1: 0.0}}).eval_windows("val") is None


# ---- what the rules could not judge, notes, stored thresholds -----------------------------------------------------

def test_skipped_names_the_missing_metric_per_rule():
    assert skipped(history(**SMALL_IMPROVED)) == {"class_collapse": "val_pred_rain_fraction"}
    only_loss = history(val_loss=(0.04, 0.03))
    assert skipped(only_loss) == {
        "stalled": "val_accuracy", "oscillating": "val_accuracy", "val_test_divergence": "val_accuracy, test_accuracy",
        "vram_over_budget": "vram_peak_gb, param vram_budget_gb", "class_collapse": "val_pred_rain_fraction"}
    assert skipped(history(train_loss=(0.05,)), only=["non_finite_loss", "val_loss_not_improving"]) == \
        {"val_loss_not_improving": "val_loss"}
    assert skipped(history(val_acc=(0.7,)))["non_finite_loss"] == "train_loss or val_loss"


def test_reading_notes_end_the_evidence_of_findings_that_used_the_metric():
    import dataclasses

    h = dataclasses.replace(history(**SMALL_IMPROVED), notes={"val_accuracy": "val_acc logged in percent"})
    found = {f.flag: f.evidence for f in diagnose(h, now_ms=NOW_MS)}
    assert found["oscillating"].endswith(" [val_acc logged in percent]")
    assert found["val_test_divergence"].endswith(" [val_acc logged in percent]")
    assert not found["val_loss_not_improving"].endswith("]")


def test_thresholds_round_trip_through_their_tag():
    custom = Thresholds(divergence_gap=0.06, stalled_epochs=4, noise_z=0)
    assert Thresholds.from_json(custom.to_json()) == custom
    assert json.loads(custom.to_json())["divergence_gap"] == 0.06
    assert Thresholds.from_json('{"divergence_gap": 0.07, "a_newer_field": 1}') == Thresholds(divergence_gap=0.07)
    with pytest.raises(ConfigError, match=r"^run x tag: Thresholds.stalled_epochs must be an integer >= 2; got 1$"):
        Thresholds.from_json('{"stalled_epochs": 1}', "run x tag")
    with pytest.raises(ConfigError, match="diagnosis.thresholds must be a JSON object of diagnosis thresholds; "
                                          "got '\\[1\\]'"):
        Thresholds.from_json("[1]")


def test_diagnosis_tags_and_their_changes():
    findings = diagnose(history(**TRANSFER_LONG), now_ms=NOW_MS)
    tags = diagnosis_tags(findings, Thresholds(), {"val_acc": "val_accuracy"})
    assert tags["diagnosis"] == "val_test_divergence,vram_over_budget"
    assert set(tags) == {"diagnosis", "diagnosis.val_test_divergence", "diagnosis.vram_over_budget",
                         "diagnosis.thresholds", "diagnosis.metric_map"}
    current = {**tags, "diagnosis.stalled": "old evidence", "preset": "x"}
    assert tag_changes(current, tags) == ({}, ["diagnosis.stalled"])
    changed, stale = tag_changes({"diagnosis": "ok"}, tags)
    assert changed == {k: v for k, v in tags.items() if k != "diagnosis"} | {"diagnosis": tags["diagnosis"]}
    assert stale == []
