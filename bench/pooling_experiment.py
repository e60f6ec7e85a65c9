"""Which pooling turns Timer-XL token features into the best rain classifier? Real training on the synthetic record.

Each pooling (`last`, `mean`, `attention`) is trained with the `smoke` preset (or `--preset`) on the embedded
11-year synthetic record, for several seeds, through `run_training` with a throw-away sqlite store; the best
epoch's validation F1 / MCC / accuracy and test accuracy are averaged per pooling.

    python bench/pooling_experiment.py                       # smoke, seeds 1 2 3
    python bench/pooling_experiment.py --seeds 1 2 --epochs 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile

from rain_mlflow.config import POOLINGS, presets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--poolings", nargs="+", default=list(POOLINGS))
    args = parser.parse_args()
    store = tempfile.mkdtemp(prefix="rain-pooling-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    os.chdir(store)
    from rain_mlflow.train.run import TrainRequest, run_training

    rows = {}
    for pooling in args.poolings:
        results = []
        for seed in args.seeds:
            overrides = {"pooling": pooling, "seed": str(seed)}
            if args.epochs:
                overrides["train_epochs"] = str(args.epochs)
            cfg = presets.build(args.preset, overrides)
            with contextlib.redirect_stdout(io.StringIO()):
                results.append(run_training(cfg, TrainRequest(experiment=f"pooling-{args.preset}")))
            r = results[-1]
            print(f"{pooling:9} seed {seed}: val F1 {r['best_val_f1']:.4f}  val acc {r['best_val_accuracy']:.4f}  "
                  f"test acc {r['best_test_accuracy']:.4f}  (best epoch {r['best_epoch']})", flush=True)
        rows[pooling] = {k: statistics.fmean(r[k] for r in results)
                         for k in ("best_val_f1", "best_val_accuracy", "best_test_accuracy", "best_test_f1")}
    print(f"\npreset {args.preset}, seeds {args.seeds}; mean over seeds at each run's best epoch (by val_loss)")
    print(f"{'pooling':10} {'val F1':>8} {'val acc':>8} {'test acc':>9} {'test F1':>8}")
    for pooling, m in rows.items():
        print(f"{pooling:10} {m['best_val_f1']:>8.4f} {m['best_val_accuracy']:>8.4f} {m['best_test_accuracy']:>9.4f} "
              f"{m['best_test_f1']:>8.4f}")


if __name__ == "__main__":
    main()
