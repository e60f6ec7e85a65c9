"""Every diagnosis rule's whole Finding (flag, evidence, epochs, values), written out by hand for a tiny hand-made
history, and each threshold probed at, just below and just above its boundary.

The histories use binary fractions (0.5, 0.625, 0.03125, ...) wherever a value is compared with a threshold, so
"exactly at the threshold" is exact in floating point; the 1e-9 rounding allowance is probed with the decimal
values that carry float noise (0.75 - 0.70 = 0.05000000000000004). Noise floors are chosen to be exact too:
2 * sqrt(0.5 * 0.5 / 64) = 0.125, and 2 * sqrt(2 * 0.75 * 0.25 / 24) = 0.25.
"""

from __future__ import annotations

import math
import time

import pytest

from rain_mlflow.diagnostics.history import RunHistory
from rain_mlflow.diagnostics.rules import diagnose, diagnosis_tag, noise_floor, skipped
from rain_mlflow.diagnostics.thresholds import Thresholds
from rain_mlflow.diagnostics.rules import (Finding, class_collapse, dead_run, non_finite_loss, oscillating, stalled,
                                           val_loss_not_improving, val_test_divergence, validate_flags,
                                           vram_over_budget)
from rain_mlflow.errors import UserError

pytestmark = pytest.mark.unit

DEFAULT = Thresholds()
NOW_MS = 1_760_000_000_000
NAN = float("nan")
MLFLOW_INF = 1.7976931348623157e308  # how MLflow hands back +inf


def run(status: str = "FINISHED", params: dict | None = None, last_update_ms: int | None = None,
        notes: dict | None = None, **metrics: dict[int, float]) -> RunHistory:
    """A history from per-epoch metrics written as {epoch: value} dicts."""
    return RunHistory(run_id="r", run_name="r", status=status, params=dict(params or {}), metrics=metrics,
                      last_update_ms=last_update_ms, notes=dict(notes or {}))


def windows(n: int, *epochs: int) -> dict[int, float]:
    return {epoch: float(n) for epoch in epochs}


# ---- stalled ------------------------------------------------------------------------------------------------------

def test_stalled_finding_in_full_with_the_tolerance_above_one_window():
    # Epochs 2-5 spread 0.5..0.5625 = 6.25 pts, exactly the tolerance; epoch 1 and 6 lie outside it.
    # One window of 32 is 3.125 pts, below the tolerance, so the tolerance stays 6.25 pts.
    h = run(params={"windows_val": "32"}, val_accuracy={1: 0.25, 2: 0.5, 3: 0.53125, 4: 0.5625, 5: 0.5, 6: 0.75})
    assert stalled(h, Thresholds(stalled_tolerance=0.0625), NOW_MS) == Finding(
        "stalled", "val_accuracy 50.00%-56.25% at epochs 2-5 (spread 6.25 pts; tolerance 6.25 pts, one of 32 val "
        "windows = 3.12 pts; threshold 3 epochs)", (2, 3, 4, 5),
        {"val_accuracy": [0.5, 0.53125, 0.5625, 0.5], "spread": 0.0625, "tolerance": 0.0625, "windows_val": 32,
         "threshold_epochs": 3})


def test_stalled_finding_in_full_without_a_window_count():
    h = run(val_accuracy={1: 0.5, 2: 0.5, 3: 0.5})
    assert stalled(h, DEFAULT, NOW_MS) == Finding(
        "stalled", "val_accuracy 50.00% at epochs 1-3 (spread 0.00 pts; tolerance 0.10 pts, val_windows unknown; "
        "threshold 3 epochs)", (1, 2, 3),
        {"val_accuracy": [0.5, 0.5, 0.5], "spread": 0.0, "tolerance": 0.001, "windows_val": None,
         "threshold_epochs": 3})


def test_stalled_tolerance_widens_to_one_window_read_from_the_latest_metric():
    # 8 windows: one window = 12.5 pts > the 0.1-pt tolerance; the spread 0.5..0.625 is exactly one window.
    h = run(val_accuracy={3: 0.625, 4: 0.5, 5: 0.625, 6: 0.5}, val_windows=windows(4, 3, 4, 5) | {6: 8.0})
    assert stalled(h, DEFAULT, NOW_MS) == Finding(
        "stalled", "val_accuracy 50.00%-62.50% at epochs 3-6 (spread 12.50 pts; tolerance 12.50 pts, one of 8 val "
        "windows = 12.50 pts; threshold 3 epochs)", (3, 4, 5, 6),
        {"val_accuracy": [0.625, 0.5, 0.625, 0.5], "spread": 0.125, "tolerance": 0.125, "windows_val": 8,
         "threshold_epochs": 3})


