"""`promote`: put the best healthy run's model in the Model Registry under an alias.

Choice: among the experiment's runs that are FINISHED, carry no diagnosis flag and logged a model, the one with
the best `--metric` at its own best epoch (highest, or lowest for a loss). `--metric` must be a validation
metric: choosing on `test_*` would select on the test set (`--allow-test-metric` allows it). The rules are
re-applied now, from the histories, with the thresholds (and metric map) each run's last diagnosis stored in
its tags, so a verdict `compare --<threshold>` gave stands; threshold options given to `promote` override them.
Everything is decided before anything is written: a promote that ends with a user error changes nothing. Then
the diagnosis tags are brought up to date (so the UI agrees with the decision), the run's LoggedModel becomes a
new version of `--model-name` (unless a version from that run already exists: promoting twice creates nothing
new), the alias points at it, and the version carries the run's metrics, diagnosis and data digest as tags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from rain_mlflow.compare.command import write_diagnosis_tags
from rain_mlflow.compare.histories import HISTORY_METRICS
from rain_mlflow.compare.reader import read_runs
from rain_mlflow.compare.report import RunReport, diagnose_runs
from rain_mlflow.diagnostics.history import RunHistory
from rain_mlflow.diagnostics.tags import METRIC_MAP_TAG
from rain_mlflow.diagnostics.thresholds import Thresholds, THRESHOLDS_TAG
from rain_mlflow.errors import UserError
from rain_mlflow.tracking import ui
from rain_mlflow.tracking.experiments import connect, experiment_name
from rain_mlflow.tracking.readers import RawRun
from rain_mlflow.tracking.store import tracking_uri, use_store
from rain_mlflow.tracking.tracker import Tracker

VERSION_METRICS = ("val_f1", "val_accuracy", "val_mcc", "val_loss", "test_f1", "test_accuracy", "test_mcc")


@dataclass(frozen=True)
class Candidate:
    run_id: str
    run_name: str
    preset: str
    status: str
    flags: tuple[str, ...]
    model_id: str | None
    best_epoch: int | None
    value: float | None        # the metric at the run's best epoch
    at_best: dict[str, float]  # VERSION_METRICS at the best epoch

    def problem(self, allow_flagged: bool) -> str | None:
        if self.status != "FINISHED":
            return f"status {self.status}"
        if self.flags and not allow_flagged:
            return "flagged " + ",".join(self.flags)
        if not self.model_id:
            return "no logged model"
        if self.value is None or not math.isfinite(self.value):
            return "metric missing at its best epoch"
        return None


def candidates(uri: str, experiment: str, metric: str,
               overrides: dict[str, Any] | None = None) -> tuple[list[Candidate], list[RunReport]]:
    """Every diagnosable run of the experiment as a Candidate, and the diagnosis reports (tags not written)."""
    wanted = tuple(dict.fromkeys((*HISTORY_METRICS, metric, *VERSION_METRICS)))
    reads = read_runs(uri, experiment=experiment, metric_map=_stored_map, wanted=wanted)
    reports = diagnose_runs(reads, lambda h: _stored_thresholds(h, overrides or {}), int(time.time() * 1000))
    out = []
    for r in reports:
        h = r.history
        out.append(Candidate(
            run_id=h.run_id, run_name=h.run_name, preset=h.tags.get("preset", ""), status=h.status,
            flags=tuple(r.flags), model_id=h.tags.get("model_id"), best_epoch=r.best_epoch,
            value=h.value_at(metric, r.best_epoch),
            at_best={k: v for k in VERSION_METRICS if (v := h.value_at(k, r.best_epoch)) is not None}))
    return out, reports


def _stored_thresholds(history: RunHistory, overrides: dict[str, Any]) -> Thresholds:
    """The thresholds of the run's last diagnosis (defaults when it has none), with `overrides` on top."""
    stored = history.tags.get(THRESHOLDS_TAG)
    base = Thresholds.from_json(stored, f"run {history.run_id} tag {THRESHOLDS_TAG}") if stored else Thresholds()
    return dataclasses.replace(base, **overrides) if overrides else base


