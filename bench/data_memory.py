"""Section 4: peak memory of preparing 11 years of hourly data at seq_len 2880 with `--missing mask`.

A fresh subprocess reads the station CSV, cleans it and prepares the training windows exactly as `train` does
(`load_clean`, `resolve`, `prepare`). Linux's VmHWM (peak resident set) is read after the imports (the interpreter
baseline), after reading + cleaning, and, reset through /proc/self/clear_refs, over `prepare` alone. The limit is
3x the raw float32 array (steps x 6 variables x 4 bytes) above the memory in use before the step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, Figure, log

CHILD = r"""
import json, sys
from pathlib import Path

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")

from rain_mlflow.config import presets
from rain_mlflow.data.source import load_clean
from rain_mlflow.data.dataset import prepare, resolve
import numpy, pandas, sklearn.preprocessing, torch  # noqa: F401  (what `train` has loaded at this point)

baseline = status("VmHWM")
cfg = presets.build("small", {"data": sys.argv[1], "seq_len": 2880, "missing": "mask"})
_, cleaned = load_clean(cfg.data)  # as `train` does: the raw frame is not kept
after_load_peak, before_prepare = status("VmHWM"), status("VmRSS")
cfg = resolve(cfg, cleaned)
reset_peak()
data = prepare(cleaned, cfg)
print(json.dumps({"baseline": baseline, "after_load_peak": after_load_peak, "before_prepare": before_prepare,
                  "prepare_peak": status("VmHWM"), "steps": int(data.series.shape[0]), "n_vars": int(data.n_vars),
                  "train_windows": int(data.splits["train"].size)}))
"""


def run(quick: bool, command: str, machine: dict, workdir: Path) -> list[Figure]:
    from rain_mlflow.synth import SynthConfig, write_synthetic

    years = 1.0 if quick else 11.0
    csv = workdir / f"station_{years:g}y.csv"
    write_synthetic(str(csv), SynthConfig(years=years))
    log(f"data memory: preparing {years:g} years hourly at seq_len 2880 (--missing mask) in a fresh process")
    done = subprocess.run([sys.executable, "-c", CHILD, str(csv)], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"the data preparation subprocess failed: {done.stderr[-2000:]}")
    m = json.loads(done.stdout.strip().splitlines()[-1])
    raw_bytes = m["steps"] * 6 * 4
    mib = 2**20
    prepare_extra = m["prepare_peak"] - m["before_prepare"]
    whole_extra = max(m["after_load_peak"], m["prepare_peak"]) - m["baseline"]
    detail = {"years": years, "steps": m["steps"], "n_vars": m["n_vars"], "train_windows": m["train_windows"],
              "raw_float32_mib": raw_bytes / mib, "interpreter_baseline_mib": m["baseline"] / mib,
              "rss_before_prepare_mib": m["before_prepare"] / mib, "prepare_peak_mib": m["prepare_peak"] / mib,
              "read_and_clean_peak_mib": m["after_load_peak"] / mib,
              "prepare_above_before_mib": prepare_extra / mib, "whole_above_baseline_mib": whole_extra / mib}
    return [
        Figure(section="4 data preparation", name="prepare (windows, scaler, mask) above the memory before it",
               value=prepare_extra / raw_bytes, unit="x raw float32", target="<= 3x",
               met=prepare_extra <= 3 * raw_bytes if not quick else None, detail=detail, command=command,
               machine=machine),
        Figure(section="4 data preparation", name="read CSV + clean + prepare above the interpreter baseline",
               value=whole_extra / raw_bytes, unit="x raw float32", target="<= 3x",
               met=whole_extra <= 3 * raw_bytes if not quick else None, detail=detail, command=command,
               machine=machine),
    ]