@pytest.mark.parametrize(("third", "tolerance", "fires"), [
    (0.5625, 0.0625, True),          # spread exactly the tolerance
    (0.5625 + 2e-10, 0.0625, True),  # within the 1e-9 rounding allowance
    (0.5625 + 1e-8, 0.0625, False),  # just above
    (0.5625 - 1e-8, 0.0625, True),   # just below
    (0.75, 0.05, False),             # 0.75 - 0.5: far above
])
def test_stalled_boundary_at_the_tolerance(third, tolerance, fires):
    h = run(val_accuracy={1: 0.5, 2: 0.5, 3: third})
    assert (stalled(h, Thresholds(stalled_tolerance=tolerance), NOW_MS) is not None) is fires


def test_stalled_a_spread_of_exactly_tolerance_plus_the_allowance_is_flat():
    at_allowance = 0.0625 + 1e-9  # x - 0.0 == x: the spread is exactly the tolerance plus the allowance
    h = run(val_accuracy={1: 0.0, 2: at_allowance, 3: 0.0})
    assert stalled(h, Thresholds(stalled_tolerance=0.0625), NOW_MS) is not None


def test_stalled_rounding_noise_of_decimal_accuracies_is_no_spread():
    # 0.75 - 0.70 = 0.05000000000000004: printed as 5.00 pts, it is within a 5-pt tolerance
    found = stalled(run(val_accuracy={1: 0.70, 2: 0.75, 3: 0.70}), Thresholds(stalled_tolerance=0.05), NOW_MS)
    assert found is not None and found.epochs == (1, 2, 3)


def test_stalled_without_a_window_count_does_not_widen_the_tolerance():
    assert stalled(run(val_accuracy={1: 0.5, 2: 0.75, 3: 0.5}), DEFAULT, NOW_MS) is None
    assert stalled(run(val_accuracy={1: 0.5, 2: 0.5 + 0.002, 3: 0.5}), DEFAULT, NOW_MS) is None


@pytest.mark.parametrize(("accuracy", "epochs"), [
    ({1: 0.25, 2: 0.5, 3: 0.5}, None),             # only the last two of three needed epochs are flat
    ({1: 0.5, 2: 0.5, 4: 0.5}, None),              # a missing epoch breaks the stretch
    ({1: 0.5, 3: 0.5, 4: 0.5, 5: 0.5}, (3, 4, 5)),  # ... at its start
    ({1: 0.5, 2: 0.5, 3: 0.5, 5: 0.5}, (1, 2, 3)),  # ... at its end
    ({1: 0.5, 2: NAN, 3: 0.5, 4: 0.5}, None),       # a NaN epoch is no value, hence a gap
    ({1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5, 5: 0.25}, (1, 2, 3, 4)),
])
def test_stalled_needs_consecutive_epochs(accuracy, epochs):
    found = stalled(run(val_accuracy=accuracy), DEFAULT, NOW_MS)
    assert (found.epochs if found else None) == epochs


def test_stalled_epochs_threshold_is_the_stretch_length():
    h = run(val_accuracy={1: 0.25, 2: 0.5, 3: 0.5, 4: 0.5})
    assert stalled(h, Thresholds(stalled_epochs=4), NOW_MS) is None
    assert stalled(h, Thresholds(stalled_epochs=3), NOW_MS).evidence.endswith("threshold 3 epochs)")
    assert stalled(h, Thresholds(stalled_epochs=2), NOW_MS).epochs == (2, 3, 4)


# ---- oscillating --------------------------------------------------------------------------------------------------

