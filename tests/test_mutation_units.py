"""Unit tests written against the surviving mutants of `mutmut run` (docs/testing.md): each pins a behaviour of a
central pure module with values computed by hand or by a naive reference in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rain_mlflow.train.losses import FocalLoss, balanced_class_weights, build_loss
from rain_mlflow.train.metrics import confusion, split_metrics

pytestmark = pytest.mark.unit

# ---- train/losses.py ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_no_rain, n_rain, expected", [(30, 10, [40 / 60, 40 / 20]), (0, 4, [4 / 2, 4 / 8]),
                                                          (4, 0, [4 / 8, 4 / 2])])
def test_balanced_weights_by_hand(n_no_rain, n_rain, expected):
    # n / (2 * n_class); an empty class counts as 1 so its weight stays finite
    torch.testing.assert_close(balanced_class_weights(n_no_rain, n_rain), torch.tensor(expected))


def test_each_loss_kind_carries_the_weights_it_names():
    weights = torch.tensor([40 / 60, 40 / 20])
    focal, weighted, plain = (build_loss(kind, 2.0, 30, 10) for kind in ("focal", "weighted_ce", "ce"))
    assert isinstance(focal, FocalLoss) and focal.gamma == 2.0
    torch.testing.assert_close(focal.weight, weights)
    assert type(weighted) is torch.nn.CrossEntropyLoss and type(plain) is torch.nn.CrossEntropyLoss
    torch.testing.assert_close(weighted.weight, weights)
    assert plain.weight is None


def test_focal_loss_value_by_hand():
    # p_true = 0.5 for both windows: loss = -(1 - 0.5)^2 * ln 0.5 each; weights 1 and 3 average to the same value
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    by_hand = 0.25 * math.log(2)
    assert float(FocalLoss(2.0)(logits, target)) == pytest.approx(by_hand)
    assert float(FocalLoss(2.0, torch.tensor([1.0, 3.0]))(logits, target)) == pytest.approx(by_hand)
    # p_true = e^2 / (e^2 + 1) for one window: (1 - p)^1 * -ln p
    p = math.exp(2) / (math.exp(2) + 1)
    assert float(FocalLoss(1.0)(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))) == pytest.approx((1 - p) * -math.log(p))


def test_a_loss_keeps_no_state_in_checkpoints():
    # the class weights come from the training split's counts, never from a checkpoint
    assert FocalLoss(2.0, torch.tensor([1.0, 3.0])).state_dict() == {}


# ---- train/metrics.py -----------------------------------------------------------------------------------------

def test_split_metrics_by_hand():
    labels = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    predicted = np.array([1, 0, 0, 1, 1, 0, 0, 0, 0, 1])   # tp 2, fp 2, fn 2, tn 4
    m = split_metrics("test", labels, predicted, 0.25)
    precision, recall = 2 / 4, 2 / 4
    mcc = (2 * 4 - 2 * 2) / math.sqrt(4 * 4 * 6 * 6)
    assert m == pytest.approx({"test_loss": 0.25, "test_accuracy": 6 / 10, "test_precision": precision,
                               "test_recall": recall, "test_f1": 2 * precision * recall / (precision + recall),
                               "test_mcc": mcc, "test_windows": 10})
    assert confusion(labels, predicted) == [[4, 2], [2, 2]]


def test_a_model_that_never_predicts_rain_scores_zero_not_one():
    labels = np.array([0, 1, 0, 1])
    m = split_metrics("val", labels, np.zeros(4, dtype=int), 0.0)
    assert (m["val_precision"], m["val_recall"], m["val_f1"], m["val_mcc"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["val_accuracy"] == 0.5
    assert confusion(np.zeros(3, dtype=int), np.zeros(3, dtype=int)) == [[3, 0], [0, 0]]   # rain row kept


# ---- diagnostics/rules.py: whole findings, written out by hand ---------------------------------------------------

def test_class_collapse_finding_in_full():
    from rain_mlflow.diagnostics.history import RunHistory
    from rain_mlflow.diagnostics.rules import Finding, class_collapse
    from rain_mlflow.diagnostics.thresholds import Thresholds

    h = RunHistory(run_id="r", run_name="r", status="FINISHED", params={},
                   metrics={"val_pred_rain_fraction": {1: 0.5, 2: 0.01}}, last_update_ms=None)
    assert class_collapse(h, Thresholds(), 0) == Finding(
        "class_collapse", "val_pred_rain_fraction 1.00% at final epoch 2: predicts no rain for almost every window "
        "(threshold >= 99.00% or <= 1.00%)", (2,), {"val_pred_rain_fraction": 0.01, "threshold": 0.99})


def test_non_finite_loss_finding_in_full():
    from rain_mlflow.diagnostics.history import RunHistory
    from rain_mlflow.diagnostics.rules import Finding, non_finite_loss
    from rain_mlflow.diagnostics.thresholds import Thresholds

    nan = float("nan")
    h = RunHistory(run_id="r", run_name="r", status="FINISHED", params={},
                   metrics={"train_loss": {1: 0.5, 2: 0.4, 3: nan}, "val_loss": {1: 0.6, 2: nan, 3: nan}},
                   last_update_ms=None)
    assert non_finite_loss(h, Thresholds(), 0) == Finding(
        "non_finite_loss", "val_loss is nan at epoch 2 (first non-finite loss; 3 non-finite values in "
        "train_loss/val_loss at epochs 2-3)", (2, 3), {"metric": "val_loss", "epoch": 2, "value": "nan", "count": 3})
    one = RunHistory(run_id="r", run_name="r", status="FINISHED", params={},
                     metrics={"train_loss": {1: float("inf")}}, last_update_ms=None)
    assert non_finite_loss(one, Thresholds(), 0).evidence == \
        "train_loss is inf at epoch 1 (first non-finite loss; 1 non-finite value in train_loss/val_loss at epoch 1)"
