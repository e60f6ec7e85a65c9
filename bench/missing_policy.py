"""Missing inputs on the realistic airport record: how many windows each policy keeps, what it costs, what it scores.

Part 1 (no training, seconds): windows kept per split by `--missing mask` and `--missing exclude` at the `smoke`
window (168 steps) and at 60-day windows (1440, the `transfer` presets).
Part 2 (the dry-run estimate, a minute or two on CPU): tokens per sample, training memory and step time of the
`transfer` shape at seq_len 1440 with one indicator variable and with one per feature with gaps (each variable
adds seq_len / 96 tokens to every attention).
Part 3 (real training, ~5-20 min per variant on 2 busy cores): `smoke` on the record with `mask` + one indicator,
`mask` + per-feature indicators and `exclude`; test F1 / MCC at the best epoch next to the baselines.

    python bench/missing_policy.py                    # all three parts, 2 years, fp32
    python bench/missing_policy.py --parts 1 2        # no training
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile

VARIANTS = {"mask, one indicator": {"missing": "mask", "missing_indicators": "one"},
            "mask, per feature": {"missing": "mask", "missing_indicators": "per_feature"},
            "exclude": {"missing": "exclude"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--years", type=float, default=2.0)
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--amp", default="off", help="precision of the training runs (part 3)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="rain-missing-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    os.chdir(work)
    from rain_mlflow.synth import SynthConfig, write_synthetic

    write_synthetic("realistic.csv", SynthConfig(years=args.years, gaps="realistic"))
    print(f"record: synth --years {args.years:g} --gaps realistic ({work}/realistic.csv)", flush=True)
    if 1 in args.parts:
        windows_kept()
    if 2 in args.parts:
        indicator_cost()
    if 3 in args.parts:
        training(args.amp)


def prepared(preset: str, **overrides: str):
    from rain_mlflow.config import presets
    from rain_mlflow.data.source import load_clean
    from rain_mlflow.data.dataset import prepare, resolve

    cfg = presets.build(preset, {"data": "realistic.csv", "pretrain_model_path": "", **overrides})
    _, cleaned = load_clean(cfg.data)
    cfg = resolve(cfg, cleaned)
    return prepare(cleaned, cfg), cfg


def windows_kept() -> None:
    from rain_mlflow.errors import DataError

    print("\n1. windows kept per split (kept / candidates)")
    print(f"{'policy':22} {'seq_len':>7}  {'train':>22} {'val':>22} {'test':>22}")
    for preset, seq_len in (("smoke", 168), ("transfer", 1440)):
        for name, overrides in VARIANTS.items():
            if name == "mask, per feature":
                continue
            try:
                data, _ = prepared(preset, **overrides)
                cells = [f"{s['kept']}/{s['candidates']} ({s['kept_share']:.1%})"
                         for s in data.accounting["splits"].values()]
            except DataError as exc:  # "the train split has no usable window (...)"
                cells = [f"refused: {' '.join(str(exc).split()[:2])} split has no usable window"]
            print(f"{name:22} {seq_len:>7}  " + " ".join(f"{c:>22}" for c in cells), flush=True)


def indicator_cost() -> None:
    import torch

    from rain_mlflow.model.factory import build_classifier
    from rain_mlflow.train.estimate import estimate
    from rain_mlflow.train.precision import select_precision

    print("\n2. the transfer shape at seq_len 1440, batch 16 (dry-run estimate on this CPU, fp32)")
    for name in ("mask, one indicator", "mask, per feature"):
        data, cfg = prepared("transfer", **VARIANTS[name])
        torch.manual_seed(0)
        model = build_classifier(cfg, data.n_vars)
        est = estimate(model, data, cfg.train.batch_size, select_precision("off", torch.device("cpu")))
        print(f"{name:22} variables {', '.join(data.features)}: {est.tokens_per_sample} tokens/sample, "
              f"memory {est.vram_gb:.2f} GB (activations {est.activations_gb:.2f}), step {est.step_time_s:.2f} s",
              flush=True)


def training(amp: str) -> None:
    from rain_mlflow.config import presets
    from rain_mlflow.train.run import TrainRequest, run_training

    print(f"\n3. smoke on the record (amp {amp}); test scores at the best epoch (by val_loss), the baselines on the "
          "same windows (exclude scores fewer windows, so compare the skill)")
    for name, overrides in VARIANTS.items():
        cfg = presets.build("smoke", {"data": "realistic.csv", "amp": amp, **overrides})
        with contextlib.redirect_stdout(io.StringIO()):
            r = run_training(cfg, TrainRequest(experiment="missing-policy"))
        data, _ = prepared("smoke", **overrides)
        sizes = "/".join(str(s.size) for s in data.splits.values())
        print(f"{name:22} windows {sizes}: test F1 {r['best_test_f1']:.3f} MCC {r['best_test_mcc']:+.3f} (skill "
              f"{r['test_skill_f1']:+.3f} / {r['test_skill_mcc']:+.3f})  | always-rain F1 "
              f"{r['test_always_rain_f1']:.3f}  persistence F1 {r['test_persistence_f1']:.3f} MCC "
              f"{r['test_persistence_mcc']:+.3f}  gbm F1 {r['test_gbm_f1']:.3f} MCC {r['test_gbm_mcc']:+.3f}  "
              f"(best epoch {r['best_epoch']})", flush=True)


if __name__ == "__main__":
    main()