def test_oscillating_finding_in_full():
    # Falls: 1->2 of 50 pts (floor at epoch 2's 64 windows, mean 0.5: 12.5 pts, in; the largest), 3->4 of 25 pts
    # (floor at 64 windows, mean 0.75: 10.8 pts, in), 4->5 of 3.125 pts (under the 5-pt threshold), 5->6 of 6.25 pts
    # (over the threshold but under its floor at 100 windows, mean 0.5625: 9.9 pts). 2->3 is a rise.
    h = run(val_accuracy={1: 0.75, 2: 0.25, 3: 0.875, 4: 0.625, 5: 0.59375, 6: 0.53125},
            val_windows=windows(64, 2, 3, 4) | {1: 16.0, 5: 100.0, 6: 100.0})
    assert oscillating(h, DEFAULT, NOW_MS) == Finding(
        "oscillating", "val_accuracy fell 50.00 pts from 75.00% at epoch 1 to 25.00% at epoch 2 (threshold: a fall "
        "of more than 5.00 pts; noise floor 12.50 pts = 2 SE at 64 val windows; 2 such drops)", (1, 2, 3, 4),
        {"drop": 0.5, "from_epoch": 1, "to_epoch": 2, "drops": 2, "threshold": 0.05, "noise_floor": 0.125,
         "windows_val": 64})


def test_oscillating_finding_in_full_without_a_window_count():
    h = run(val_accuracy={1: 0.25, 2: 0.5, 3: 0.25, 4: 0.375})
    assert oscillating(h, Thresholds(noise_z=1.5), NOW_MS) == Finding(
        "oscillating", "val_accuracy fell 25.00 pts from 50.00% at epoch 2 to 25.00% at epoch 3 (threshold: a fall "
        "of more than 5.00 pts; no noise floor: val_windows unknown; 1 such drop)", (2, 3),
        {"drop": 0.25, "from_epoch": 2, "to_epoch": 3, "drops": 1, "threshold": 0.05, "noise_floor": None,
         "windows_val": None})


def test_oscillating_noise_floor_scales_with_z():
    # 1.5 SE at 64 windows and a mean of 0.5: 1.5 * 0.0625 = 9.375 pts
    h = run(val_accuracy={1: 0.625, 2: 0.375}, val_windows=windows(64, 1, 2))
    found = oscillating(h, Thresholds(noise_z=1.5), NOW_MS)
    assert found.values["noise_floor"] == 0.09375
    assert "noise floor 9.38 pts = 1.5 SE at 64 val windows; 1 such drop)" in found.evidence


@pytest.mark.parametrize(("after", "fires"), [
    (0.5, False),              # a fall of exactly the 25-pt threshold
    (0.5 - 2e-10, False),      # within the rounding allowance
    (0.5 - 1e-8, True),        # just more
    (0.5 + 1e-8, False),       # just less
])
def test_oscillating_boundary_at_the_drop_threshold(after, fires):
    h = run(val_accuracy={1: 0.75, 2: after})
    assert (oscillating(h, Thresholds(oscillation_drop=0.25), NOW_MS) is not None) is fires


def test_oscillating_a_fall_of_exactly_threshold_plus_the_allowance_is_no_fall():
    assert oscillating(run(val_accuracy={1: 0.25 + 1e-9, 2: 0.0}), Thresholds(oscillation_drop=0.25), NOW_MS) is None


def test_oscillating_a_fall_of_exactly_noise_floor_plus_the_allowance_is_noise():
    # 1.0 -> 0.0 at one window: floor z * sqrt(0.5 * 0.5 / 1) = z / 2, so this z puts the floor plus the allowance
    # exactly on the 100-pt fall
    z = 2 * (1.0 - 1e-9)
    assert z / 2 + 1e-9 == 1.0
    h = run(val_accuracy={1: 1.0, 2: 0.0}, val_windows=windows(1, 1, 2))
    assert oscillating(h, Thresholds(noise_z=z), NOW_MS) is None
    assert oscillating(h, Thresholds(noise_z=z - 1e-6), NOW_MS) is not None


def test_oscillating_rounding_noise_of_decimal_accuracies_is_no_fall():
    # 0.75 - 0.70 = 0.05000000000000004, printed as a 5.00-pt fall: not more than 5 pts
    assert oscillating(run(val_accuracy={1: 0.75, 2: 0.70}), DEFAULT, NOW_MS) is None
    assert oscillating(run(val_accuracy={1: 0.75, 2: 0.6999}), DEFAULT, NOW_MS) is not None


