"""`python -m bench`: every benchmark in one process, one table on stdout, every figure in bench/results.json.

    python -m bench                  # full run (progress on stderr; results.json rewritten after each section)
    python -m bench --quick          # CI: small shapes, few repetitions; fails on errors, never on timing
    python -m bench --gpu            # adds the CUDA section (needs a GPU)
    python -m bench --sections step trainer
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Figure, command_line, log, machine

SECTIONS = ("step", "trainer", "data", "compare", "gpu")
DEFAULT_OUTPUT = ROOT / "bench" / "results.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions; no targets judged")
    parser.add_argument("--gpu", action="store_true", help="also run the CUDA section (epoch time, VRAM, MFU)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None,
                        help="run only these sections (default: all but gpu, plus gpu with --gpu)")
    parser.add_argument("--no-server", action="store_true", help="skip the local `mlflow server` measurements")
    parser.add_argument("--compile-modes", nargs="*", default=None, metavar="MODE",
                        help="torch.compile modes timed in the step section (default: 'default'; none with "
                             "--quick unless given; e.g. default max-autotune-no-cudagraphs)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where the figures go (default {DEFAULT_OUTPUT.relative_to(ROOT)}; with --quick "
                             "a file in the temp directory, so CI never overwrites the committed full run)")
    return parser.parse_args(argv)


def write_results(output: Path, args: argparse.Namespace, figures: list[Figure], started: float) -> dict:
    """results.json, rewritten (temp name, then rename) after every section so a long run keeps what finished."""
    result = {"command": command_line(), "quick": args.quick, "machine": machine(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "duration_s": round(time.time() - started, 1), "figures": [f.to_dict() for f in figures]}
    tmp_output = output.with_name(output.name + ".tmp")
    tmp_output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp_output.replace(output)
    return result


def run_sections(args: argparse.Namespace, workdir: Path, output: Path, started: float) -> list[Figure]:
    from bench import compare_speed, data_memory, gpu, step, trainer

    sections = args.sections or [s for s in SECTIONS if s != "gpu" or args.gpu]
    command, host = command_line(), machine()
    modes = tuple(args.compile_modes) if args.compile_modes is not None else (() if args.quick else ("default",))
    server = not args.no_server
    runners = {
        "step": lambda: step.run(args.quick, modes, command, host),
        "trainer": lambda: trainer.run(args.quick, server, command, host, workdir),
        "data": lambda: data_memory.run(args.quick, command, host, workdir),
        "compare": lambda: compare_speed.run(args.quick, server, command, host),
        "gpu": lambda: gpu.run(args.quick, command, host),
    }
    figures: list[Figure] = []
    for name in sections:
        section_started = time.perf_counter()
        log(f"section {name}: start")
        with contextlib.redirect_stdout(sys.stderr):  # libraries' prints stay off the table
            figures += runners[name]()
        log(f"section {name}: done in {time.perf_counter() - section_started:.0f} s")
        write_results(output, args, figures, started)
    return figures


def table(figures: list[Figure]) -> str:
    rows = [("section", "figure", "value", "target", "met")]
    for f in figures:
        value = "-" if f.value is None else f"{f.value:,.3g} {f.unit}"
        ratio = f.detail.get("ratio_to_reference")
        if ratio is not None:
            value += f" ({ratio:.2f}x ref)"
        spread = f.detail.get("samples_per_s") or f.detail.get("fast_s")
        if isinstance(spread, dict) and "spread_pct" in spread:
            value += f" ±{spread['spread_pct']:.0f}%"
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        rows.append((f.section, f.name, value, f.target or "-", met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu or "gpu" in (args.sections or ()):
        import torch

        if not torch.cuda.is_available():
            print("error: --gpu needs a CUDA device; torch sees none here (torch "
                  f"{torch.__version__}); run the other sections without it", file=sys.stderr)
            return 2
    output = args.output or (Path(tempfile.gettempdir()) / "rain_mlflow_bench_quick.json" if args.quick
                             else DEFAULT_OUTPUT)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="rain-mlflow-bench-") as tmp:
        figures = run_sections(args, Path(tmp), output, started)
    result = write_results(output, args, figures, started)
    print(table(figures))
    log(f"wrote {output} ({len(figures)} figures, {result['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