def _stored_map(raw: RawRun) -> dict[str, str]:
    """The metric map the run's last diagnosis used (tag `diagnosis.metric_map`), so its names read the same."""
    text = raw.tags.get(METRIC_MAP_TAG)
    if not text:
        return {}
    try:
        stored = json.loads(text)
    except ValueError:
        stored = None
    if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
        raise UserError(f"run {raw.run_id} tag {METRIC_MAP_TAG} must be a JSON object of metric names; "
                        f"got {text[:200]!r}")
    return stored


def check_metric(metric: str, allow_test_metric: bool) -> None:
    """`--metric` names a validation metric (val_*), or a test one (test_*) with --allow-test-metric."""
    if metric.startswith("val_") or (allow_test_metric and metric.startswith("test_")):
        return
    why = ("choosing a model on the test set makes its test score optimistic; pass --allow-test-metric to do it "
           "anyway" if metric.startswith("test_") else "runs are chosen on their validation scores")
    raise UserError(f"--metric must be a validation metric (val_f1, val_accuracy, val_mcc, val_loss, ...); got "
                    f"{metric!r} ({why})")


def choose(pool: list[Candidate], metric: str, allow_flagged: bool) -> Candidate | None:
    eligible = [c for c in pool if c.problem(allow_flagged) is None]
    if not eligible:
        return None
    lower_is_better = metric.endswith("loss")
    return sorted(eligible, key=lambda c: (c.value if lower_is_better else -c.value, c.run_id))[0]


def register(client: MlflowClient, chosen: Candidate, model_name: str, alias: str, metric: str,
             data_digest: str | None) -> tuple[str, bool]:
    """Register (or reuse) the version of `chosen`, set the alias and the version tags; (version, created)."""
    existing = [v for v in client.search_model_versions(f"name='{model_name}'") if v.run_id == chosen.run_id]
    created = not existing
    if existing:
        version = str(max(int(v.version) for v in existing))
    else:
        version = str(mlflow.register_model(f"models:/{chosen.model_id}", model_name).version)
    client.set_registered_model_alias(model_name, alias, version)
    tags = {f"metric.{k}": f"{v:.6g}" for k, v in chosen.at_best.items()}
    tags.update({"run_id": chosen.run_id, "preset": chosen.preset, "best_epoch": str(chosen.best_epoch),
                 "diagnosis": ",".join(chosen.flags) or "ok", "data_digest": data_digest or "",
                 "promoted_by_metric": metric})
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return version, created