@pytest.mark.parametrize(("before", "after", "fires"), [
    (0.625, 0.375, False),                 # a 25-pt fall at mean 0.5 and 16 windows: floor 2 * 0.125 = 25 pts
    (0.625 + 1e-10, 0.375 - 1e-10, False),  # within the rounding allowance
    (0.625 + 1e-8, 0.375 - 1e-8, True),    # just more than the floor
    (0.625 - 1e-8, 0.375 + 1e-8, False),   # just less
])
def test_oscillating_boundary_at_the_noise_floor(before, after, fires):
    h = run(val_accuracy={1: before, 2: after}, val_windows=windows(16, 1, 2))
    assert (oscillating(h, DEFAULT, NOW_MS) is not None) is fires


# ---- val_test_divergence ------------------------------------------------------------------------------------------

def test_val_test_divergence_finding_in_full():
    # Epoch 1: no gap. Epoch 2: 50 pts, floor 2 * sqrt(2 * 0.1875 / 24) = 25 pts: over, the worst. Epoch 3:
    # 37.5 pts (test above val), floor 24.5 pts: over. Epoch 4: 12.5 pts, floor 28.4 pts: not over.
    # Epochs 5 (val only) and 6 (test only) are not compared; their window counts (1000) are the latest ones.
    h = run(val_accuracy={1: 0.5, 2: 0.75, 3: 0.5, 4: 0.5, 5: 0.5},
            test_accuracy={1: 0.5, 2: 0.25, 3: 0.875, 4: 0.375, 6: 0.5},
            val_windows=windows(24, 1, 2, 3, 4) | {5: 1000.0}, test_windows=windows(24, 1, 2, 3, 4) | {6: 1000.0})
    assert val_test_divergence(h, DEFAULT, NOW_MS) == Finding(
        "val_test_divergence", "val_accuracy 75.00% vs test_accuracy 25.00% at epoch 2: gap 50.00 pts > 5.00 pts "
        "(noise floor 25.00 pts = 2 SE at 24 val / 24 test windows; over at epochs 2-3)", (2, 3),
        {"epoch": 2, "val_accuracy": 0.75, "test_accuracy": 0.25, "gap": 0.5, "threshold": 0.05, "noise_floor": 0.25,
         "windows_val": 24, "windows_test": 24})


def test_val_test_divergence_finding_in_full_without_window_counts():
    h = run(val_accuracy={1: 0.5, 2: 0.25, 3: 0.5}, test_accuracy={1: 0.5, 2: 0.5, 3: 0.875},
            val_windows=windows(24, 1, 2, 3))  # test count unknown: no floor
    assert val_test_divergence(h, DEFAULT, NOW_MS) == Finding(
        "val_test_divergence", "val_accuracy 50.00% vs test_accuracy 87.50% at epoch 3: gap 37.50 pts > 5.00 pts "
        "(no noise floor: val_windows or test_windows unknown; over at epochs 2-3)", (2, 3),
        {"epoch": 3, "val_accuracy": 0.5, "test_accuracy": 0.875, "gap": 0.375, "threshold": 0.05,
         "noise_floor": None, "windows_val": 24, "windows_test": None})


@pytest.mark.parametrize(("test", "fires"), [
    (0.5, False),          # a gap of exactly the 25-pt threshold
    (0.5 - 2e-10, False),  # within the rounding allowance
    (0.5 - 1e-8, True),    # just more
    (0.5 + 1e-8, False),   # just less
    (1.0, False),          # 25 pts the other way
    (1.0 - 1e-8, False),
])
def test_val_test_divergence_boundary_at_the_gap_threshold(test, fires):
    h = run(val_accuracy={1: 0.75}, test_accuracy={1: test})
    assert (val_test_divergence(h, Thresholds(divergence_gap=0.25), NOW_MS) is not None) is fires


def test_val_test_divergence_a_gap_of_exactly_threshold_plus_the_allowance_is_no_gap():
    h = run(val_accuracy={1: 0.25 + 1e-9}, test_accuracy={1: 0.0})
    assert val_test_divergence(h, Thresholds(divergence_gap=0.25), NOW_MS) is None


def test_val_test_divergence_a_gap_of_exactly_noise_floor_plus_the_allowance_is_noise():
    # val 0.5 over one window, test 0.0 (no variance): floor z * sqrt(0.25 / 1 + 0) = z / 2, plus the allowance = gap
    z = 2 * (0.5 - 1e-9)
    assert z / 2 + 1e-9 == 0.5
    h = run(val_accuracy={1: 0.5}, test_accuracy={1: 0.0}, val_windows={1: 1.0}, test_windows={1: 1.0})
    assert val_test_divergence(h, Thresholds(noise_z=z), NOW_MS) is None
    assert val_test_divergence(h, Thresholds(noise_z=z - 1e-6), NOW_MS) is not None


