#!/usr/bin/env python
# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Start-up time of the library and of its command line, against `import transformers`.

Each run starts a fresh interpreter for `python -c "import transformers"`, `python -c "import rap_hf"` and
`rap-hf --help` (the console script of this Python; `python -m rap_hf.cli --help` when it is not installed), the three
taking turns so that a load that changes during the measurement hits them alike. One untimed turn first (--warmup)
fills the file cache and writes the bytecode. Prints the median, min and max wall time of each command and the ratios
of the medians to the targets:

* `import rap_hf` <= 1.3x `import transformers` (the package imports its submodules on first use);
* `rap-hf --help` <= 1.5x `import transformers` (no torch, datasets or model code before a subcommand runs).

    python scripts/benchmarks/import_time.py
    python scripts/benchmarks/import_time.py --runs 11 --json import_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
from rap_experiment.reporting import markdown_table  # noqa: E402

BASELINE = "import transformers"
TARGETS = {"import rap_hf": 1.3, "rap-hf --help": 1.5}  # ratio of medians to BASELINE


def commands() -> dict[str, list[str]]:
    """label -> argv, the baseline first."""
    script = Path(sys.executable).with_name("rap-hf")  # the console script installed with this Python
    found = str(script) if script.exists() else shutil.which("rap-hf")
    help_argv = [found, "--help"] if found else [sys.executable, "-m", "rap_hf.cli", "--help"]
    return {
        BASELINE: [sys.executable, "-c", "import transformers"],
        "import rap_hf": [sys.executable, "-c", "import rap_hf"],
        "rap-hf --help": help_argv,
    }


def wall_time(argv: list[str]) -> float:
    """Seconds from start to exit of one fresh process; a failing command stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed


def measure(runs: int, warmup: int) -> dict:
    argvs = commands()
    times: dict[str, list[float]] = {label: [] for label in argvs}
    for turn in range(warmup + runs):
        for label, argv in argvs.items():  # interleaved: one run of each per turn
            elapsed = wall_time(argv)
            if turn >= warmup:
                times[label].append(elapsed)
    results = {
        label: {
            "argv": argvs[label],
            "times": values,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
        for label, values in times.items()
    }
    ratios = {}
    for label, target in TARGETS.items():
        ratio = results[label]["median"] / results[BASELINE]["median"]
        ratios[label] = {"ratio": ratio, "target": target, "passed": ratio <= target}
    return {
        "runs": runs,
        "warmup": warmup,
        "python": platform.python_version(),
        "transformers": metadata.version("transformers"),
        "cpus": os.cpu_count(),
        "commands": results,
        "ratios": ratios,
    }


def render(report: dict) -> str:
    timing = markdown_table(
        ["command", "median (s)", "min (s)", "max (s)"],
        [
            [f"`{label}`", f"{r['median']:.2f}", f"{r['min']:.2f}", f"{r['max']:.2f}"]
            for label, r in report["commands"].items()
        ],
    )
    ratios = markdown_table(
        ["ratio of medians", "measured", "target", "result"],
        [
            [f"`{label}` / `{BASELINE}`", f"{r['ratio']:.2f}x", f"<= {r['target']}x", "PASS" if r["passed"] else "MISS"]
            for label, r in report["ratios"].items()
        ],
    )
    header = (
        f"Python {report['python']}, transformers {report['transformers']}, {report['cpus']} CPUs; "
        f"{report['runs']} interleaved runs of each command in fresh interpreters "
        f"(after {report['warmup']} untimed)"
    )
    return f"{header}\n\n{timing}\n\n{ratios}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed turns first (file cache, bytecode)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    report = measure(args.runs, args.warmup)
    print(render(report))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