def run_promote(experiment: str | None, model_name: str, metric: str, alias: str, allow_flagged: bool,
                run_id: str | None = None, allow_test_metric: bool = False,
                threshold_overrides: dict[str, Any] | None = None, study: str | None = None) -> dict[str, Any]:
    """Choose, register and alias (module docstring); the result, with the `lines` the command prints."""
    check_metric(metric, allow_test_metric)
    if threshold_overrides:
        Thresholds(**threshold_overrides)  # a bad value fails here, before anything is read or written
    use_store()
    client = MlflowClient()
    name = experiment_name(experiment)
    found = client.get_experiment_by_name(name)
    if found is None:
        raise UserError(f"experiment {name!r} not found; train a run first or pass --experiment")
    pool, reports = candidates(tracking_uri(), name, metric, threshold_overrides)
    if run_id:
        pool = [c for c in pool if c.run_id == run_id]
        if not pool:
            raise UserError(f"run {run_id!r} is not a run of experiment {name!r} with a per-epoch history")
    if study:  # the trials of one `tune` study (tag tune.study)
        in_study = {r.history.run_id for r in reports if r.history.tags.get("tune.study") == study}
        pool = [c for c in pool if c.run_id in in_study]
        if not pool:
            raise UserError(f"study must name a `tune` study with trials in experiment {name!r}; got {study!r}")
    if not any(c.value is not None for c in pool) and pool:
        raise UserError(f"no run of experiment {name!r} logged the metric {metric!r}; "
                        "use a per-epoch metric such as val_f1, val_accuracy, val_mcc or val_loss")
    chosen = choose(pool, metric, allow_flagged)
    if chosen is None:
        raise UserError(_nothing_qualifies(name, pool, allow_flagged))
    # Decided: from here on, write.
    write_diagnosis_tags(tracking_uri(), reports)
    digest = client.get_run(chosen.run_id).data.tags.get("data_digest")
    connect(name)
    with Tracker.start("promote", run_name=f"promote {alias}") as tracker:
        version, created = register(client, chosen, model_name, alias, metric, digest)
        tracker.log_params({"model_name": model_name, "metric": metric, "alias": alias,
                            "allow_flagged": allow_flagged, "allow_test_metric": allow_test_metric,
                            **({"study": study} if study else {}),
                            **{f"threshold.{k}": v for k, v in (threshold_overrides or {}).items()}})
        tracker.set_tags({"promoted_run_id": chosen.run_id, "model_version": version})
        tracker.log_dict([_ranking_row(c, allow_flagged) for c in pool], "ranking.json")
        tracker.set_note(f"{model_name}@{alias} -> version {version} (run {chosen.run_id}, {chosen.preset}, "
                         f"{metric} {chosen.value:.4f} at epoch {chosen.best_epoch}); "
                         f"{'registered a new version' if created else 'the version already existed'}.")
        promote_run_id = tracker.run_id
    lines = _lines(pool, chosen, metric, allow_flagged, model_name, alias, version, created)
    lines += ui.links_block(tracking_uri(), [
        ("registered model", ui.model_url("", model_name)),
        (f"version {version}", ui.model_url("", model_name, version)),
        ("promoted run", ui.run_url("", found.experiment_id, chosen.run_id))]).splitlines()
    return {"run_id": promote_run_id, "promoted_run_id": chosen.run_id, "version": version, "created": created,
            "value": chosen.value, "lines": lines}


def _ranking_row(c: Candidate, allow_flagged: bool) -> dict[str, Any]:
    return {"run_id": c.run_id, "run_name": c.run_name, "preset": c.preset, "status": c.status,
            "flags": list(c.flags), "best_epoch": c.best_epoch, "value": c.value,
            "excluded": c.problem(allow_flagged)}


def _nothing_qualifies(name: str, pool: list[Candidate], allow_flagged: bool) -> str:
    if not pool:
        return f"no training run in experiment {name!r} to promote; train one first"
    reasons = "; ".join(f"{c.run_id[:8]} ({c.preset}): {c.problem(allow_flagged)}" for c in pool[:6])
    more = f" and {len(pool) - 6} more" if len(pool) > 6 else ""
    hint = "" if allow_flagged else "; pass --allow-flagged to consider flagged runs"
    return f"no run of experiment {name!r} qualifies for promotion: {reasons}{more}{hint}"


def _lines(pool: list[Candidate], chosen: Candidate, metric: str, allow_flagged: bool, model_name: str,
           alias: str, version: str, created: bool) -> list[str]:
    """The ranking, what was registered, and how to load it."""
    lines = [f"{'run':10} {'preset':16} {'status':9} {metric + ' @best':>14}  excluded because"]
    for c in pool:
        value = f"{c.value:.4f}" if c.value is not None else "-"
        mark = "  <- promoted" if c is chosen else ""
        lines.append(f"{c.run_id[:8]:10} {c.preset:16} {c.status:9} {value:>14}  "
                     f"{c.problem(allow_flagged) or ''}{mark}")
    action = "registered as new version" if created else "already registered as version"
    lines.append(f"{model_name}@{alias}: {action} {version} (run {chosen.run_id})")
    lines.append(f"load it with mlflow.pyfunc.load_model('models:/{model_name}@{alias}') or "
                 f"`rain-mlflow test --model-uri models:/{model_name}@{alias}`")
    return lines