def test_val_test_divergence_rounding_noise_of_decimal_accuracies_is_no_gap():
    assert val_test_divergence(run(val_accuracy={1: 0.75}, test_accuracy={1: 0.70}), DEFAULT, NOW_MS) is None


@pytest.mark.parametrize(("val", "fires"), [
    (0.75, False),          # gap 50 pts; floor 2 * sqrt(2 * 0.1875 / 6) = 50 pts
    (0.75 + 2e-10, False),  # within the rounding allowance
    (0.75 + 1e-6, True),    # just more (the floor moves by far less)
    (0.75 - 1e-6, False),   # just less
])
def test_val_test_divergence_boundary_at_the_noise_floor(val, fires):
    h = run(val_accuracy={1: val}, test_accuracy={1: 0.25}, val_windows={1: 6.0}, test_windows={1: 6.0})
    assert (val_test_divergence(h, DEFAULT, NOW_MS) is not None) is fires


# ---- val_loss_not_improving ---------------------------------------------------------------------------------------

def test_val_loss_not_improving_finding_in_full():
    # Exactly 1 + 2 finite epochs (the NaN at epoch 4 is no epoch); the best later loss is 0.375 at epoch 5.
    h = run(val_loss={2: 0.25, 3: 0.5, 4: NAN, 5: 0.375})
    assert val_loss_not_improving(h, DEFAULT, NOW_MS) == Finding(
        "val_loss_not_improving", "val_loss lowest at epoch 2 (0.25); none of the 2 later epochs (3, 5) beat it "
        "(best of them 0.375 at epoch 5; threshold: at least 2 later epochs)", (2, 3, 5),
        {"first_val_loss": 0.25, "best_later_val_loss": 0.375, "later_epochs": 2, "threshold_later_epochs": 2})
    assert val_loss_not_improving(h, Thresholds(not_improving_min_later_epochs=3), NOW_MS) is None


def test_val_loss_not_improving_a_tie_with_the_first_epoch_is_no_improvement():
    h = run(val_loss={1: 0.5, 2: 0.75, 3: 0.625, 4: 0.5})
    assert val_loss_not_improving(h, Thresholds(not_improving_min_later_epochs=1), NOW_MS) == Finding(
        "val_loss_not_improving", "val_loss lowest at epoch 1 (0.5); none of the 3 later epochs (2-4) beat it "
        "(best of them 0.5 at epoch 4; threshold: at least 1 later epochs)", (1, 2, 3, 4),
        {"first_val_loss": 0.5, "best_later_val_loss": 0.5, "later_epochs": 3, "threshold_later_epochs": 1})


@pytest.mark.parametrize("val_loss", [
    {1: 0.5, 2: 0.75},                       # only one later epoch
    {1: 0.5, 2: 0.75, 3: 0.5 - 1e-9},        # the last epoch beats the first, by a hair
    {1: 0.5, 2: 0.25, 3: 0.75},              # the second epoch beats it
])
def test_val_loss_not_improving_does_not_fire(val_loss):
    assert val_loss_not_improving(run(val_loss=val_loss), DEFAULT, NOW_MS) is None


# ---- vram_over_budget ---------------------------------------------------------------------------------------------

def test_vram_over_budget_finding_in_full():
    # Peak 6.5 GB at epoch 3; epoch 2 sits exactly on the budget (not over), epoch 4 is over, epoch 5 is NaN.
    h = run(params={"vram_budget_gb": "5"}, vram_peak_gb={1: 4.0, 2: 5.0, 3: 6.5, 4: 5.25, 5: NAN})
    assert vram_over_budget(h, DEFAULT, NOW_MS) == Finding(
        "vram_over_budget", "vram_peak_gb 6.50 GB at epoch 3 > budget 5.00 GB (param vram_budget_gb; over at "
        "epochs 3-4)", (3, 4), {"peak_gb": 6.5, "epoch": 3, "budget_gb": 5.0})


@pytest.mark.parametrize(("peak", "fires"), [(5.0, False), (5.0 - 1e-9, False), (5.0 + 1e-9, True)])
def test_vram_over_budget_boundary(peak, fires):
    h = run(params={"vram_budget_gb": "5.0"}, vram_peak_gb={1: 1.0, 2: peak})
    assert (vram_over_budget(h, DEFAULT, NOW_MS) is not None) is fires


@pytest.mark.parametrize("budget", ["nan", "inf", "None"])
def test_vram_over_budget_needs_a_finite_budget(budget):
    assert vram_over_budget(run(params={"vram_budget_gb": budget}, vram_peak_gb={1: 9.0}), DEFAULT, NOW_MS) is None


def test_vram_over_budget_needs_a_finite_peak():
    assert vram_over_budget(run(params={"vram_budget_gb": "5"}, vram_peak_gb={1: NAN}), DEFAULT, NOW_MS) is None
    assert vram_over_budget(run(params={"vram_budget_gb": "5"}), DEFAULT, NOW_MS) is None


# ---- class_collapse -----------------------------------------------------------------------------------------------

def test_class_collapse_all_rain_finding_in_full():
    # The last finite epoch is 3 (epoch 4 is NaN); the earlier 0.5 is not judged.
    h = run(val_pred_rain_fraction={1: 0.5, 2: 0.0, 3: 0.995, 4: NAN})
    assert class_collapse(h, DEFAULT, NOW_MS) == Finding(
        "class_collapse", "val_pred_rain_fraction 99.50% at final epoch 3: predicts rain for almost every window "
        "(threshold >= 99.00% or <= 1.00%)", (3,), {"val_pred_rain_fraction": 0.995, "threshold": 0.99})


@pytest.mark.parametrize(("fraction", "what"), [
    (0.75, "rain"), (0.75 - 2e-10, "rain"), (0.75 - 1e-8, None), (0.75 + 1e-8, "rain"),
    (0.25, "no rain"), (0.25 + 2e-10, "no rain"), (0.25 + 1e-8, None), (0.25 - 1e-8, "no rain"),
    (0.75 - 1e-9, "rain"), (0.25 + 1e-9, "no rain"),  # exactly at the threshold less / plus the allowance
    (0.5, None), (1.0, "rain"), (0.0, "no rain"),
])
def test_class_collapse_boundary(fraction, what):
    found = class_collapse(run(val_pred_rain_fraction={1: fraction}), Thresholds(collapse_fraction=0.75), NOW_MS)
    assert (found.evidence.split("predicts ")[1].removesuffix(" for almost every window (threshold >= 75.00% or "
                                                              "<= 25.00%)") if found else None) == what


def test_class_collapse_at_the_default_thresholds():
    # 1 - 0.99 = 0.010000000000000009: a fraction of 0.01 is still "no rain"
    assert class_collapse(run(val_pred_rain_fraction={1: 0.99}), DEFAULT, NOW_MS) is not None
    assert class_collapse(run(val_pred_rain_fraction={1: 0.01}), DEFAULT, NOW_MS) is not None
    assert class_collapse(run(val_pred_rain_fraction={1: 0.98}), DEFAULT, NOW_MS) is None
    assert class_collapse(run(val_pred_rain_fraction={1: 0.02}), DEFAULT, NOW_MS) is None
    assert class_collapse(run(val_pred_rain_fraction={1: NAN}), DEFAULT, NOW_MS) is None


# ---- non_finite_loss ----------------------------------------------------------------------------------------------

def test_non_finite_loss_names_the_earliest_epoch_whatever_the_metric():
    # MLflow's stand-in for +inf in val_loss at epoch 1 comes before train_loss's -inf at epoch 2
    h = run(train_loss={1: 0.5, 2: -math.inf}, val_loss={1: MLFLOW_INF, 2: 0.5})
    assert non_finite_loss(h, DEFAULT, NOW_MS) == Finding(
        "non_finite_loss", "val_loss is inf at epoch 1 (first non-finite loss; 2 non-finite values in "
        "train_loss/val_loss at epochs 1-2)", (1, 2), {"metric": "val_loss", "epoch": 1, "value": "inf", "count": 2})


def test_non_finite_loss_at_the_same_epoch_names_train_loss_first():
    h = run(train_loss={3: NAN}, val_loss={3: -MLFLOW_INF})
    assert non_finite_loss(h, DEFAULT, NOW_MS) == Finding(
        "non_finite_loss", "train_loss is nan at epoch 3 (first non-finite loss; 2 non-finite values in "
        "train_loss/val_loss at epoch 3)", (3,), {"metric": "train_loss", "epoch": 3, "value": "nan", "count": 2})
    assert non_finite_loss(run(train_loss={1: 1e300}, val_loss={1: -1e300}), DEFAULT, NOW_MS) is None


# ---- dead_run -----------------------------------------------------------------------------------------------------

def test_dead_run_finding_in_full():
    # epoch_time_s 0 and -1 are no measurement; the mean of 0.5 s and 1199.5 s is 600 s; limit max(3 x 600, 600) s.
    h = run(status="RUNNING", last_update_ms=NOW_MS - 1_800_001, val_accuracy={1: 0.5, 2: 0.5},
            epoch_time_s={1: 0.0, 2: 0.5, 3: 1199.5, 4: -1.0})
    assert dead_run(h, DEFAULT, NOW_MS) == Finding(
        "dead_run", "status RUNNING but the last epoch (2) was logged 30.0 min ago (limit 30.0 min = max(3 x mean "
        "epoch_time_s 10.0 min, 10.0 min))", (2,),
        {"silent_s": 1800.001, "limit_s": 1800.0, "mean_epoch_time_s": 600.0})
    assert dead_run(run(status="RUNNING", last_update_ms=NOW_MS - 1_800_000, val_accuracy={1: 0.5, 2: 0.5},
                        epoch_time_s={1: 0.0, 2: 0.5, 3: 1199.5}), DEFAULT, NOW_MS) is None


def test_dead_run_floor_finding_in_full():
    # mean epoch 4 s x 2.5 = 10 s < the 60-s floor; no validation epoch yet, only a train_loss
    h = run(status="RUNNING", last_update_ms=NOW_MS - 60_500, train_loss={1: 0.5}, epoch_time_s={1: 4.0})
    assert dead_run(h, Thresholds(dead_factor=2.5, dead_min_seconds=60.0), NOW_MS) == Finding(
        "dead_run", "status RUNNING but the last epoch metric was logged 60 s ago (limit 60 s = max(2.5 x mean "
        "epoch_time_s 4.0 s, 60 s))", (), {"silent_s": 60.5, "limit_s": 60.0, "mean_epoch_time_s": 4.0})


def test_dead_run_without_epoch_times_finding_in_full():
    h = run(status="RUNNING", last_update_ms=NOW_MS - 600_001, val_loss={1: 0.5, 2: 0.5, 3: 0.25})
    assert dead_run(h, DEFAULT, NOW_MS) == Finding(
        "dead_run", "status RUNNING but the last epoch (3) was logged 10.0 min ago (limit 10.0 min = dead_min_seconds; "
        "no epoch_time_s logged)", (3,), {"silent_s": 600.001, "limit_s": 600.0, "mean_epoch_time_s": None})


@pytest.mark.parametrize(("silent_ms", "fires"), [(1_200_000, False), (1_199_999, False), (1_200_001, True)])
def test_dead_run_boundary_at_factor_times_mean_epoch(silent_ms, fires):
    # limit = max(2 x 600 s, 0 s) = 1200 s
    h = run(status="RUNNING", last_update_ms=NOW_MS - silent_ms, val_loss={1: 0.5}, epoch_time_s={1: 600.0})
    assert (dead_run(h, Thresholds(dead_factor=2.0, dead_min_seconds=0.0), NOW_MS) is not None) is fires


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED", "running"])
def test_dead_run_judges_running_runs_only(status):
    h = run(status=status, last_update_ms=NOW_MS - 10**9, val_loss={1: 0.5})
    assert dead_run(h, DEFAULT, NOW_MS) is None
    assert dead_run(run(status="RUNNING", last_update_ms=None), DEFAULT, NOW_MS) is None


# ---- noise_floor, diagnose, tags, flags ---------------------------------------------------------------------------

def test_noise_floor_by_hand():
    assert noise_floor(2.0, (0.5, 64)) == 0.125
    assert noise_floor(2.0, (0.5, 1)) == 1.0                      # a single window is a sample
    assert noise_floor(2.0, (0.75, 24), (0.25, 24)) == 0.25
    assert noise_floor(2.0, (0.75, 24), (0.5, 16)) == pytest.approx(2 * math.sqrt(0.1875 / 24 + 0.25 / 16))
    assert noise_floor(0.0, (0.5, 64)) == 0.0
    assert noise_floor(2.0, (0.5, 0)) is None
    assert noise_floor(2.0, (0.5, None)) is None
    assert noise_floor(2.0, (0.5, 64), (0.5, None)) is None


def test_diagnose_appends_the_reading_notes_of_every_metric_the_rule_used():
    h = run(notes={"val_accuracy": "val read as /100", "test_accuracy": "test read as /100", "val_loss": "unused"},
            val_accuracy={1: 0.75}, test_accuracy={1: 0.5})
    assert diagnose(h, DEFAULT, NOW_MS) == [Finding(
        "val_test_divergence", "val_accuracy 75.00% vs test_accuracy 50.00% at epoch 1: gap 25.00 pts > 5.00 pts "
        "(no noise floor: val_windows or test_windows unknown; over at epoch 1) [val read as /100; test read as /100]",
        (1,), {"epoch": 1, "val_accuracy": 0.75, "test_accuracy": 0.5, "gap": 0.25, "threshold": 0.05,
               "noise_floor": None, "windows_val": None, "windows_test": None})]


def test_diagnose_runs_the_named_rules_in_rules_order_and_none_for_an_empty_list():
    h = run(val_accuracy={1: 0.5, 2: 0.5, 3: 0.5}, val_pred_rain_fraction={3: 1.0}, val_loss={1: NAN})
    assert [f.flag for f in diagnose(h, DEFAULT, NOW_MS)] == ["stalled", "class_collapse", "non_finite_loss"]
    assert [f.flag for f in diagnose(h, DEFAULT, NOW_MS, only=["non_finite_loss,stalled"])] == \
        ["stalled", "non_finite_loss"]
    assert diagnose(h, DEFAULT, NOW_MS, only=[]) == []


def test_diagnose_judges_at_the_given_time():
    # NOW_MS (October 2025) is in the past: judged at the clock's time instead, this run would be long dead
    h = run(status="RUNNING", last_update_ms=NOW_MS - 1_000, val_loss={1: 0.5})
    assert diagnose(h, DEFAULT, NOW_MS) == []
    assert [f.flag for f in diagnose(h, DEFAULT, NOW_MS + 601_000)] == ["dead_run"]


def test_diagnose_defaults_to_the_current_time():
    now_ms = time.time() * 1000
    recent = run(status="RUNNING", last_update_ms=int(now_ms - 1_000), val_loss={1: 0.5})
    silent = run(status="RUNNING", last_update_ms=int(now_ms - 1_000_000), val_loss={1: 0.5})
    assert [f.flag for f in diagnose(recent)] == []
    assert [f.flag for f in diagnose(silent)] == ["dead_run"]
    assert 999 < diagnose(silent)[0].values["silent_s"] < 1_100


def test_diagnosis_tag_joins_sorted_distinct_flags():
    found = [Finding("vram_over_budget", "", (), {}), Finding("dead_run", "", (), {}),
             Finding("dead_run", "", (), {})]
    assert diagnosis_tag(found) == "dead_run,vram_over_budget"
    assert diagnosis_tag([]) == "ok"


def test_validate_flags_strips_items_and_names_the_allowed_ones():
    assert validate_flags([" stalled ,, dead_run", "", "oscillating"]) == ("stalled", "dead_run", "oscillating")
    with pytest.raises(UserError) as raised:
        validate_flags(["stalled,Stalled"])
    assert str(raised.value) == ("unknown diagnosis flag 'Stalled'; allowed: stalled, oscillating, "
                                 "val_test_divergence, val_loss_not_improving, vram_over_budget, class_collapse, "
                                 "non_finite_loss, dead_run")


def test_skipped_reads_params_and_treats_an_empty_metric_as_missing():
    with_budget = run(params={"vram_budget_gb": "5"}, vram_peak_gb={1: 4.0}, val_accuracy={}, train_loss={1: 0.5})
    assert skipped(with_budget) == {
        "stalled": "val_accuracy", "oscillating": "val_accuracy", "val_test_divergence": "val_accuracy, test_accuracy",
        "val_loss_not_improving": "val_loss", "class_collapse": "val_pred_rain_fraction"}
    assert skipped(run(params={"vram_budget_gb": "big"}, val_loss={1: 0.5}), only=["vram_over_budget, dead_run"]) \
        == {"vram_over_budget": "vram_peak_gb, param vram_budget_gb"}
